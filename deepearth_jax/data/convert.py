"""`python -m deepearth_jax.data convert SOURCE --out STORE`: the published layouts -> a store.

SOURCE is recognised as
  * the Hugging Face layout (DATA.md §1): `observations.parquet`, `vision_index.parquet`,
    `vision_embeddings/embeddings_{file_idx:06d}.parquet` (flat or nested float16/float32 lists); or
  * the dashboard layout (DATA.md §2): the same `observations.parquet` beside `embeddings.mmap` (raw float32
    rows, no header) and `embeddings_index.db` (SQLite `embedding_index`, `file_offset` in bytes).

How it runs:
  1. observations.parquet is read in batches: metadata, and one language vector per species (the most
     common vector among its rows; rows holding another one are bad).
  2. Every observation row is validated; with bad rows and no `--skip-bad` the command stops here, before
     anything is written.
  3. Vision rows are copied one source unit at a time (an embeddings file, or a chunk of ~256 MB of the
     mmap) straight into `vision.npy`, in source order; after each unit the arrays are flushed and the unit
     is recorded in the incomplete manifest, so a rerun of the same command resumes after the last finished
     unit and ends with the same bytes as an uninterrupted run. RAM holds a few batches of ~64 MB (one
     decoded by a prefetch thread while the previous one is cast and written with pwrite).
  4. The tables are written, everything is checksummed and the manifest is marked complete (atomically).

Decisions:
  * vision_index.parquet may list a gbif_id several times: the first entry wins (as in the original); the
    number dropped is recorded in the manifest (`conversion.vision_index_duplicates_dropped`). Inside an
    embeddings file the first row of a gbif_id wins, later ones are counted (`embedding_duplicates_dropped`);
    `row_idx`, when present, is not needed and not used.
  * A vision row is stored in float16 unless --dtype float32: a value of magnitude >= 65520 (which float16
    would turn into Inf) makes the row bad, never a silent Inf.
  * A bad vision row (wrong shape, NaN/Inf, float16 overflow, no embedding row) drops the vision of that
    observation only (it keeps vision_row -1: never zeros); a bad observation row (duplicate id, no
    coordinates or date, no taxon, bad language vector) drops the observation. Without `--skip-bad` either
    fails the command with per-kind counts and the first ids. A failure during step 3 leaves the store
    incomplete (`verify` and `open_store` reject it) with its progress, so that `--skip-bad` can resume it
    without rereading finished files; a failure in step 1-2 writes nothing.
  * Species are ordered by (taxon_name, taxon_id); observations keep the source order; vision rows follow
    the source files' order.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import logging
import math
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepearth_jax.data import ids as ids_lib
from deepearth_jax.data import store as store_lib
from deepearth_jax.data import synthetic
from deepearth_jax.data.background import background_iter

log = logging.getLogger(__name__)

HF = "hf"
DASHBOARD = "dashboard"

# Bad-row kinds and what they mean (the manifest's `skipped` entries and the error message use these names).
BAD_KINDS = {
    "bad_id": "gbif_id missing or negative",
    "duplicate_id": "gbif_id repeated in observations.parquet (the first row is kept)",
    "missing_taxon": "no taxon_name",
    "missing_coordinates": "latitude/longitude missing, NaN or out of range",
    "missing_date": "year/month/day missing or out of range",
    "missing_language": "no language embedding",
    "language_shape": "language embedding of the wrong length",
    "language_non_finite": "NaN or Inf in the language embedding",
    "language_conflict": "language embedding differs from the species' vector",
    "missing_embedding": "listed in the vision index but no embedding row found",
    "shape": "vision embedding of the wrong length or shape",
    "non_finite": "NaN or Inf in the vision embedding",
    "float16_overflow": "a vision value beyond float16's range (convert with --dtype float32)",
}
_OBSERVATION_KINDS = (
    "bad_id",
    "duplicate_id",
    "missing_taxon",
    "missing_coordinates",
    "missing_date",
    "missing_language",
    "language_shape",
    "language_non_finite",
    "language_conflict",
)

_REQUIRED_COLUMNS = (
    "gbif_id",
    "taxon_name",
    "latitude",
    "longitude",
    "year",
    "month",
    "day",
    "language_embedding",
)
_OPTIONAL_COLUMNS = ("taxon_id", "hour", "minute", "second", "image_urls", "split", "has_vision")
_OBSERVATION_BATCH_ROWS = 1024
# Source bytes per batch of vision rows; three batches are in flight (decoding, queued, converting).
_BATCH_BYTES = 64 << 20
_DASHBOARD_CHUNK_BYTES = 256 << 20


class ConvertError(store_lib.StoreError):
    """Bad source data: the message is one line (per-kind counts and the first ids); `bad` lists every row."""

    def __init__(self, message: str, bad: list[dict] | None = None):
        super().__init__(message)
        self.bad = list(bad or [])


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def _bad(gbif_id: int | None, kind: str, reason: str, dropped: str) -> dict:
    oid = f"{gbif_id}_1" if gbif_id is not None and gbif_id >= 0 else None
    return {"observation_id": oid, "gbif_id": gbif_id, "kind": kind, "reason": reason, "dropped": dropped}


def summarize_bad(bad: list[dict], first: int = 3) -> str:
    """One line: `N bad source row(s): kind count (first: id, id), ...`."""
    by_kind: dict[str, list[dict]] = {}
    for entry in bad:
        by_kind.setdefault(entry["kind"], []).append(entry)
    parts = []
    for kind in sorted(by_kind, key=lambda k: (-len(by_kind[k]), k)):
        entries = by_kind[kind]
        shown = ", ".join(e["observation_id"] or "(no id)" for e in entries[:first])
        more = ", ..." if len(entries) > first else ""
        parts.append(f"{kind} {len(entries)} (first: {shown}{more}; {entries[0]['reason']})")
    return f"{len(bad)} bad source row(s): " + "; ".join(parts)


def flatten_list_column(column: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (nested) list column -> `(values, offsets (N+1,), valid (N,))`: row i is values[o[i]:o[i+1]].

    Null numbers inside a list come back as NaN (so they are caught as non-finite, never as zeros).
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    offsets = None
    array = column
    while True:
        if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            level = array.offsets.to_numpy().astype(np.int64)
            child = array.values
        elif pa.types.is_fixed_size_list(array.type):
            size = array.type.list_size
            level = (np.arange(len(array) + 1, dtype=np.int64) + array.offset) * size
            child = array.values
        else:
            break
        offsets = level if offsets is None else level[offsets]
        array = child
    if offsets is None:
        raise ValueError(f"expected a list column, got {column.type}")
    if not (pa.types.is_floating(array.type) or pa.types.is_integer(array.type)):
        raise ValueError(f"expected lists of numbers, got {column.type}")
    values = array.to_numpy(zero_copy_only=False)
    if array.null_count and not np.issubdtype(values.dtype, np.floating):
        values = array.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return values, offsets, valid


def _numbers(column: pa.Array) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls."""
    return column.cast(pa.float64()).to_numpy(zero_copy_only=False)


