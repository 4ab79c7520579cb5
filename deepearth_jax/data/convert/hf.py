"""The Hugging Face layout's vision rows: the plan from vision_index.parquet, and copying one
`vision_embeddings/embeddings_{file_idx:06d}.parquet` file at a time.

vision_index.parquet may list a gbif_id several times: the first entry wins (as in the original). Inside an
embeddings file the first row of a gbif_id wins, later ones are counted; `row_idx` is not used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepearth_jax.data.convert.columns import flatten_list_column, inner_lists_ok, numbers
from deepearth_jax.data.convert.errors import bad_row
from deepearth_jax.data.convert.observations import Observations
from deepearth_jax.data.convert.pages import FlatFloatColumn, NotSimple
from deepearth_jax.data.convert.vision import (
    BATCH_BYTES,
    Meter,
    VisionPlan,
    VisionSink,
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

log = logging.getLogger(__name__)

DIRECT_PAGES = True  # read flat float32 embedding pages directly (pages.py); False: always pyarrow
_ROWS_TO_TRY = 16  # leading rows read to find one that states its shape consistently


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
    try:
        gbif = numbers(index.column("gbif_id"))
        file_idx = numbers(index.column("file_idx"))
    except (pa.ArrowException, ValueError, TypeError) as e:
        raise StoreError(f"{index_path}: gbif_id and file_idx must be numbers: {e}") from None
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
    if units:
        shape = checked_vision_shape(vision_dir, [name for name, _ in units], shape)
    return VisionPlan(shape, units, len(gbif), [], stats, [source / HF_VISION_INDEX_FILE, *files])


def _first_row(vision_dir: Path, names: list[str]) -> tuple[Path, str | None, int, pa.Array] | None:
    """`(file, original_shape text or None, number of values, embedding cell)` of the first row whose own
    original_shape agrees with its number of values (a malformed leading row is left to the row checks)."""
    fallback = None
    for name in names:
        path = vision_dir / name
        if not path.is_file():
            continue
        parquet, columns = _open_embeddings(path)
        for k, row in enumerate(parquet.iter_batches(batch_size=1, columns=columns)):
            text = row.column("original_shape")[0].as_py() if "original_shape" in columns else None
            _, offsets, _ = flatten_list_column(row.column("embedding"))
            facts = (path, text, int(offsets[1] - offsets[0]), row.column("embedding"))
            fallback = fallback or facts
            if _self_consistent(text, facts[2]) or k >= _ROWS_TO_TRY:
                return facts if _self_consistent(text, facts[2]) else fallback
        if fallback is not None:
            return fallback
    return None


def _self_consistent(text: str | None, length: int) -> bool:
    if not text:
        return True
    try:
        return math.prod(resolve_vision_shape(parse_original_shape(text))) == length
    except ValueError:
        return False


def checked_vision_shape(
    vision_dir: Path, names: list[str], shape: tuple[int, ...] | None
) -> tuple[int, ...] | None:
    """The `(T, H, W, D)` to convert with, checked against every fact the first embedding row states.

    Without `shape` it comes from the row's original_shape (or its length, for the published size). The
    row's number of values, original_shape and inner list size must all agree with it, so a wrong
    --vision-shape (even a reordered one of the same size) is refused before anything is allocated.
    """
    first = _first_row(vision_dir, names)
    if first is None:
        if shape is None:
            raise StoreError(f"no embeddings file under {vision_dir} has a row: pass --vision-shape T,H,W,D")
        return shape
    path, text, length, cell = first
    given = shape is not None
    if shape is None:
        if text:
            try:
                shape = resolve_vision_shape(parse_original_shape(text))
            except ValueError as e:  # the file's original_shape says no usable (T, H, W, D)
                raise StoreError(f"{path}: {e}") from None
        elif length == math.prod(REAL_VISION_SHAPE):
            shape = REAL_VISION_SHAPE
        else:
            raise StoreError(f"{path} does not say the shape of its {length} values: pass --vision-shape")
    what = f"--vision-shape {','.join(map(str, shape))}" if given else f"original_shape {text!r}"
    if length != math.prod(shape):
        raise StoreError(
            f"{what} disagrees with {path}: its first embedding has {length} values, not "
            f"{math.prod(shape)} for {list(shape)}"
        )
    try:
        original = parse_original_shape(text) if given and text else None
    except ValueError as e:
        raise StoreError(f"{path}: {e}") from None
    if original is not None and not shape_matches(original, shape):
        raise StoreError(f"{what} disagrees with {path}: its first embedding has original_shape {text!r}")
    inner = inner_lists_ok(cell, shape[-1])
    if inner is not None and not inner.all():
        raise StoreError(
            f"{what} disagrees with {path}: the first embedding's inner lists are not of {shape[-1]}"
        )
    return shape


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


def _decode(batch: pa.RecordBatch, size: int) -> tuple:
    """A batch as numpy (on the prefetch thread): ids, each row's values, valid, shape texts, inner ok."""
    values, offsets, valid = flatten_list_column(batch.column("embedding"))
    names = batch.schema.names
    texts = batch.column("original_shape").to_pylist() if "original_shape" in names else None
    return (
        numbers(batch.column("gbif_id")),
        [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)],
        valid,
        texts,
        inner_lists_ok(batch.column("embedding"), size),
    )


