"""Step 1-2 of a conversion: observations.parquet read in batches and every row validated.

Each species gets one language vector: the most common vector among its rows (rows holding another one are
bad). RAM holds one batch of rows plus one vector per distinct (species, vector) pair.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepearth_jax.data.convert.columns import first_urls, flatten_list_column, numbers, strings
from deepearth_jax.data.convert.errors import bad_row
from deepearth_jax.data.sources import OBSERVATION_COLUMNS, OPTIONAL_OBSERVATION_COLUMNS
from deepearth_jax.data.store import StoreError

BATCH_ROWS = 1024
# Plausible observation years: older specimens exist, but a year outside this range is a data error.
MIN_YEAR, MAX_YEAR = 1600, 2100
_TEXT_COLUMNS = ("taxon_id", "taxon_name", "split", "image_urls")


@dataclass
class Observations:
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


class _LanguageVectors:
    """The distinct (taxon, language vector) pairs seen, with how many rows hold each."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, bytes], int] = {}  # (taxon, sha1 of the vector) -> candidate id
        self.vectors: list[np.ndarray] = []
        self.counts: list[int] = []
        self.taxa: list[str] = []

    def add_batch(self, taxa: list, column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Registers a batch's vectors: `(candidate id per row (-1: none), problem per row)`.

        Problems: 0 none, 1 missing or empty, 2 NaN/Inf. Vectorised: the rows of one length are checked as
        a matrix and grouped by taxon and vector (`_groups`); one vector per group is hashed, and new
        (taxon, vector) pairs are numbered in the order of their first row, as a row-by-row pass would (ties
        between a taxon's vectors go to the first seen).
        """
        values, offsets, valid = flatten_list_column(column)
        n = len(taxa)
        problem = np.zeros(n, np.int8)
        lengths = np.diff(offsets)
        present = valid & (lengths > 0)
        problem[~present] = 1
        taxon_codes, taxon_names = _codes([str(t) for t in taxa])
        leaders, sizes, vectors = [], [], []  # per group: its first row, its row count, its vector
        group_of = np.full(n, -1, np.int64)
        for length in np.unique(lengths[present]):
            rows = np.flatnonzero(present & (lengths == length))
            matrix = _rows_matrix(values, offsets[rows], int(length))
            finite = np.isfinite(matrix.max(axis=1)) & np.isfinite(matrix.min(axis=1))  # NaN propagates
            problem[rows[~finite]] = 2
            rows, matrix = rows[finite], matrix[finite]
            first, group = _groups(matrix, taxon_codes[rows])
            group_of[rows] = group + len(leaders)
            leaders.extend(rows[first].tolist())
            sizes.extend(np.bincount(group, minlength=len(first)).tolist())
            vectors.extend(matrix[first])
        candidate = np.full(len(leaders) + 1, -1, np.int64)  # the last entry stays -1: rows with no vector
        for k in np.argsort(leaders, kind="stable"):
            candidate[k] = self._add(taxon_names[taxon_codes[leaders[k]]], vectors[k], sizes[k])
        return candidate[group_of], problem

    def _add(self, taxon: str, vector: np.ndarray, rows: int) -> int:
        """The candidate id of (taxon, vector), registered if new; `rows` more rows hold it."""
        key = (taxon, hashlib.sha1(vector.tobytes()).digest())
        if key not in self.index:
            self.index[key] = len(self.counts)
            self.vectors.append(vector.copy())
            self.counts.append(0)
            self.taxa.append(taxon)
        self.counts[self.index[key]] += rows
        return self.index[key]

    def reference(self) -> tuple[int, dict[str, int]]:
        """`(language dim, taxon -> its candidate id)`.

        The dimension is the most common length among the vectors, weighted by rows; a taxon's vector is its
        most common candidate of that length (ties: the first seen).
        """
        length_weight: dict[int, int] = {}
        for k, v in enumerate(self.vectors):
            length_weight[len(v)] = length_weight.get(len(v), 0) + self.counts[k]
        dim = max(length_weight, key=lambda d: (length_weight[d], -d)) if length_weight else 0
        reference: dict[str, int] = {}
        for k, v in enumerate(self.vectors):
            if len(v) != dim:
                continue
            t = self.taxa[k]
            if t not in reference or self.counts[k] > self.counts[reference[t]]:
                reference[t] = k
        return dim, reference


def _rows_matrix(values: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """`(len(starts), length)` float32 rows of `values` from `starts`: a view when the rows lie end to end."""
    if len(starts) and (np.diff(starts) == length).all():
        block = values[starts[0] : starts[0] + len(starts) * length].reshape(len(starts), length)
    else:
        block = np.lib.stride_tricks.sliding_window_view(values, length)[starts]
    return np.ascontiguousarray(block, np.float32)


def _groups(matrix: np.ndarray, taxon_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of equal (taxon, vector): `(first row of each group, group of each row)`.

    Rows are grouped by (taxon, sum of the vector's bits), then compared bit for bit with their group's
    first row; a row that differs gets a group of its own, so grouping never merges different vectors.
    """
    bits = matrix.view(np.uint32)
    checksum = bits.sum(axis=1, dtype=np.uint64).view(np.int64)
    _, first, group = np.unique(
        np.stack([taxon_codes, checksum], axis=1), axis=0, return_index=True, return_inverse=True
    )
    group = group.ravel()
    differs = np.flatnonzero((bits != bits[first[group]]).any(axis=1))
    while len(differs):  # rare: a sum shared by different vectors; split them off and compare again
        start = len(first)
        _, own, regroup = np.unique(
            np.stack([taxon_codes[differs], checksum[differs], group[differs]], axis=1),
            axis=0,
            return_index=True,
            return_inverse=True,
        )
        first = np.concatenate([first, differs[own]])
        group[differs] = start + regroup.ravel()
        differs = differs[(bits[differs] != bits[first[group[differs]]]).any(axis=1)]
    return first, group


def _codes(names: list[str]) -> tuple[np.ndarray, list[str]]:
    """`(code per name, distinct names)`: equal names share a code."""
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(t, len(index)) for t in names), np.int64, count=len(names))
    return codes, list(index)


