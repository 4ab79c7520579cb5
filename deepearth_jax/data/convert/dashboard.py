"""The dashboard layout's vision rows: the plan from embeddings_index.db, and copying the raw float32 rows of
embeddings.mmap one chunk of ~256 MB at a time, in file-offset order.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np

from deepearth_jax.data.convert.errors import bad_row
from deepearth_jax.data.convert.observations import Observations
from deepearth_jax.data.convert.vision import BATCH_BYTES, Meter, VisionPlan, VisionSink, new_record
from deepearth_jax.data.sources import DASHBOARD_INDEX_FILE, DASHBOARD_MMAP_FILE, REAL_VISION_SHAPE
from deepearth_jax.data.store import StoreError

CHUNK_BYTES = 256 << 20


def _index_entries(db_path: Path) -> list[tuple[int, int | None]]:
    """Every (gbif_id, file_offset) of embedding_index, in offset order; refuses values that are not
    whole numbers (text, fractions), naming the column and the first offending row."""
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT gbif_id, file_offset FROM embedding_index ORDER BY file_offset, gbif_id"
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise StoreError(f"cannot read table embedding_index from {db_path}: {e}") from None
    entries = []
    for column, k in (("gbif_id", 0), ("file_offset", 1)):
        wrong = [r for r in rows if not _whole(r[k], allow_null=k == 1)]
        if wrong:
            raise StoreError(
                f"{db_path}: embedding_index.{column} holds {len(wrong)} value(s) that are not whole numbers "
                f"(first: {wrong[0][k]!r} in the row of gbif_id {wrong[0][0]!r})"
            )
    for gbif_id, offset in rows:
        entries.append((int(gbif_id), None if offset is None else int(offset)))
    return entries


def _whole(value: object, allow_null: bool) -> bool:
    if value is None:
        return allow_null
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or (math.isfinite(value) and value == int(value))


def _check_index(entries: list[tuple[int, int | None]], mmap_path: Path, size: int, shape: tuple) -> None:
    """The index and the mmap must describe the same rows: as many rows as the index lists (else the
    vision shape is wrong), and no row claimed by several observations."""
    row_bytes = math.prod(shape) * 4
    mmap_rows = size // row_bytes
    if mmap_rows != len(entries):
        raise StoreError(
            f"{mmap_path} holds {mmap_rows} rows of {list(shape)} float32 but embeddings_index.db lists "
            f"{len(entries)}: the vision shape disagrees with the source (pass the right --vision-shape "
            "T,H,W,D)"
        )
    offsets = np.array([o for _, o in entries if o is not None], np.int64)
    values, counts = np.unique(offsets, return_counts=True)
    shared = counts > 1
    if shared.any():
        first = int(values[shared][0])
        ids = [g for g, o in entries if o == first]
        raise StoreError(
            f"embeddings_index.db points {int(counts[shared].sum())} observations at {int(shared.sum())} "
            f"shared file_offset(s) (first: offset {first} for gbif_ids {', '.join(map(str, ids[:5]))}); "
            "each row of embeddings.mmap belongs to one observation"
        )
    gbif, gbif_counts = np.unique(np.array([g for g, _ in entries], np.int64), return_counts=True)
    if (gbif_counts > 1).any():
        first = int(gbif[gbif_counts > 1][0])
        raise StoreError(
            f"embeddings_index.db lists {int((gbif_counts > 1).sum())} gbif_id(s) several times "
            f"(first: {first}, {int(gbif_counts[gbif_counts > 1][0])} times); each observation has one row"
        )


def plan(source: Path, obs: Observations, vision_shape: tuple[int, ...] | None) -> VisionPlan:
    """Units are chunks of about CHUNK_BYTES of the mmap; entries pointing at no whole row are bad."""
    shape = tuple(vision_shape) if vision_shape else REAL_VISION_SHAPE
    mmap_path = source / DASHBOARD_MMAP_FILE
    db_path = source / DASHBOARD_INDEX_FILE
    row_bytes = math.prod(shape) * 4
    size = mmap_path.stat().st_size
    if size % row_bytes:
        raise StoreError(
            f"{mmap_path} is {size} bytes, not a whole number of {list(shape)} float32 rows "
            f"({row_bytes} bytes each): pass the right --vision-shape T,H,W,D"
        )
    entries = _index_entries(db_path)
    _check_index(entries, mmap_path, size, shape)
    known_ids = set(obs.gbif_id.tolist())
    bad, kept = [], []
    without_observation = 0
    for gbif_id, offset in entries:
        if gbif_id not in known_ids:
            without_observation += 1
        elif offset is None or offset < 0 or offset % row_bytes or offset + row_bytes > size:
            reason = (
                f"file_offset {offset} is not the start of a row of {mmap_path.name} ({row_bytes}-byte rows: "
                "wrong --vision-shape?)"
            )
            bad.append(bad_row(int(gbif_id), "missing_embedding", reason, "vision"))
        else:
            kept.append((int(gbif_id), int(offset)))
    per_unit = max(1, CHUNK_BYTES // row_bytes)
    units = [(f"chunk_{k // per_unit:06d}", kept[k : k + per_unit]) for k in range(0, len(kept), per_unit)]
    stats = {
        "index_rows": len(entries),
        "index_ids_without_observation": without_observation,
        "mmap_rows": size // row_bytes,
    }
    return VisionPlan(shape, units, len(kept), bad, stats, [mmap_path, db_path])


def copy_chunk(
    path: Path, entries: list, shape, dtype: str, sink: VisionSink, start: int, meter: Meter
) -> dict:
    """Copies a chunk of (gbif_id, file_offset) rows, in offset order, through a memmap of that range only."""
    record = new_record(start)
    size = math.prod(shape)
    row_bytes = size * 4
    low = entries[0][1]
    high = entries[-1][1] + row_bytes
    # Mapping only this chunk's byte range keeps RSS bounded by the chunk, whatever the file's size.
    rows = np.memmap(path, dtype=np.float32, mode="r", offset=low, shape=((high - low) // row_bytes, size))
    per_batch = max(1, BATCH_BYTES // row_bytes)
    for k in range(0, len(entries), per_batch):
        batch = entries[k : k + per_batch]
        values = [rows[(offset - low) // row_bytes] for _, offset in batch]
        results = sink.copy_rows(values, start + len(record["gbif_ids"]))
        for (gbif_id, _), (kind, reason) in zip(batch, results, strict=True):
            if kind:
                record["bad"].append(bad_row(gbif_id, kind, reason, "vision"))
            else:
                record["gbif_ids"].append(gbif_id)
        meter.update(sum(not kind for kind, _ in results), row_bytes * len(batch))
    del rows
    return record
