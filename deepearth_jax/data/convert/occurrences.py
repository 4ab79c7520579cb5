"""Occurrence tables -> observation-only stores (`python -m deepearth_jax.data convert OCCURRENCES --out S`).

OCCURRENCES is a GBIF simple download or any Darwin Core occurrence table: tab- or comma-separated text,
Parquet, or a Darwin Core Archive (`occurrence_read` reads them). The store holds place, date and species of
each kept row and no embeddings (the geo modes train on it). Columns, by their Darwin Core / GBIF names:

  * place: `decimalLatitude`, `decimalLongitude` (required). Missing, unreadable, out of range, or exactly
    (0, 0) (GBIF's "zero coordinates": never a real record) -> `missing_coordinates`.
  * date: `eventDate`, else `year`/`month`/`day` (occurrence_dates states the rules: a date or date-time;
    a range of at most 7 days dated by its first day; a year or month alone is `imprecise_date`).
  * species: `species` when the table has that column (a blank one means the row is identified above
    species rank: `missing_taxon`), else `scientificName` as written (authorship included).
  * taxon id: `speciesKey` (with `species`), else `taxonKey`; one id per species name, the most common
    among its rows (how many names had several is recorded); without either column,
    `name-sha1:<12 hex digits of the name's SHA-1>`, stable across files.
  * observation id (`{gbif_id}_{image_index}`, ids.py): an `occurrenceID` of exactly that form whose
    gbif_id agrees with `gbifID` (the DeepEarth files); else `gbifID` with image 1. Rows with neither get
    a stable derived gbif_id, outside GBIF's range of ids: from the SHA-256 of their occurrenceID text
    (DERIVED_ID_BASE + hash mod 8e18, the same for the same id in any file order), or, with no
    occurrenceID, ROW_ID_BASE + the row's 1-based position in the file (stable for the same file). A
    `gbifID` that is present but not a whole number >= 0 is `bad_id`; a repeated id `duplicate_id`.
  * `occurrenceStatus` ABSENT rows are absences, not observations: `absent`.
  * kept as store columns when present: `coordinateUncertaintyInMeters` -> coordinate_uncertainty_m
    (null where absent, negative or not a number), `basisOfRecord` -> basis_of_record. Elevation is not read.

Bad rows are counted by kind, as the HF conversion does (errors.BAD_KINDS; reasons name `row N`, the 1-based
data row after the header): without `--skip-bad` the command fails naming the counts and the first ids, and
writes nothing; with it they are left out and listed in the manifest's `skipped`. Species are ordered by name;
observations keep the file's order.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deepearth_jax.data.convert.errors import ConvertError, summarize_bad
from deepearth_jax.data.convert.observations import _Flags, _validate_date
from deepearth_jax.data.convert.occurrence_dates import BAD, IMPRECISE, MISSING, RULES, event_dates
from deepearth_jax.data.convert.occurrence_read import RawOccurrences, read_occurrences
from deepearth_jax.data.store import Store, StoreError, open_store
from deepearth_jax.data.store_writer import StoreWriter, observation_table, species_table

log = logging.getLogger(__name__)

DERIVED_ID_BASE = 10**18  # ids hashed from occurrenceID text: [1e18, 9e18)
ROW_ID_BASE = 9 * 10**18  # ids from the row's position in the file: 9e18 + row
_NUMBER = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$"
_PAIR_ID = r"^\s*(?P<g>\d{1,18})_(?P<i>\d{1,9})\s*$"
# Where an observation id came from (index 0: none).
ID_SCHEMES = ("none", "occurrence_id", "gbif_id", "derived_from_occurrence_id", "derived_from_row")
_SKIP_HINT = "rerun with --skip-bad to convert the rest (the skipped rows are recorded in the manifest)"


def numbers(column: pa.Array | None, n: int) -> np.ndarray:
    """A column as float64, NaN where null, empty or not a number (text is read with pyarrow's cast of the
    values that look like numbers, so one bad value costs one row, not the file)."""
    if column is None:
        return np.full(n, np.nan)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        looks = pc.match_substring_regex(column, _NUMBER)
        column = pc.if_else(looks, pc.utf8_trim_whitespace(column), pa.scalar(None, column.type))
    try:
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise StoreError(f"a column of type {column.type} cannot be read as numbers: {e}") from None


def texts(column: pa.Array | None, n: int) -> pa.Array:
    """A column as stripped text, null where null or blank; whole numbers without a `.0` (a Parquet float
    taxonKey 2735055.0 is "2735055")."""
    if column is None:
        return pa.nulls(n, pa.string())
    if pa.types.is_floating(column.type):
        values = column.to_numpy(zero_copy_only=False)
        finite = values[np.isfinite(values)]
        if (finite == np.round(finite)).all() and (np.abs(finite) < 2.0**62).all():
            column = column.cast(pa.int64(), safe=False)
    text = pc.utf8_trim_whitespace(column.cast(pa.string()))
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def codes(column: pa.Array) -> tuple[np.ndarray, list[str]]:
    """`(code per row (-1: null), distinct values)` of a text column (pyarrow's dictionary encoding)."""
    encoded = pc.dictionary_encode(column)
    index = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return index, encoded.dictionary.to_pylist()


def _shown(raw: pa.Array | None, i: int) -> str:
    return repr(None if raw is None else raw[int(i)].as_py())


def _observation_ids(
    cols: dict, n: int, flags: _Flags
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """`(gbif_id int64, image_index int64, id ok, scheme)` by the module docstring's rules; `scheme` (N,)
    int8 indexes ID_SCHEMES (0: no id)."""
    gbif_col, occ_col = cols.get("gbifID"), cols.get("occurrenceID")
    gbif_f = numbers(gbif_col, n)
    gbif_ok = np.isfinite(gbif_f) & (gbif_f >= 0) & (gbif_f < 2.0**62) & (gbif_f == np.round(gbif_f))
    gbif = np.where(gbif_ok, gbif_f, -1).astype(np.int64)
    gbif_id, image = np.full(n, -1, np.int64), np.ones(n, np.int64)
    scheme = np.zeros(n, np.int8)
    occ_text = pa.nulls(n, pa.string())
    if occ_col is not None:
        occ = occ_col.cast(pa.string())
        parts = pc.extract_regex(occ, _PAIR_ID)
        paired = parts.is_valid().to_numpy(zero_copy_only=False)
        g = np.where(paired, _digits(parts.field("g")), -1)
        k = np.where(paired, _digits(parts.field("i")), 0)
        paired &= (k >= 1) & ((gbif_col is None) | ~gbif_ok | (g == gbif))
        gbif_id[paired], image[paired], scheme[paired] = g[paired], k[paired], 1
        occ_text = texts(occ, n)
    use_gbif = (scheme == 0) & gbif_ok
    gbif_id[use_gbif], scheme[use_gbif] = gbif[use_gbif], 2
    present = texts(gbif_col, n).is_valid().to_numpy(zero_copy_only=False)
    bad = (scheme == 0) & present
    flags.flag(
        bad, "bad_id", lambda i: f"row {i + 1}: gbifID {_shown(gbif_col, i)} is not a whole number >= 0"
    )
    for i in np.flatnonzero((scheme == 0) & ~bad):  # rows without a usable id: few, one by one
        text = occ_text[int(i)].as_py()
        if text is not None:
            digest = int(hashlib.sha256(text.encode()).hexdigest()[:16], 16)
            gbif_id[i], scheme[i] = DERIVED_ID_BASE + digest % (8 * 10**18), 3
        else:
            gbif_id[i], scheme[i] = ROW_ID_BASE + i + 1, 4
    ok = scheme > 0
    pair = np.stack([gbif_id, image], 1)
    _, first = np.unique(pair, axis=0, return_index=True)
    duplicate = np.ones(n, bool)
    duplicate[first] = False
    flags.flag(
        duplicate & ok,
        "duplicate_id",
        lambda i: f"observation id {gbif_id[i]}_{image[i]} repeated (row {i + 1}; the first row is kept)",
    )
    return gbif_id, image, ok, scheme


def _digits(values: pa.Array) -> np.ndarray:
    values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
    return values.cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)


def _labels(cols: dict, n: int, flags: _Flags) -> tuple[np.ndarray, list[str], np.ndarray, list[str], dict]:
    """`(name code per row, names, key code per row, keys, what was used)` by the module docstring's rules
    (codes -1 where absent)."""
    label = "species" if "species" in cols else "scientificName"
    name_code, names = codes(texts(cols[label], n))
    candidates = ("speciesKey", "taxonKey") if label == "species" else ("taxonKey",)
    key_column = next((c for c in candidates if c in cols), None)
    key_code, keys = codes(texts(cols.get(key_column), n))
    scientific = cols.get("scientificName") if label == "species" else None

    def reason(i: int) -> str:
        if label != "species":
            return f"row {i + 1}: no scientificName"
        name = None if scientific is None else scientific[int(i)].as_py()
        return f"row {i + 1}: no species" + (
            f" (scientificName {name!r}: above species rank?)" if name else ""
        )

    flags.flag(name_code < 0, "missing_taxon", reason)
    return name_code, names, key_code, keys, {"name_column": label, "key_column": key_column}


def _check_columns(raw: RawOccurrences, source: Path) -> None:
    cols = raw.columns
    missing = [c for c in ("decimalLatitude", "decimalLongitude") if c not in cols]
    if "species" not in cols and "scientificName" not in cols:
        missing.append("species or scientificName")
    if "eventDate" not in cols and not all(c in cols for c in ("year", "month", "day")):
        missing.append("eventDate or year/month/day")
    if missing:
        found = ", ".join(sorted(cols)) or "none of the Darwin Core columns"
        raise StoreError(
            f"{source} lacks the Darwin Core column(s) {'; '.join(missing)} (found: {found}); an occurrence "
            "table needs decimalLatitude, decimalLongitude, eventDate (or year, month, day) and species "
            "(or scientificName)"
        )


def _validate_place(cols: dict, n: int, flags: _Flags) -> tuple[np.ndarray, np.ndarray]:
    lat_raw, lon_raw = cols["decimalLatitude"], cols["decimalLongitude"]
    lat, lon = numbers(lat_raw, n), numbers(lon_raw, n)
    ok = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    zero = ok & (lat == 0) & (lon == 0)

    def reason(i: int) -> str:
        if zero[i]:
            return f"row {i + 1}: coordinates (0, 0) (GBIF's zero-coordinate error)"
        return f"row {i + 1}: decimalLatitude {_shown(lat_raw, i)}, decimalLongitude {_shown(lon_raw, i)}"

    flags.flag(~ok | zero, "missing_coordinates", reason)
    return lat, lon


def _validate_dates(cols: dict, n: int, flags: _Flags) -> tuple[dict, dict]:
    y, m, d = (numbers(cols.get(k), n) for k in ("year", "month", "day"))
    dates, problem, reason, rule = event_dates(cols.get("eventDate"), y, m, d)
    for code, kind in ((MISSING, "missing_date"), (IMPRECISE, "imprecise_date"), (BAD, "bad_date")):
        flags.flag(problem == code, kind, lambda i: f"row {i + 1}: {reason[i]}")
    _validate_date(flags, dates)  # calendar dates and clock fields, as for every conversion
    return dates, rule


def _species(
    name_code: np.ndarray, names: list[str], key_code: np.ndarray, keys: list[str], rows: np.ndarray
) -> tuple[list[str], list[str], np.ndarray, int]:
    """`(names, taxon ids, species index per kept row, names with several keys)`; species sorted by name,
    each with the most common key among its rows (ties: the one seen first)."""
    present = np.unique(name_code[rows])
    order = sorted(present.tolist(), key=lambda c: names[c])
    species_of = np.full(len(names), -1, np.int64)
    species_of[order] = np.arange(len(order))
    species_index = species_of[name_code[rows]].astype(np.int32)
    keyed = rows[key_code[rows] >= 0]
    pairs = species_of[name_code[keyed]] * (len(keys) + 1) + key_code[keyed]
    pair, first, count = np.unique(pairs, return_index=True, return_counts=True)
    pair_species, pair_key = pair // (len(keys) + 1), pair % (len(keys) + 1)
    best = np.lexsort((first, -count, pair_species))  # per species: most rows, then first seen
    starts = np.flatnonzero(np.diff(pair_species[best], prepend=-1) != 0)
    chosen = dict(zip(pair_species[best][starts].tolist(), pair_key[best][starts].tolist(), strict=True))
    taxon_ids = [
        keys[chosen[s]] if s in chosen else "name-sha1:" + hashlib.sha1(names[c].encode()).hexdigest()[:12]
        for s, c in enumerate(order)
    ]
    conflicting = int((np.bincount(pair_species, minlength=len(order)) > 1).sum())
    return [names[c] for c in order], taxon_ids, species_index, conflicting


def _bad_rows(flags: _Flags, gbif_id: np.ndarray, image: np.ndarray, id_ok: np.ndarray) -> list[dict]:
    """The converters' bad-row records (data/convert/errors.py) of every flagged row."""
    return [
        {
            "observation_id": f"{gbif_id[i]}_{image[i]}" if id_ok[i] else None,
            "gbif_id": int(gbif_id[i]) if id_ok[i] else None,
            "kind": kind,
            "reason": flags.reasons[i],
            "dropped": "observation",
        }
        for i, kind in enumerate(flags.kinds)
        if kind
    ]


def _optional_columns(cols: dict, n: int, rows: np.ndarray) -> dict[str, pa.Array]:
    """The kept optional columns of the `rows` converted: uncertainty (m; null unless finite and >= 0) and
    basis of record, where the source has them."""
    optional = {}
    if "coordinateUncertaintyInMeters" in cols:
        metres = numbers(cols["coordinateUncertaintyInMeters"], n)[rows]
        optional["coordinate_uncertainty_m"] = pa.array(metres, mask=~(np.isfinite(metres) & (metres >= 0)))
    if "basisOfRecord" in cols:
        optional["basis_of_record"] = texts(cols["basisOfRecord"], n).take(pa.array(rows))
    return optional


def _provenance(source: Path, raw, skip_bad: bool) -> dict:
    """The manifest's provenance of an occurrence conversion: the file, its format and how it was read."""
    return {
        "source_layout": "occurrences",
        "source": str(source.resolve()),
        "source_format": raw.source_format,
        "read": raw.details,
        "options": {"skip_bad": skip_bad},
    }


def _counts(codes: np.ndarray, names: tuple[str, ...]) -> dict[str, int]:
    """{name: rows with that code} for every code but 0 (no rule / scheme)."""
    return {name: int((codes == k).sum()) for k, name in enumerate(names) if k}


def convert_occurrences(
    source: str | os.PathLike, out: str | os.PathLike, *, skip_bad: bool = False, resume: bool = False
) -> Store:
    """Converts an occurrence table into an observation-only store at `out`; returns it opened.

    Args:
      source: the table (text, Parquet) or Darwin Core Archive (zip or directory with meta.xml).
      out: the store directory (new or empty; `resume=True`: an incomplete occurrence conversion there is
        written again from the start).
      skip_bad: leave bad rows out (recorded in the manifest's `skipped`) instead of failing.

    Raises:
      ConvertError: bad rows without skip_bad (one line: per-kind counts and the first ids), or no usable row.
      StoreError: an unreadable table, or one without the needed Darwin Core columns.
    """
    source, out = Path(source), Path(out)
    raw = read_occurrences(source)
    _check_columns(raw, source)
    cols, n = raw.columns, raw.num_rows
    flags = _Flags(n)
    gbif_id, image, id_ok, id_scheme = _observation_ids(cols, n, flags)
    if "occurrenceStatus" in cols:
        status = pc.utf8_upper(texts(cols["occurrenceStatus"], n))
        absent = pc.fill_null(pc.equal(status, "ABSENT"), False).to_numpy(zero_copy_only=False)
        flags.flag(absent, "absent", lambda i: f"row {i + 1}: occurrenceStatus ABSENT (an absence)")
    name_code, names, key_code, keys, taxon_info = _labels(cols, n, flags)
    lat, lon = _validate_place(cols, n, flags)
    dates, date_rule = _validate_dates(cols, n, flags)
    bad = _bad_rows(flags, gbif_id, image, id_ok)
    if bad and not skip_bad:
        raise ConvertError(f"{source}: {summarize_bad(bad)}; nothing written; {_SKIP_HINT}", bad)
    rows = np.flatnonzero(np.array([k is None for k in flags.kinds], bool))
    if not len(rows):
        raise ConvertError(f"{source} has no usable observation ({n} row(s) read)", bad)
    species_names, taxon_ids, species_index, conflicting = _species(name_code, names, key_code, keys, rows)
    optional = _optional_columns(cols, n, rows)
    none = [None] * len(rows)
    observations = observation_table(
        gbif_id=gbif_id[rows],
        taxon_id=np.asarray(taxon_ids, object)[species_index].tolist(),
        taxon_name=np.asarray(species_names, object)[species_index].tolist(),
        species_index=species_index,
        latitude=lat[rows],
        longitude=lon[rows],
        year=dates["year"][rows],
        month=dates["month"][rows],
        day=dates["day"][rows],
        clock={k: dates[k][rows] for k in ("hour", "minute", "second")},
        vision_row=np.full(len(rows), -1, np.int64),
        source_split=none,
        image_url=none,
        image_index=image[rows],
        has_language=False,
        optional=optional,
    )
    vision_row = np.full(len(rows), -1, np.int64)
    species = species_table(
        taxon_ids, species_names, np.full(len(species_names), -1), species_index, vision_row
    )
    writer = StoreWriter(
        out,
        num_vision_rows=0,
        vision_shape=None,
        num_language_rows=0,
        language_dim=None,
        provenance=_provenance(source, raw, skip_bad),
        resume=resume,
    )
    stats = {
        "source_observations": n,
        "observations": len(rows),
        "skipped_observations": len(bad),
        "skipped_by_kind": dict(Counter(b["kind"] for b in bad)),
        "dates": _counts(date_rule[rows], RULES),
        "observation_ids": _counts(id_scheme[rows], ID_SCHEMES),
        "taxa": {**taxon_info, "names_with_several_keys": conflicting},
        "kept_columns": sorted(optional),
    }
    writer.finalize(observations, species, skipped=bad, extra={"conversion": stats})
    log.info("converted %s -> %s: %d observations, %d species", source, out, len(rows), len(species_names))
    return open_store(out)