def _strings(column: pa.Array) -> list:
    return column.cast(pa.string()).to_pylist()


def _first_urls(column: pa.Array) -> list:
    """The first image url of each row, from a list<string> or a `;`-joined string column."""
    out = []
    for value in column.to_pylist():
        if isinstance(value, list):
            value = next((u for u in value if u), None)
        elif isinstance(value, str):
            value = next((u.strip() for u in value.split(";") if u.strip()), None)
        out.append(value)
    return out


def parse_original_shape(text: str) -> tuple[int, ...]:
    """`"[4608, 1408]"` -> (4608, 1408); raises ValueError for anything but a list of positive ints."""
    try:
        shape = tuple(int(v) for v in ast.literal_eval(text.strip()))
    except (ValueError, SyntaxError, TypeError):
        raise ValueError(f"original_shape {text!r} is not a list of sizes like '[4608, 1408]'") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"original_shape {text!r} is not a list of positive sizes")
    return shape


def resolve_vision_shape(original: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The `(T, H, W, D)` an `original_shape` stands for.

    Four sizes are taken as they are. The published `(4608, 1408)` (and `(8, 576, 1408)`) is V-JEPA 2's
    8 x 24 x 24 token grid (DATA.md §1). Any other tokens x D does not say T, H and W: ValueError.
    """
    if len(original) == 4:
        return tuple(original)  # type: ignore[return-value]
    if original in ((4608, 1408), (8, 576, 1408)):
        return synthetic.REAL_VISION_SHAPE
    raise ValueError(
        f"original_shape {list(original)} does not say T,H,W of the token grid: pass --vision-shape T,H,W,D"
    )


def _shape_matches(original: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    return math.prod(original) == math.prod(shape) and original[-1] == shape[-1]


def _fingerprint_files(paths: list[Path], root: Path) -> dict:
    out = {}
    for p in paths:
        st = p.stat()
        out[str(p.relative_to(root))] = [st.st_size, st.st_mtime_ns]
    return out


# ----------------------------------------------------------------------------------------------------------
# Step 1-2: observations.parquet


@dataclass
class _Observations:
    """The observations kept (source order), their species, and one language vector per species."""

    gbif_id: np.ndarray  # (N,) int64
    columns: dict[str, object]  # table columns, lists/arrays of length N
    species_index: np.ndarray  # (N,) int32
    taxon_ids: list
    taxon_names: list[str]
    language: np.ndarray  # (S, L) float32
    has_vision: np.ndarray  # (N,) bool, the source's own flag
    bad: list[dict] = field(default_factory=list)
    source_rows: int = 0


def _read_observations(path: Path, progress: Callable[[int], None] | None = None) -> _Observations:
    """Reads and validates observations.parquet in batches (RAM: one batch plus one vector per species)."""
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise store_lib.StoreError(f"cannot read {path}: {e}") from None
    names = parquet.schema_arrow.names
    missing = [c for c in _REQUIRED_COLUMNS if c not in names]
    if missing:
        raise store_lib.StoreError(f"{path} lacks column(s) {', '.join(missing)}")
    columns = [c for c in (*_REQUIRED_COLUMNS, *_OPTIONAL_COLUMNS) if c in names]

    parts: dict[str, list] = {k: [] for k in columns if k != "language_embedding"}
    row_vector: list[np.ndarray] = []  # per batch: candidate-vector index of each row (-1: bad/missing)
    row_problem: list[np.ndarray] = []  # per batch: language problem code of each row
    candidates: dict[tuple[str, bytes], tuple[int, np.ndarray]] = {}  # (taxon, sha1) -> (id, vector)
    candidate_count: list[int] = []
    candidate_taxon: list[str] = []
    for batch in parquet.iter_batches(batch_size=_OBSERVATION_BATCH_ROWS, columns=columns):
        for name in parts:
            col = batch.column(name)
            if name in ("taxon_id", "taxon_name", "split"):
                parts[name].extend(_strings(col))
            elif name == "image_urls":
                parts[name].extend(_first_urls(col))
            elif name == "has_vision":
                parts[name].append(col.cast(pa.bool_()).fill_null(False).to_numpy(zero_copy_only=False))
            else:
                parts[name].append(_numbers(col))
        taxa = _strings(batch.column("taxon_name"))
        values, offsets, valid = flatten_list_column(batch.column("language_embedding"))
        vec_ids = np.full(batch.num_rows, -1, np.int64)
        problem = np.zeros(batch.num_rows, np.int8)  # 0 ok, 1 missing, 2 non-finite
        lengths = np.diff(offsets)
        for i in range(batch.num_rows):
            if not valid[i] or lengths[i] == 0:
                problem[i] = 1
                continue
            vector = np.asarray(values[offsets[i] : offsets[i + 1]], np.float32)
            if not np.isfinite(vector).all():
                problem[i] = 2
                continue
            key = (str(taxa[i]), hashlib.sha1(vector.tobytes()).digest())
            if key not in candidates:
                candidates[key] = (len(candidate_count), vector.copy())
                candidate_count.append(0)
                candidate_taxon.append(str(taxa[i]))
            vec_ids[i] = candidates[key][0]
            candidate_count[vec_ids[i]] += 1
        row_vector.append(vec_ids)
        row_problem.append(problem)
        if progress is not None:
            progress(batch.num_rows)

    n = parquet.metadata.num_rows
    num = {
        k: (np.concatenate(v) if v else np.zeros(0))
        for k, v in parts.items()
        if k not in ("taxon_id", "taxon_name", "split", "image_urls")
    }
    gbif_f = num["gbif_id"]
    vec_ids = np.concatenate(row_vector) if row_vector else np.zeros(0, np.int64)
    problem = np.concatenate(row_problem) if row_problem else np.zeros(0, np.int8)
    taxon_names = parts["taxon_name"]
    taxon_ids = parts.get("taxon_id", [None] * n)

    # The language dimension: the most common length among the candidate vectors, weighted by rows.
    vectors = [None] * len(candidate_count)
    for (_, _), (k, v) in candidates.items():
        vectors[k] = v
    length_weight: dict[int, int] = {}
    for k, v in enumerate(vectors):
        length_weight[len(v)] = length_weight.get(len(v), 0) + candidate_count[k]
    language_dim = max(length_weight, key=lambda d: (length_weight[d], -d)) if length_weight else 0
    # Each taxon's vector: its most common candidate of the right length (ties: the first seen).
    reference: dict[str, int] = {}
    for k, v in enumerate(vectors):
        if len(v) != language_dim:
            continue
        t = candidate_taxon[k]
        if t not in reference or candidate_count[k] > candidate_count[reference[t]]:
            reference[t] = k

    # Validate every row; the first problem of a row names it.
    kinds: list[str | None] = [None] * n
    reasons: list[str] = [""] * n

    def flag(mask: np.ndarray, kind: str, reason_of: Callable[[int], str]) -> None:
        for i in np.flatnonzero(mask):
            if kinds[i] is None:
                kinds[i] = kind
                reasons[i] = reason_of(i)

    gbif_ok = np.isfinite(gbif_f) & (gbif_f >= 0) & (gbif_f == np.round(gbif_f))
    gbif = np.where(gbif_ok, gbif_f, -1).astype(np.int64)
    flag(~gbif_ok, "bad_id", lambda i: f"row {i} of observations.parquet has gbif_id {gbif_f[i]}")
    _, first = np.unique(gbif, return_index=True)
    duplicate = np.ones(n, bool)
    duplicate[first] = False
    flag(duplicate & gbif_ok, "duplicate_id", lambda i: f"gbif_id {gbif[i]} repeated (the first row is kept)")
    flag(np.array([not t for t in taxon_names], bool), "missing_taxon", lambda i: "no taxon_name")
    lat, lon = num["latitude"], num["longitude"]
    coords_ok = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    flag(~coords_ok, "missing_coordinates", lambda i: f"latitude {lat[i]}, longitude {lon[i]}")
    year, month, day = num["year"], num["month"], num["day"]
    date_ok = (
        np.isfinite(year) & np.isfinite(month) & np.isfinite(day) & (month >= 1) & (month <= 12) & (day >= 1)
    ) & (day <= 31)
    flag(~date_ok, "missing_date", lambda i: f"year {year[i]}, month {month[i]}, day {day[i]}")
    flag(problem == 1, "missing_language", lambda i: "null or empty language_embedding")
    flag(problem == 2, "language_non_finite", lambda i: "NaN or Inf in language_embedding")
    lengths = np.array([len(vectors[k]) if k >= 0 else language_dim for k in vec_ids], np.int64)
    flag(
        (vec_ids >= 0) & (lengths != language_dim),
        "language_shape",
        lambda i: f"language_embedding has {lengths[i]} values, expected {language_dim}",
    )
    conflict = np.array(
        [k >= 0 and reference.get(str(taxon_names[i])) != k for i, k in enumerate(vec_ids)], bool
    )
    flag(
        conflict,
        "language_conflict",
        lambda i: f"language_embedding differs from the one most rows of {taxon_names[i]!r} hold",
    )

    bad = [
        _bad(int(gbif[i]) if gbif_ok[i] else None, kinds[i], reasons[i], "observation")
        for i in range(n)
        if kinds[i]
    ]
    keep = np.array([k is None for k in kinds], bool)
    rows = np.flatnonzero(keep)

    # Species of the kept rows, ordered by (taxon_name, taxon_id).
    pairs = sorted({(str(taxon_names[i]), taxon_ids[i] if taxon_ids[i] is not None else "") for i in rows})
    species_of = {p: s for s, p in enumerate(pairs)}
    species_index = np.array(
        [species_of[(str(taxon_names[i]), taxon_ids[i] if taxon_ids[i] is not None else "")] for i in rows],
        np.int32,
    )
    language = np.zeros((len(pairs), language_dim), np.float32)
    for s, (name, _) in enumerate(pairs):
        language[s] = vectors[reference[name]]

    def nullable(name: str) -> pa.Array:
        if name not in num:
            return pa.nulls(len(rows), pa.int32())
        values = num[name][rows]
        ok = np.isfinite(values)
        return pa.array(np.where(ok, values, 0).astype(np.int32), pa.int32(), mask=~ok)

    columns_out: dict[str, object] = {
        "gbif_id": gbif[rows],
        "taxon_id": [taxon_ids[i] for i in rows],
        "taxon_name": [str(taxon_names[i]) for i in rows],
        "latitude": lat[rows],
        "longitude": lon[rows],
        "year": year[rows].astype(np.int32),
        "month": month[rows].astype(np.int32),
        "day": day[rows].astype(np.int32),
        "hour": nullable("hour"),
        "minute": nullable("minute"),
        "second": nullable("second"),
        "source_split": [parts["split"][i] for i in rows] if "split" in parts else [None] * len(rows),
        "image_url": [parts["image_urls"][i] for i in rows] if "image_urls" in parts else [None] * len(rows),
    }
    has_vision = num["has_vision"][rows].astype(bool) if "has_vision" in num else np.zeros(len(rows), bool)
    return _Observations(
        gbif_id=gbif[rows],
        columns=columns_out,
        species_index=species_index,
        taxon_ids=[p[1] or None for p in pairs],
        taxon_names=[p[0] for p in pairs],
        language=language,
        has_vision=has_vision,
        bad=bad,
        source_rows=n,
    )


# ----------------------------------------------------------------------------------------------------------
# Step 3: vision rows, one source unit (embeddings file, or mmap chunk) at a time


@dataclass
class _VisionPlan:
    """Where each kept observation's vision row lives in the source, split into resumable units."""

    shape: tuple[int, ...] | None
    units: list[tuple[str, object]]  # (unit name, what to read)
    num_rows: int  # upper bound of vision rows (the candidates)
    bad: list[dict]
    stats: dict
    source_files: list[Path]


class _Meter:
    """Counts rows and source bytes; drives a tqdm bar (rows/s, MB/s) when asked to."""

    def __init__(self, total_rows: int, enabled: bool, desc: str):
        self.rows = 0
        self.bytes = 0
        self.start = time.perf_counter()
        self.bar = None
        if enabled and total_rows:
            from tqdm import tqdm  # progress bars only when a CLI asks for them

            self.bar = tqdm(total=total_rows, desc=desc, unit="row", dynamic_ncols=True, mininterval=0.5)

    def update(self, rows: int, nbytes: int) -> None:
        self.rows += rows
        self.bytes += nbytes
        if self.bar is not None:
            self.bar.update(rows)
            elapsed = max(1e-9, time.perf_counter() - self.start)
            if self.bytes:
                self.bar.set_postfix_str(f"{self.bytes / elapsed / 1e6:.0f} MB/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# The smallest magnitude that rounds to Inf in float16 (65504 is the largest finite value; round to nearest).
_FLOAT16_OVERFLOW = 65520.0


def _check_values(values: np.ndarray, dtype: str) -> tuple[str, str]:
    """("", "") when a flat vision row converts to `dtype` with finite values, else (bad kind, reason).

    Two SIMD reductions over the source values (NaN propagates through min and max), instead of testing
    the converted row value by value.
    """
    low, high = float(values.min()), float(values.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        count = int(values.size - np.count_nonzero(np.isfinite(values)))
        return "non_finite", f"{count} NaN/Inf/null value(s) in the vision embedding"
    peak = max(-low, high)
    if dtype == "float16" and peak >= _FLOAT16_OVERFLOW:
        return "float16_overflow", f"max |value| {peak:.6g} overflows float16 (largest 65504)"
    if dtype == "float32" and peak > float(np.finfo(np.float32).max):
        return "non_finite", f"max |value| {peak:.6g} overflows float32"
    return "", ""


class _VisionSink:
    """Writes rows into the StoreWriter's vision.npy in place, with pwrite from one reusable buffer.

    Casting into a buffer that is already paged in and writing it with pwrite is about twice as fast as
    casting into a fresh memmap (every page faults on first touch), and the written rows never count in
    this process's RSS.
    """

    def __init__(self, writer: store_lib.StoreWriter):
        self.writer = writer
        array = writer.vision
        self.shape = tuple(array.shape[1:])
        self.offset = int(array.offset)
        self.buffer = np.empty(self.shape, array.dtype)
        self.row_bytes = self.buffer.nbytes
        self.fd = os.open(array.filename, os.O_WRONLY)

    def write(self, row: int, values: np.ndarray) -> None:
        """Casts `values` (any float dtype, T*H*W*D values) into vision row `row`."""
        np.copyto(self.buffer, values.reshape(self.shape), casting="same_kind")
        view = memoryview(self.buffer).cast("B")
        position = self.offset + row * self.row_bytes
        while view:
            written = os.pwrite(self.fd, view, position)
            view, position = view[written:], position + written

    def save_progress(self) -> None:
        """The rows written so far reach the disk before the manifest records them."""
        os.fsync(self.fd)
        self.writer.save_progress()

    def close(self) -> None:
        os.close(self.fd)


def _copy_row(values: np.ndarray, shape, dtype: str, sink: _VisionSink, row: int) -> tuple[str, str]:
    """Checks one flat source row and writes it as vision row `row`; returns ("", "") or (kind, reason)."""
    size = math.prod(shape)
    if values.size != size:
        return "shape", f"{values.size} values, expected {size} for {list(shape)}"
    kind, reason = _check_values(values, dtype)
    if kind:
        return kind, reason
    sink.write(row, values)
    return "", ""


def _prefetched(batches: Iterator, depth: int = 1) -> Iterator:
    """Yields from `batches`, produced by a background thread at most `depth` items ahead.

    pyarrow decodes the next batch (without the GIL) while the caller casts and writes the current one.
    """
    return background_iter(batches, depth, name="convert-prefetch")


def _hf_plan(source: Path, obs: _Observations, vision_shape: tuple[int, ...] | None) -> _VisionPlan:
    index_path = source / synthetic.HF_VISION_INDEX_FILE
    try:
        index = pq.read_table(index_path)
    except (OSError, pa.ArrowInvalid) as e:
        raise store_lib.StoreError(f"cannot read {index_path}: {e}") from None
    for name in ("gbif_id", "file_idx"):
        if name not in index.column_names:
            raise store_lib.StoreError(f"{index_path} lacks column {name}")
    gbif = _numbers(index.column("gbif_id"))
    file_idx = _numbers(index.column("file_idx"))
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
    vision_dir = source / synthetic.HF_VISION_DIR
    files = sorted(vision_dir.glob("*.parquet")) if vision_dir.is_dir() else []
    shape = tuple(vision_shape) if vision_shape else None
    if shape is None and units:
        shape = _hf_vision_shape(vision_dir, [name for name, _ in units])
    return _VisionPlan(shape, units, len(gbif), [], stats, [source / synthetic.HF_VISION_INDEX_FILE, *files])


def _hf_vision_shape(vision_dir: Path, names: list[str]) -> tuple[int, ...]:
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
        if offsets[1] - offsets[0] == math.prod(synthetic.REAL_VISION_SHAPE):
            return synthetic.REAL_VISION_SHAPE
        raise ValueError(
            f"{path} does not say the shape of its {offsets[1] - offsets[0]} values: pass --vision-shape"
        )
    raise ValueError(f"no embeddings file under {vision_dir} has a row: pass --vision-shape T,H,W,D")


def _copy_hf_file(
    path: Path, wanted: list[int], shape, dtype: str, sink: _VisionSink, start: int, meter: _Meter
) -> dict:
    """Copies the wanted rows of one embeddings file into vision.npy from row `start`; returns its record."""
    record = {"start": start, "gbif_ids": [], "bad": [], "duplicates": 0, "not_indexed": 0}
    if not path.is_file():
        record["bad"] = [
            _bad(g, "missing_embedding", f"{path.name} does not exist", "vision") for g in wanted
        ]
        return record
    try:
        parquet = pq.ParquetFile(path, buffer_size=8 << 20, pre_buffer=False)
    except (OSError, pa.ArrowInvalid) as e:
        raise store_lib.StoreError(f"cannot read {path}: {e}") from None
    names = parquet.schema_arrow.names
    if "gbif_id" not in names or "embedding" not in names:
        raise store_lib.StoreError(f"{path} lacks the gbif_id or embedding column")
    columns = ["gbif_id", "embedding"] + (["original_shape"] if "original_shape" in names else [])
    want = set(wanted)
    seen: set[int] = set()
    shapes: dict[str, tuple[int, ...] | None] = {}
    batch_rows = max(1, _BATCH_BYTES // (math.prod(shape) * 4))
    for batch in _prefetched(parquet.iter_batches(batch_size=batch_rows, columns=columns)):
        ids = _numbers(batch.column("gbif_id"))
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
            elif texts is not None and texts[i] is not None:
                if texts[i] not in shapes:
                    try:
                        shapes[texts[i]] = parse_original_shape(texts[i])
                    except ValueError:
                        shapes[texts[i]] = None
                original = shapes[texts[i]]
                if original is None or not _shape_matches(original, shape):
                    kind, reason = "shape", f"original_shape {texts[i]!r} does not match {list(shape)}"
            if not kind:
                kind, reason = _copy_row(
                    values[offsets[i] : offsets[i + 1]], shape, dtype, sink, start + len(record["gbif_ids"])
                )
            if kind:
                record["bad"].append(_bad(g, kind, reason, "vision"))
            else:
                record["gbif_ids"].append(g)
                copied += 1
        meter.update(copied, int(values.nbytes))
        del values, offsets, batch
    record["bad"].extend(
        _bad(g, "missing_embedding", f"no row in {path.name}", "vision") for g in wanted if g not in seen
    )
    return record


def _dashboard_plan(source: Path, obs: _Observations, vision_shape: tuple[int, ...] | None) -> _VisionPlan:
    shape = tuple(vision_shape) if vision_shape else synthetic.REAL_VISION_SHAPE
    mmap_path = source / synthetic.DASHBOARD_MMAP_FILE
    db_path = source / synthetic.DASHBOARD_INDEX_FILE
    row_bytes = math.prod(shape) * 4
    size = mmap_path.stat().st_size
    if size % row_bytes:
        raise store_lib.StoreError(
            f"{mmap_path} is {size} bytes, not a whole number of {list(shape)} float32 rows "
            f"({row_bytes} bytes each): pass the right --vision-shape T,H,W,D"
        )
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            entries = db.execute(
                "SELECT gbif_id, file_offset FROM embedding_index ORDER BY file_offset, gbif_id"
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise store_lib.StoreError(f"cannot read table embedding_index from {db_path}: {e}") from None
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
            bad.append(_bad(int(gbif_id), "missing_embedding", reason, "vision"))
        else:
            kept.append((int(gbif_id), int(offset)))
    per_unit = max(1, _DASHBOARD_CHUNK_BYTES // row_bytes)
    units = [(f"chunk_{k // per_unit:06d}", kept[k : k + per_unit]) for k in range(0, len(kept), per_unit)]
    stats = {
        "index_rows": len(entries),
        "index_ids_without_observation": without_observation,
        "mmap_rows": size // row_bytes,
    }
    return _VisionPlan(shape, units, len(kept), bad, stats, [mmap_path, db_path])


def _copy_dashboard_chunk(
    path: Path, entries: list, shape, dtype: str, sink: _VisionSink, start: int, meter: _Meter
) -> dict:
    """Copies a chunk of (gbif_id, file_offset) rows, in offset order, through a memmap of that range only."""
    record = {"start": start, "gbif_ids": [], "bad": [], "duplicates": 0, "not_indexed": 0}
    size = math.prod(shape)
    row_bytes = size * 4
    low = entries[0][1]
    high = entries[-1][1] + row_bytes
    # Mapping only this chunk's byte range keeps RSS bounded by the chunk, whatever the file's size.
    rows = np.memmap(path, dtype=np.float32, mode="r", offset=low, shape=((high - low) // row_bytes, size))
    for gbif_id, offset in entries:
        values = np.asarray(rows[(offset - low) // row_bytes])
        kind, reason = _copy_row(values, shape, dtype, sink, start + len(record["gbif_ids"]))
        if kind:
            record["bad"].append(_bad(gbif_id, kind, reason, "vision"))
        else:
            record["gbif_ids"].append(gbif_id)
        meter.update(0 if kind else 1, row_bytes)
    del rows
    return record


# ----------------------------------------------------------------------------------------------------------
# The conversion


def detect_layout(source: Path) -> str:
    """`"hf"` or `"dashboard"`; raises StoreError saying what is missing."""
    source = Path(source)
    if not source.is_dir():
        raise store_lib.StoreError(f"source {source} is not a directory")
    if not (source / synthetic.HF_OBSERVATIONS_FILE).is_file():
        raise store_lib.StoreError(f"source {source} has no {synthetic.HF_OBSERVATIONS_FILE}")
    if (source / synthetic.DASHBOARD_MMAP_FILE).is_file():
        if not (source / synthetic.DASHBOARD_INDEX_FILE).is_file():
            raise store_lib.StoreError(f"source {source} has embeddings.mmap but no embeddings_index.db")
        return DASHBOARD
    if (source / synthetic.HF_VISION_INDEX_FILE).is_file():
        return HF
    raise store_lib.StoreError(
        f"source {source} is neither the HF layout (vision_index.parquet + vision_embeddings/) nor the "
        "dashboard layout (embeddings.mmap + embeddings_index.db)"
    )


def convert(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str = "float16",
    vision_shape: tuple[int, ...] | None = None,
    skip_bad: bool = False,
    progress: bool = False,
) -> store_lib.Store:
    """Converts an HF or dashboard dataset at `source` into a store at `out`; returns it opened.

    Args:
      source: the dataset directory (layout recognised by its files, see the module docstring).
      out: the store directory: new, empty, or an incomplete conversion of the same source to resume.
      dtype: vision dtype in the store, "float16" (default; values beyond +-65504 are bad rows) or "float32".
      vision_shape: `(T, H, W, D)`; default from the HF files' original_shape, or (8, 24, 24, 1408).
      skip_bad: convert the good rows and record the bad ones in the manifest's `skipped`, instead of failing.
      progress: show progress bars (rows/s, MB/s) on stderr.

    Raises:
      ConvertError: bad rows without skip_bad (one line: per-kind counts and the first ids).
      StoreError: an unreadable or unrecognised source, or an `out` that cannot be written or resumed.
    """
    source, out = Path(source), Path(out)
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
    if vision_shape is not None and (len(vision_shape) != 4 or min(vision_shape) < 1):
        raise ValueError(f"vision shape must be four positive sizes T,H,W,D, got {vision_shape}")
    layout = detect_layout(source)
    existing = _existing_conversion(out)
    start_time = time.perf_counter()

    obs_path = source / synthetic.HF_OBSERVATIONS_FILE
    meter = _Meter(pq.ParquetFile(obs_path).metadata.num_rows, progress, "observations")
    obs = _read_observations(obs_path, progress=lambda rows: meter.update(rows, 0))
    meter.close()
    how = "rerun with --skip-bad to convert the rest (the skipped rows are recorded in the manifest)"
    if obs.bad and not skip_bad:
        raise ConvertError(f"{summarize_bad(obs.bad)}; nothing written; {how}", obs.bad)
    if not len(obs.gbif_id):
        raise ConvertError(f"{obs_path} has no usable observation", obs.bad)
    plan = (_hf_plan if layout == HF else _dashboard_plan)(source, obs, vision_shape)
    if plan.bad and not skip_bad:
        raise ConvertError(f"{summarize_bad(plan.bad)}; nothing written; {how}", plan.bad)

    fingerprint = {
        "layout": layout,
        "files": _fingerprint_files([obs_path, *plan.source_files], source),
        "dtype": dtype,
        "vision_shape": list(plan.shape) if plan.shape else None,
    }
    num_vision_rows = plan.num_rows
    if existing is not None:
        done = existing.get("progress", {})
        if done.get("fingerprint") not in (None, fingerprint):
            raise store_lib.StoreError(
                f"{out} holds an incomplete conversion of another source or with other options; delete it "
                "or choose another --out"
            )
        planned = existing.get("arrays_planned", {}).get("vision")
        if done.get("fingerprint") == fingerprint and planned:
            num_vision_rows = planned["shape"][0]
    writer = store_lib.StoreWriter(
        out,
        num_vision_rows=num_vision_rows,
        vision_shape=plan.shape,
        vision_dtype=dtype,
        num_language_rows=len(obs.taxon_names),
        language_dim=obs.language.shape[1],
        provenance={
            "source_layout": layout,
            "source": str(source.resolve()),
            "options": {
                "dtype": dtype,
                "vision_shape": list(plan.shape) if plan.shape else None,
                "skip_bad": skip_bad,
            },
        },
        resume=True,
    )
    state = writer.progress
    if state.get("fingerprint") != fingerprint:
        state.clear()
        state.update({"fingerprint": fingerprint, "units": {}, "next_row": 0})
    writer.language[:] = obs.language
    writer.save_progress()
    if state["units"]:
        log.info("resuming %s: %d of %d source units already done", out, len(state["units"]), len(plan.units))

    def fail_if_bad(records: list[dict]) -> None:
        bad = [b for r in records for b in r["bad"]]
        if bad and not skip_bad:
            raise ConvertError(
                f"{summarize_bad(plan.bad + bad)} (stopped after {len(state['units'])} of {len(plan.units)} "
                f"source units); {out} is left incomplete, which verify rejects: rerun with --skip-bad to "
                "resume it and skip these rows, or delete it",
                plan.bad + bad,
            )

    fail_if_bad(list(state["units"].values()))
    todo = [(name, what) for name, what in plan.units if name not in state["units"]]
    sink = _VisionSink(writer) if writer.vision is not None else None
    meter = _Meter(plan.num_rows, progress, "convert")
    meter.update(sum(len(r["gbif_ids"]) for r in state["units"].values()), 0)
    try:
        for name, what in todo:
            if layout == HF:
                path = source / synthetic.HF_VISION_DIR / name
                record = _copy_hf_file(path, what, plan.shape, dtype, sink, state["next_row"], meter)
            else:
                path = source / synthetic.DASHBOARD_MMAP_FILE
                record = _copy_dashboard_chunk(path, what, plan.shape, dtype, sink, state["next_row"], meter)
            state["units"][name] = record
            state["next_row"] = record["start"] + len(record["gbif_ids"])
            sink.save_progress()
            fail_if_bad([record])
    finally:
        meter.close()
        if sink is not None:
            sink.close()

    records = [state["units"][name] for name, _ in plan.units]
    vision_row_of = {g: r["start"] + k for r in records for k, g in enumerate(r["gbif_ids"])}
    if writer.vision is not None and writer.vision.shape[0] != state["next_row"]:
        writer.truncate_vision(state["next_row"])
    skipped = obs.bad + plan.bad + [b for r in records for b in r["bad"]]
    vision_row = np.array([vision_row_of.get(int(g), -1) for g in obs.gbif_id], np.int64)
    observations = _observation_table(obs, vision_row)
    species = store_lib.species_table(
        obs.taxon_ids, obs.taxon_names, np.arange(len(obs.taxon_names)), obs.species_index, vision_row
    )
    has_row = vision_row >= 0
    stats = {
        "source_observations": obs.source_rows,
        "observations": len(obs.gbif_id),
        "observations_with_vision": int(has_row.sum()),
        "skipped_observations": sum(b["dropped"] == "observation" for b in skipped),
        "skipped_vision": sum(b["dropped"] == "vision" for b in skipped),
        **plan.stats,
        "embedding_duplicates_dropped": sum(r["duplicates"] for r in records),
        "embedding_rows_not_indexed": sum(r["not_indexed"] for r in records),
        "has_vision_without_embedding": int((obs.has_vision & ~has_row).sum()),
        "embedding_without_has_vision": int((~obs.has_vision & has_row).sum()),
    }
    writer.finalize(observations, species, skipped=skipped, extra={"conversion": stats})
    log.info("converted %s -> %s in %.1f s", source, out, time.perf_counter() - start_time)
    return store_lib.open_store(out)


def _existing_conversion(out: Path) -> dict | None:
    """The manifest of an incomplete store at `out` (to resume), None when `out` is new or empty."""
    if not (out / store_lib.MANIFEST_FILE).exists():
        return None
    manifest = store_lib.read_manifest(out)
    if manifest.get("complete"):
        raise store_lib.StoreError(f"{out} already holds a complete store; choose another --out or delete it")
    return manifest


def _observation_table(obs: _Observations, vision_row: np.ndarray) -> pa.Table:
    n = len(obs.gbif_id)
    c = obs.columns
    return pa.table(
        {
            "observation_id": pa.array(ids_lib.make_observation_ids(obs.gbif_id, 1).tolist(), pa.string()),
            "gbif_id": pa.array(obs.gbif_id, pa.int64()),
            "image_index": pa.array(np.ones(n, np.int32)),
            "taxon_id": pa.array(c["taxon_id"], pa.string()),
            "taxon_name": pa.array(c["taxon_name"], pa.string()),
            "species_index": pa.array(obs.species_index, pa.int32()),
            "latitude": pa.array(c["latitude"], pa.float64()),
            "longitude": pa.array(c["longitude"], pa.float64()),
            "elevation": pa.nulls(n, pa.float64()),
            "year": pa.array(c["year"], pa.int32()),
            "month": pa.array(c["month"], pa.int32()),
            "day": pa.array(c["day"], pa.int32()),
            "hour": c["hour"],
            "minute": c["minute"],
            "second": c["second"],
            "vision_row": pa.array(vision_row, pa.int64()),
            "language_row": pa.array(obs.species_index.astype(np.int64)),
            "source_split": pa.array(c["source_split"], pa.string()),
            "image_url": pa.array(c["image_url"], pa.string()),
        }
    )


# ----------------------------------------------------------------------------------------------------------
# Command line


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source", type=Path, help="HF dataset directory, or the dashboard's directory (see DATA.md)"
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="store directory to create; the same command resumes an interrupted conversion",
    )
    p.add_argument(
        "--dtype",
        choices=("float16", "float32"),
        default="float16",
        help="vision dtype in the store (default float16, half the bytes; rows that overflow it are bad)",
    )
    p.add_argument(
        "--vision-shape",
        default=None,
        help="T,H,W,D of one vision embedding (default: from the HF files' original_shape; 8,24,24,1408 "
        "for the dashboard mmap)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="convert the good rows and record the bad ones (ids, reasons) in the manifest, not fail",
    )


def run_convert(args: argparse.Namespace) -> int:
    shape = synthetic.parse_shape(args.vision_shape) if args.vision_shape else None
    start = time.perf_counter()
    store = convert(
        args.source, args.out, dtype=args.dtype, vision_shape=shape, skip_bad=args.skip_bad, progress=True
    )
    seconds = time.perf_counter() - start
    counts = store.manifest["counts"]
    skipped = len(store.manifest.get("skipped", []))
    vision_bytes = 0 if store.vision is None else store.vision.nbytes
    print(
        f"converted {args.source} -> {args.out}: {counts['observations']} observations "
        f"({counts['observations_with_vision']} with vision), {counts['species']} species, "
        f"{store_lib.format_bytes(vision_bytes)} of vision in {seconds:.1f} s"
        + (f"; {skipped} bad row(s) skipped (manifest.json 'skipped')" if skipped else ""),
        file=sys.stderr,
    )
    return 0