def _open(path: Path) -> tuple[pq.ParquetFile, list[str]]:
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise StoreError(f"cannot read {path}: {e}") from None
    names = parquet.schema_arrow.names
    missing = [c for c in OBSERVATION_COLUMNS if c not in names]
    if missing:
        raise StoreError(f"{path} lacks column(s) {', '.join(missing)}")
    return parquet, [c for c in (*OBSERVATION_COLUMNS, *OPTIONAL_OBSERVATION_COLUMNS) if c in names]


def _batches(parquet: pq.ParquetFile, columns: list[str], path: Path):
    """The file's batches; a file that turns out damaged part way is a one-line StoreError naming it."""
    batches = parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as e:
            raise StoreError(f"cannot read {path}: {e}") from None
        yield batch


@contextlib.contextmanager
def _column_errors(parquet: pq.ParquetFile, name: str, path: Path):
    """A column of the wrong type (text where numbers belong, ...) is a one-line StoreError naming it."""
    try:
        yield
    except (pa.ArrowException, ValueError, TypeError) as e:
        kind = parquet.schema_arrow.field(name).type
        raise StoreError(f"{path}: column {name} ({kind}) cannot be read as expected: {e}") from None


def _collect(
    parquet: pq.ParquetFile, columns: list[str], progress: Callable[[int], None] | None, path: Path
) -> tuple[dict, _LanguageVectors, np.ndarray, np.ndarray]:
    """Reads every batch: `(columns, language vectors, candidate id per row, problem per row)`."""
    parts: dict[str, list] = {k: [] for k in columns if k != "language_embedding"}
    vectors = _LanguageVectors()
    row_vector, row_problem = [], []
    for batch in _batches(parquet, columns, path):
        for name in parts:
            with _column_errors(parquet, name, path):
                col = batch.column(name)
                if name in ("taxon_id", "taxon_name", "split"):
                    parts[name].extend(strings(col))
                elif name == "image_urls":
                    parts[name].extend(first_urls(col))
                elif name == "has_vision":
                    parts[name].append(col.cast(pa.bool_()).fill_null(False).to_numpy(zero_copy_only=False))
                else:
                    parts[name].append(numbers(col))
        with _column_errors(parquet, "language_embedding", path):
            vec_ids, problem = vectors.add_batch(
                strings(batch.column("taxon_name")), batch.column("language_embedding")
            )
        row_vector.append(vec_ids)
        row_problem.append(problem)
        if progress is not None:
            progress(batch.num_rows)
    out = {
        k: v if k in _TEXT_COLUMNS else (np.concatenate(v) if v else np.zeros(0)) for k, v in parts.items()
    }
    vec_ids = np.concatenate(row_vector) if row_vector else np.zeros(0, np.int64)
    problem = np.concatenate(row_problem) if row_problem else np.zeros(0, np.int8)
    return out, vectors, vec_ids, problem


