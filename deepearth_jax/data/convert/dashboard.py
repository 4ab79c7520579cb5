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
from deepearth_jax.data.convert.vision import Meter, VisionPlan, VisionSink, copy_row, new_record
from deepearth_jax.data.sources import DASHBOARD_INDEX_FILE, DASHBOARD_MMAP_FILE, REAL_VISION_SHAPE
from deepearth_jax.data.store import StoreError

CHUNK_BYTES = 256 << 20


def _index_entries(db_path: Path) -> list[tuple]:
    """Every (gbif_id, file_offset) of embedding_index, in offset order."""
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            return db.execute(
                "SELECT gbif_id, file_offset FROM embedding_index ORDER BY file_offset, gbif_id"
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise StoreError(f"cannot read table embedding_index from {db_path}: {e}") from None


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
    for gbif_id, offset in entries:
        values = np.asarray(rows[(offset - low) // row_bytes])
        kind, reason = copy_row(values, shape, dtype, sink, start + len(record["gbif_ids"]))
        if kind:
            record["bad"].append(bad_row(gbif_id, kind, reason, "vision"))
        else:
            record["gbif_ids"].append(gbif_id)
        meter.update(0 if kind else 1, row_bytes)
    del rows
    return record