def _decoded_batches(
    path: Path, parquet: pq.ParquetFile, columns: list[str], batch_rows: int, size: int
) -> Iterator[tuple]:
    """The file's batches of `batch_rows` rows, decoded (`_decode`) ahead of the caller.

    A flat float32 embedding column is read from its pages by one prefetch thread (`pages.py`: less than half
    the CPU of pyarrow's nested-list decoding), a row group at a time, the rest of a group that leaves that
    path by pyarrow. Otherwise pyarrow decodes a batch at a time on one prefetch thread (`iter_batches`):
    measured side by side on two cores (BENCHMARKS.md, round five) it is as fast as row groups decoded by a
    pool of threads or files decoded in parallel (within 3%; once 1.5x ahead of the pool) and holds the least
    memory (the pool ~0.45 GB more).
    """
    direct = FlatFloatColumn.open(path, parquet, "embedding") if DIRECT_PAGES else None
    if direct is not None:
        yield from prefetched(_direct_batches(direct, parquet, columns, batch_rows, size))
        return
    batches = parquet.iter_batches(batch_size=batch_rows, columns=columns)
    yield from prefetched(batches, transform=lambda b: _decode(b, size))


def _direct_batches(
    direct: FlatFloatColumn, parquet: pq.ParquetFile, columns: list[str], batch_rows: int, size: int
) -> Iterator[tuple]:
    """`_decode`'s tuples with the embeddings read from the pages; the other columns come from pyarrow."""
    others = [c for c in columns if c != "embedding"]
    for group in range(parquet.metadata.num_row_groups):
        table = parquet.read_row_group(group, columns=others)
        ids = numbers(table.column("gbif_id"))
        texts = table.column("original_shape").to_pylist() if "original_shape" in others else None
        done = 0
        try:
            for rows in direct.batches(group, batch_rows):
                n = len(rows)
                if done + n > table.num_rows:
                    raise NotSimple("more rows in the pages than in the row group")
                part = slice(done, done + n)
                yield ids[part], rows, np.ones(n, bool), texts[part] if texts else None, None
                done += n
            if done == table.num_rows:
                continue
            why = "fewer rows in the pages than in the row group"
        except NotSimple as e:
            why = str(e)
        log.debug("%s row group %d from row %d: read by pyarrow (%s)", direct.path, group, done, why)
        skip = done
        for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            yield _decode(batch.slice(skip), size)
            skip = 0


def copy_file(
    path: Path, wanted: list[int], shape, dtype: str, sink: VisionSink, start: int, meter: Meter
) -> dict:
    """Copies the wanted rows of one embeddings file into vision.npy from row `start`; returns its record."""
    record = new_record(start)
    if path.is_symlink() and not path.exists():
        raise StoreError(f"cannot read {path}: a broken symlink or a symlink loop")
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
    for ids, values, valid, texts, inner in _decoded_batches(path, parquet, columns, batch_rows, shape[-1]):
        outcome: list[tuple[int, str, str]] = []  # (gbif_id, kind, reason) in source order; kind "" to copy
        rows = []
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
            elif inner is not None and not inner[i]:
                kind, reason = "shape", f"inner lists of the embedding are not of {shape[-1]} values"
            elif texts is not None:
                kind, reason = shapes.problem(texts[i])
            if not kind:
                rows.append(values[i])
            outcome.append((g, kind, reason))
        copied = _record(record, outcome, sink.copy_rows(rows, start + len(record["gbif_ids"])))
        meter.update(copied, sum(int(v.nbytes) for v in values))
        del values, rows
    record["bad"].extend(
        bad_row(g, "missing_embedding", f"no row in {path.name}", "vision") for g in wanted if g not in seen
    )
    pa.default_memory_pool().release_unused()  # decoding threads' freed buffers, back to the system
    return record


def _record(record: dict, outcome: list[tuple[int, str, str]], copies: list[tuple[str, str]]) -> int:
    """Adds a batch's outcome to the unit's record, in source order; returns the rows copied."""
    results = iter(copies)
    copied = 0
    for g, kind, reason in outcome:
        if not kind:
            kind, reason = next(results)
        if kind:
            record["bad"].append(bad_row(g, kind, reason, "vision"))
        else:
            record["gbif_ids"].append(g)
            copied += 1
    return copied