class _Flags:
    """The first problem of each row: its kind and reason."""

    def __init__(self, n: int):
        self.kinds: list[str | None] = [None] * n
        self.reasons: list[str] = [""] * n

    def flag(self, mask: np.ndarray, kind: str, reason_of: Callable[[int], str]) -> None:
        for i in np.flatnonzero(mask):
            if self.kinds[i] is None:
                self.kinds[i] = kind
                self.reasons[i] = reason_of(i)


def _validate_metadata(flags: _Flags, cols: dict) -> tuple[np.ndarray, np.ndarray]:
    """Flags bad ids, duplicates, taxa, coordinates and dates; returns `(gbif_id int64, id ok)`."""
    gbif_f = cols["gbif_id"]
    n = len(gbif_f)
    gbif_ok = np.isfinite(gbif_f) & (gbif_f >= 0) & (gbif_f < 2.0**63) & (gbif_f == np.round(gbif_f))
    gbif = np.where(gbif_ok, gbif_f, -1).astype(np.int64)
    flags.flag(~gbif_ok, "bad_id", lambda i: f"row {i} of observations.parquet has gbif_id {gbif_f[i]}")
    _, first = np.unique(gbif, return_index=True)
    duplicate = np.ones(n, bool)
    duplicate[first] = False
    flags.flag(
        duplicate & gbif_ok, "duplicate_id", lambda i: f"gbif_id {gbif[i]} repeated (the first row is kept)"
    )
    taxon_names = cols["taxon_name"]
    blank = np.array([t is None or not str(t).strip() for t in taxon_names], bool)
    flags.flag(
        blank,
        "missing_taxon",
        lambda i: "no taxon_name" if not taxon_names[i] else f"blank taxon_name {taxon_names[i]!r}",
    )
    lat, lon = cols["latitude"], cols["longitude"]
    coords_ok = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    flags.flag(~coords_ok, "missing_coordinates", lambda i: f"latitude {lat[i]}, longitude {lon[i]}")
    _validate_date(flags, cols)
    return gbif, gbif_ok


def _validate_date(flags: _Flags, cols: dict) -> None:
    """Flags missing dates, impossible ones (31 February, month 13, fractions, years outside
    MIN_YEAR..MAX_YEAR) and clock fields outside 0-23 / 0-59 or fractional (a missing clock field is fine)."""
    year, month, day = cols["year"], cols["month"], cols["day"]
    present = np.isfinite(year) & np.isfinite(month) & np.isfinite(day)
    flags.flag(~present, "missing_date", lambda i: f"year {year[i]}, month {month[i]}, day {day[i]}")
    whole = present & (year == np.round(year)) & (month == np.round(month)) & (day == np.round(day))
    in_range = whole & (year >= MIN_YEAR) & (year <= MAX_YEAR) & (month >= 1) & (month <= 12) & (day >= 1)
    y, m = np.where(in_range, year, 2000).astype(np.int64), np.where(in_range, month, 1).astype(np.int64)
    first = (y - 1970) * 12 + (m - 1)  # months since 1970-01
    days_in_month = (
        (first + 1).astype("datetime64[M]").astype("datetime64[D]")
        - first.astype("datetime64[M]").astype("datetime64[D]")
    ).astype(np.int64)
    calendar_ok = in_range & (day <= days_in_month)
    flags.flag(
        present & ~calendar_ok,
        "bad_date",
        lambda i: (
            f"year {year[i]:g}, month {month[i]:g}, day {day[i]:g} is not a date in {MIN_YEAR}..{MAX_YEAR}"
        ),
    )
    for name, top in (("hour", 23), ("minute", 59), ("second", 59)):
        if name not in cols:
            continue
        values = cols[name]
        known = np.isfinite(values)
        ok = ~known | ((values == np.round(values)) & (values >= 0) & (values <= top))
        flags.flag(
            ~ok,
            "bad_time",
            lambda i, v=values, n=name, t=top: f"{n} {v[i]:g} is not a whole number in 0..{t}",
        )


