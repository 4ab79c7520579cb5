"""The Hugging Face layout's vision rows: the plan from vision_index.parquet, and copying one
`vision_embeddings/embeddings_{file_idx:06d}.parquet` file at a time.

vision_index.parquet may list a gbif_id several times: the first entry wins (as in the original). Inside an
embeddings file the first row of a gbif_id wins, later ones are counted; `row_idx` is not used.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepearth_jax.data.convert.columns import flatten_list_column, numbers
from deepearth_jax.data.convert.errors import bad_row
from deepearth_jax.data.convert.observations import Observations
from deepearth_jax.data.convert.vision import (
    BATCH_BYTES,
    Meter,
    VisionPlan,
    VisionSink,
    copy_row,
    new_record,
    prefetched,
)
from deepearth_jax.data.sources import (
    HF_VISION_DIR,
    HF_VISION_INDEX_FILE,
    REAL_VISION_SHAPE,
    parse_original_shape,
    resolve_vision_shape,
    shape_matches,
)
from deepearth_jax.data.store import StoreError


def plan(source: Path, obs: Observations, vision_shape: tuple[int, ...] | None) -> VisionPlan:
    """One unit per embeddings file, listing the gbif_ids the index places there (first entry wins)."""
    index_path = source / HF_VISION_INDEX_FILE
    try:
        index = pq.read_table(index_path)
    except (OSError, pa.ArrowInvalid) as e:
        raise StoreError(f"cannot read {index_path}: {e}") from None
    for name in ("gbif_id", "file_idx"):
        if name not in index.column_names:
            raise StoreError(f"{index_path} lacks column {name}")
    gbif = numbers(index.column("gbif_id"))
    file_idx = numbers(index.column("file_idx"))
    valid = np.isfinite(gbif) & np.isfinite(file_idx) & (file_idx >= 0)
    gbif, file_idx = gbif[valid].astype(np.int64), file_idx[valid].astype(np.int64)
    _, first = np.unique(gbif, return_index=True)
    first = np.sort(first)  # index order: the first entry of each gbif_id wins
    gbif, file_idx = gbif[first], file_idx[first]
    known = np.isin(gbif, obs.gbif_id)
    stats = {
        "vision_index_rows": int(index.num_rows),
        "vision_index_invalid_rows": int((~valid).sum()),
        "vision_index_duplicates_dropped": int(valid.sum() - len(first)),
        "vision_index_ids_without_observation": int((~known).sum()),
    }
    gbif, file_idx = gbif[known], file_idx[known]
    units = []
    for k in np.unique(file_idx):
        units.append((f"embeddings_{int(k):06d}.parquet", gbif[file_idx == k].tolist()))
    vision_dir = source / HF_VISION_DIR
    files = sorted(vision_dir.glob("*.parquet")) if vision_dir.is_dir() else []
    shape = tuple(vision_shape) if vision_shape else None
    if shape is None and units:
        shape = vision_shape_of(vision_dir, [name for name, _ in units])
    return VisionPlan(shape, units, len(gbif), [], stats, [source / HF_VISION_INDEX_FILE, *files])


def vision_shape_of(vision_dir: Path, names: list[str]) -> tuple[int, ...]:
    """`(T, H, W, D)` from the first embeddings file that has a row: its original_shape, or its length."""
    for name in names:
        path = vision_dir / name
        if not path.is_file():
            continue
        parquet = pq.ParquetFile(path)
        if parquet.metadata.num_rows == 0:
            continue
        if "original_shape" in parquet.schema_arrow.names:
            first = next(parquet.iter_batches(batch_size=1, columns=["original_shape"]))
            text = first.column(0)[0].as_py()
            if text:
                return resolve_vision_shape(parse_original_shape(text))
        first = next(parquet.iter_batches(batch_size=1, columns=["embedding"]))
        _, offsets, _ = flatten_list_column(first.column(0))
        if offsets[1] - offsets[0] == math.prod(REAL_VISION_SHAPE):
            return REAL_VISION_SHAPE
        raise ValueError(
            f"{path} does not say the shape of its {offsets[1] - offsets[0]} values: pass --vision-shape"
        )
    raise ValueError(f"no embeddings file under {vision_dir} has a row: pass --vision-shape T,H,W,D")


class _ShapeCheck:
    """Whether a row's original_shape text agrees with the conversion's shape (parsed once per text)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape
        self.known: dict[str, tuple[int, ...] | None] = {}

    def problem(self, text: str | None) -> tuple[str, str]:
        if text is None:
            return "", ""
        if text not in self.known:
            try:
                self.known[text] = parse_original_shape(text)
            except ValueError:
                self.known[text] = None
        original = self.known[text]
        if original is None or not shape_matches(original, self.shape):
            return "shape", f"original_shape {text!r} does not match {list(self.shape)}"
        return "", ""


def _open_embeddings(path: Path) -> tuple[pq.ParquetFile, list[str]]:
    try:
        parquet = pq.ParquetFile(path, buffer_size=8 << 20, pre_buffer=False)
    except (OSError, pa.ArrowInvalid) as e:
        raise StoreError(f"cannot read {path}: {e}") from None
    names = parquet.schema_arrow.names
    if "gbif_id" not in names or "embedding" not in names:
        raise StoreError(f"{path} lacks the gbif_id or embedding column")
    return parquet, ["gbif_id", "embedding"] + (["original_shape"] if "original_shape" in names else [])


def copy_file(
    path: Path, wanted: list[int], shape, dtype: str, sink: VisionSink, start: int, meter: Meter
) -> dict:
    """Copies the wanted rows of one embeddings file into vision.npy from row `start`; returns its record."""
    record = new_record(start)
    if not path.is_file():
        record["bad"] = [
            bad_row(g, "missing_embedding", f"{path.name} does not exist", "vision") for g in wanted
        ]
        return record
    parquet, columns = _open_embeddings(path)
    want = set(wanted)
    seen: set[int] = set()
    shapes = _ShapeCheck(shape)
    batch_rows = max(1, BATCH_BYTES // (math.prod(shape) * 4))
    for batch in prefetched(parquet.iter_batches(batch_size=batch_rows, columns=columns)):
        ids = numbers(batch.column("gbif_id"))
        values, offsets, valid = flatten_list_column(batch.column("embedding"))
        texts = batch.column("original_shape").to_pylist() if "original_shape" in columns else None
        copied = 0
        for i, g in enumerate(ids):
            g = int(g) if np.isfinite(g) else -1
            if g not in want:
                record["not_indexed"] += 1
                continue
            if g in seen:
                record["duplicates"] += 1
                continue
            seen.add(g)
            kind, reason = "", ""
            if not valid[i]:
                kind, reason = "missing_embedding", f"null embedding in {path.name}"
            elif texts is not None:
                kind, reason = shapes.problem(texts[i])
            if not kind:
                row = start + len(record["gbif_ids"])
                kind, reason = copy_row(values[offsets[i] : offsets[i + 1]], shape, dtype, sink, row)
            if kind:
                record["bad"].append(bad_row(g, kind, reason, "vision"))
            else:
                record["gbif_ids"].append(g)
                copied += 1
        meter.update(copied, int(values.nbytes))
        del values, offsets, batch
    record["bad"].extend(
        bad_row(g, "missing_embedding", f"no row in {path.name}", "vision") for g in wanted if g not in seen
    )
    return record