def _validate_language(
    flags: _Flags, taxon_names: list, vectors: _LanguageVectors, vec_ids: np.ndarray, problem: np.ndarray
) -> tuple[int, dict[str, int]]:
    """Flags missing, non-finite, wrongly sized and conflicting language vectors; returns the reference."""
    language_dim, reference = vectors.reference()
    flags.flag(problem == 1, "missing_language", lambda i: "null or empty language_embedding")
    flags.flag(problem == 2, "language_non_finite", lambda i: "NaN or Inf in language_embedding")
    lengths = np.array([len(vectors.vectors[k]) if k >= 0 else language_dim for k in vec_ids], np.int64)
    flags.flag(
        (vec_ids >= 0) & (lengths != language_dim),
        "language_shape",
        lambda i: f"language_embedding has {lengths[i]} values, expected {language_dim}",
    )
    conflict = np.array(
        [k >= 0 and reference.get(str(taxon_names[i])) != k for i, k in enumerate(vec_ids)], bool
    )
    flags.flag(
        conflict,
        "language_conflict",
        lambda i: f"language_embedding differs from the one most rows of {taxon_names[i]!r} hold",
    )
    return language_dim, reference


def _kept_columns(cols: dict, gbif: np.ndarray, taxon_ids: list, rows: np.ndarray) -> dict[str, object]:
    """The observation table's source columns for the kept rows (clock fields as float, NaN unknown)."""
    n = len(rows)
    return {
        "gbif_id": gbif[rows],
        "taxon_id": [taxon_ids[i] for i in rows],
        "taxon_name": [str(cols["taxon_name"][i]) for i in rows],
        "latitude": cols["latitude"][rows],
        "longitude": cols["longitude"][rows],
        "year": cols["year"][rows].astype(np.int32),
        "month": cols["month"][rows].astype(np.int32),
        "day": cols["day"][rows].astype(np.int32),
        "clock": {k: cols[k][rows] if k in cols else None for k in ("hour", "minute", "second")},
        "source_split": [cols["split"][i] for i in rows] if "split" in cols else [None] * n,
        "image_url": [cols["image_urls"][i] for i in rows] if "image_urls" in cols else [None] * n,
    }


def read_observations(path: Path, progress: Callable[[int], None] | None = None) -> Observations:
    """Reads and validates observations.parquet in batches; `progress(rows)` is called per batch."""
    parquet, columns = _open(path)
    cols, vectors, vec_ids, problem = _collect(parquet, columns, progress, path)
    n = parquet.metadata.num_rows
    taxon_names = cols["taxon_name"]
    taxon_ids = cols.get("taxon_id", [None] * n)
    flags = _Flags(n)
    gbif, gbif_ok = _validate_metadata(flags, cols)
    language_dim, reference = _validate_language(flags, taxon_names, vectors, vec_ids, problem)
    bad = [
        bad_row(int(gbif[i]) if gbif_ok[i] else None, kind, flags.reasons[i], "observation")
        for i, kind in enumerate(flags.kinds)
        if kind
    ]
    rows = np.flatnonzero(np.array([k is None for k in flags.kinds], bool))

    # Species of the kept rows, ordered by (taxon_name, taxon_id).
    def species_key(i: int) -> tuple[str, str]:
        return str(taxon_names[i]), taxon_ids[i] if taxon_ids[i] is not None else ""

    pairs = sorted({species_key(i) for i in rows})
    species_of = {p: s for s, p in enumerate(pairs)}
    species_index = np.array([species_of[species_key(i)] for i in rows], np.int32)
    language = np.zeros((len(pairs), language_dim), np.float32)
    for s, (name, _) in enumerate(pairs):
        language[s] = vectors.vectors[reference[name]]
    has_vision = cols["has_vision"][rows].astype(bool) if "has_vision" in cols else np.zeros(len(rows), bool)
    return Observations(
        gbif_id=gbif[rows],
        columns=_kept_columns(cols, gbif, taxon_ids, rows),
        species_index=species_index,
        taxon_ids=[p[1] or None for p in pairs],
        taxon_names=[p[0] for p in pairs],
        language=language,
        has_vision=has_vision,
        bad=bad,
        source_rows=n,
    )
