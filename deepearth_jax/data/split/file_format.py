"""The split file: `Split` (a parsed file, ours or the original's), parse/load/write.

Our file is a superset of the original `central_florida_split.json` schema (the keys in ORIGINAL_KEYS, with
their meaning), plus `format`, buffers, folds and diagnostics; the original's file is read as it is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepearth_jax.data import ids as ids_lib
from deepearth_jax.data.split.folds import fold_masks
from deepearth_jax.data.split.reasons import Kind, Reason, kind_of
from deepearth_jax.errors import SplitError

SPLIT_FORMAT = "deepearth_jax.split"
SPLIT_VERSION = 2  # 2: adds the validation set (v1 files are read as they are)
READ_VERSIONS = (1, 2)
SUBSETS = ("train", "test", "excluded", "validation")
ORIGINAL_KEYS = (
    "dataset_info",
    "split_strategy",
    "train_spatial_bounds",
    "test_spatial_regions",
    "split_statistics",
    "observation_mappings",
)


def describe_ids(ids: list[str], limit: int = 5) -> str:
    """A few ids for an error message: `'1_1', '2_1' (and 3 more)`."""
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" (and {len(ids) - limit} more)" if len(ids) > limit else "")


@dataclass
class Split:
    """A parsed split file (ours or the original's).

    Attributes:
      train_ids, test_ids, excluded_ids, validation_ids: OBSERVATION_IDs `"<gbif_id>_<image_index>"` of the
        holdout split, in file order.
      reasons: id -> split_reason spelling ("temporal_train", "temporal_test", "spatial_test_region_<k>",
        "buffer_region_<k>", "validation_temporal", ...; `reasons.Reason.parse` gives the typed value).
      regions: the test regions (`test_spatial_regions`), each with `region_id` and `bounds`.
      validation_regions: the spatial validation regions (`validation_regions`), [] without.
      statistics: `split_statistics`.
      folds: id -> block-CV fold (0..K-1), or None when the file has no folds.
      fold_buffer: id -> folds whose training set excludes this observation (buffer), or None.
      raw: the parsed JSON.
    """

    train_ids: list[str]
    test_ids: list[str]
    reasons: dict[str, str]
    regions: list[dict]
    statistics: dict
    folds: dict[str, int] | None
    raw: dict
    excluded_ids: list[str] = field(default_factory=list)
    fold_buffer: dict[str, list[int]] | None = None
    path: Path | None = None
    validation_ids: list[str] = field(default_factory=list)
    validation_regions: list[dict] = field(default_factory=list)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def ids(self) -> list[str]:
        """Every id of the file, in file order."""
        return list(self.reasons)

    @property
    def has_validation(self) -> bool:
        """Whether the file carries a validation set (possibly empty by choice); with_validation adds one."""
        return "validation" in self.raw.get("split_strategy", {})

    @property
    def num_folds(self) -> int:
        """K of the block cross-validation (0 without folds)."""
        if self.folds is None:
            return 0
        cv = self.raw.get("split_strategy", {}).get("block_cv") or {}
        return int(cv.get("num_folds", max(self.folds.values(), default=-1) + 1))

    def _store_rows(self, store, allow_missing: bool) -> np.ndarray:
        """Store rows of every id in file order (-1 for ids the store lacks, only with allow_missing)."""
        key = (str(store.path), id(store))
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = store.rows_of(self.ids, allow_missing=True)
        rows = self._cache[key]
        if not allow_missing and (rows < 0).any():
            ids = self.ids
            missing = [ids[i] for i in np.flatnonzero(rows < 0)]
            raise SplitError(
                f"split file {self.path or '(in memory)'} names {len(missing)} observation id(s) that store "
                f"{store.path} lacks: {describe_ids(missing)}; "
                "pass allow_missing (--allow-missing) to drop them"
            )
        return rows

    def subset_mask(self, subset: str, fold: int | None = None) -> np.ndarray:
        """Bool `(len(ids),)` in file order: which ids are in `subset` (train, test, excluded, validation).

        With `fold=k`: test = fold k; validation = the holdout's validation ids outside fold k and its buffer;
        excluded = fold k's buffer and the validation buffers; train = the rest.
        """
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
        if fold is None:
            splits = np.asarray(
                [self.raw["observation_mappings"][i]["split"] for i in self.ids], dtype=object
            )
            return splits == subset
        if self.folds is None:
            raise SplitError(
                f"split file {self.path or '(in memory)'} has no block-CV folds; make one with --folds"
            )
        if not 0 <= fold < self.num_folds:
            raise SplitError(f"fold must be in 0..{self.num_folds - 1}, got {fold}")
        ids = self.ids
        fold_of = np.fromiter((self.folds[i] for i in ids), np.int64, len(ids))
        buffer = self.fold_buffer or {}
        buffered = np.fromiter((fold in buffer.get(i, ()) for i in ids), bool, len(ids))
        holdout = np.asarray([self.raw["observation_mappings"][i]["split"] for i in ids], dtype=object)
        validation_buffer = np.fromiter(
            (kind_of(self.reasons[i]) is Kind.VALIDATION_BUFFER for i in ids), bool, len(ids)
        )
        return fold_masks(fold_of == fold, buffered, holdout, validation_buffer)[subset]

    def rows(self, store, subset: str, fold: int | None = None, allow_missing: bool = False) -> np.ndarray:
        """Store observation-table rows of `subset`, `(N,)` int64 sorted.

        Without `fold`: the holdout split. With `fold=k` (block CV): test = fold k, excluded = the other
        folds' observations within the buffer of fold k's blocks, train = the rest. Ids the store lacks raise
        ValueError (count and examples) unless `allow_missing`, which drops them.
        """
        store_rows = self._store_rows(store, allow_missing)
        rows = store_rows[self.subset_mask(subset, fold)]
        return np.sort(rows[rows >= 0]).astype(np.int64)

    def reason_of_rows(self, store, rows, fold: int | None = None) -> np.ndarray:
        """`(N,)` object array: the split reason of each store row ("not_in_split" for rows outside the file).

        With `fold=k`: "fold_<k>_test", "fold_<j>_train" (j the row's own fold) or "buffer_fold_<k>";
        validation rows and those excluded by validation buffers keep their holdout reason.
        """
        store_rows = self._store_rows(store, allow_missing=True)
        ids = self.ids
        if fold is None:
            reasons = np.asarray([self.reasons[i] for i in ids], dtype=object)
        else:
            test = self.subset_mask("test", fold)
            excluded = self.subset_mask("excluded", fold)
            own = self.subset_mask("validation", fold) | (
                excluded
                & np.fromiter((kind_of(self.reasons[i]) is Kind.VALIDATION_BUFFER for i in ids), bool)
            )
            reasons = np.asarray(
                [
                    self.reasons[i]
                    if v
                    else str(
                        Reason(Kind.FOLD_TEST, fold)
                        if t
                        else (Reason(Kind.FOLD_BUFFER, fold) if e else Reason(Kind.FOLD_TRAIN, self.folds[i]))
                    )
                    for i, t, e, v in zip(ids, test, excluded, own, strict=True)
                ],
                dtype=object,
            )
        by_row = np.full(store.num_observations, str(Reason(Kind.NOT_IN_SPLIT)), dtype=object)
        ok = store_rows >= 0
        by_row[store_rows[ok]] = reasons[ok]
        return by_row[np.asarray(rows, np.int64)]


def _check_top_level(raw, where: str) -> None:
    """The keys and types every split file has; ValueError (one line) otherwise."""
    if not isinstance(raw, dict):
        raise SplitError(f"{where} is not a split file: the top level is not a JSON object")
    missing = [k for k in ("split_strategy", "test_spatial_regions", "observation_mappings") if k not in raw]
    if missing:
        raise SplitError(
            f"{where} is not a DeepEarth split file: missing key(s) {', '.join(missing)} "
            f"(expected the keys of central_florida_split.json: {', '.join(ORIGINAL_KEYS)})"
        )
    fmt = raw.get("format")
    if fmt is not None and (
        not isinstance(fmt, dict)
        or fmt.get("name") != SPLIT_FORMAT
        or fmt.get("version") not in READ_VERSIONS
    ):
        raise SplitError(
            f"{where} has split format {fmt!r}; this deepearth_jax reads {SPLIT_FORMAT} "
            + " and ".join(f"v{v}" for v in READ_VERSIONS)
        )
    if not isinstance(raw["split_strategy"], dict):
        raise SplitError(f"{where}: split_strategy must be an object")
    if not isinstance(raw["observation_mappings"], dict) or not isinstance(raw["test_spatial_regions"], list):
        raise SplitError(f"{where}: observation_mappings must be an object and test_spatial_regions a list")
    check_regions(raw["test_spatial_regions"], where, "test_spatial_regions")
    if not isinstance(raw.get("validation_regions", []), list):
        raise SplitError(f"{where}: validation_regions must be a list")
    check_regions(raw.get("validation_regions", []), where, "validation_regions")


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_regions(regions: list, where: str, key: str) -> None:
    """Each region has an integer region_id (no two alike) and finite, ordered, distinct bounds."""
    seen_ids, seen_bounds = set(), set()
    for n, region in enumerate(regions):
        if not isinstance(region, dict) or "region_id" not in region or "bounds" not in region:
            raise SplitError(f"{where}: every {key} entry needs region_id and bounds (entry {n} does not)")
        rid, bounds = region["region_id"], region["bounds"]
        if not isinstance(rid, int) or isinstance(rid, bool):
            raise SplitError(f"{where}: {key}[{n}].region_id must be an integer, got {rid!r}")
        if not isinstance(bounds, dict) or not all(k in bounds for k in ("north", "south", "east", "west")):
            raise SplitError(f"{where}: region {rid} bounds need north, south, east, west")
        bad = [k for k in ("north", "south", "east", "west") if not _finite(bounds[k])]
        if bad:
            raise SplitError(
                f"{where}: {key} region {rid} bounds.{bad[0]} must be a finite number, got {bounds[bad[0]]!r}"
            )
        if not (bounds["south"] <= bounds["north"] and bounds["west"] <= bounds["east"]):
            raise SplitError(
                f"{where}: {key} region {rid} bounds must have south <= north and west <= east, got {bounds}"
            )
        box = tuple(float(bounds[k]) for k in ("north", "south", "east", "west"))
        if rid in seen_ids or box in seen_bounds:
            what = f"region_id {rid}" if rid in seen_ids else f"the bounds of region {rid}"
            raise SplitError(f"{where}: {key} has {what} twice (duplicated region)")
        seen_ids.add(rid)
        seen_bounds.add(box)


def _int_field(entry: dict, name: str, where: str, oid: str) -> int:
    value = entry[name]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SplitError(f"{where}: observation {oid!r} field {name} must be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise SplitError(
            f"{where}: observation {oid!r} field {name} must be an integer, got {value!r}"
        ) from None


def _parse_entry(entry, oid: str, gbif: int, image_index: int, where: str) -> None:
    """Checks one observation_mappings entry; ValueError (one line) naming the id and field."""
    if not isinstance(entry, dict) or "split" not in entry or "split_reason" not in entry:
        raise SplitError(f"{where}: observation {oid!r} has no split/split_reason")
    if entry["split"] not in SUBSETS:
        raise SplitError(
            f"{where}: observation {oid!r} has split {entry['split']!r}; expected train, test, excluded or "
            "validation"
        )
    if not isinstance(entry["split_reason"], str):
        raise SplitError(f"{where}: observation {oid!r} split_reason must be a string")
    if ("gbif_id" in entry and _int_field(entry, "gbif_id", where, oid) != gbif) or (
        "image_index" in entry and _int_field(entry, "image_index", where, oid) != image_index
    ):
        raise SplitError(
            f"{where}: observation {oid!r} has gbif_id/image_index fields that disagree with its id"
        )


def parse_split(raw: dict, path: str | Path | None = None) -> Split:
    """Builds a Split from parsed JSON (ours or the original's); ValueError (one line) when malformed."""
    where = str(path) if path is not None else "(in memory)"
    _check_top_level(raw, where)
    mappings = raw["observation_mappings"]
    ids = list(mappings)
    try:
        gbif, image_index = ids_lib.parse_observation_ids(ids)
    except ValueError as e:
        raise SplitError(f"{where}: {e}") from None
    reasons: dict[str, str] = {}
    by_split: dict[str, list[str]] = {s: [] for s in SUBSETS}
    folds: dict[str, int] | None = (
        {} if any("fold" in m for m in mappings.values() if isinstance(m, dict)) else None
    )
    fold_buffer: dict[str, list[int]] | None = {} if folds is not None else None
    for k, oid in enumerate(ids):
        entry = mappings[oid]
        _parse_entry(entry, oid, int(gbif[k]), int(image_index[k]), where)
        by_split[entry["split"]].append(oid)
        reasons[oid] = entry["split_reason"]
        if folds is not None:
            if "fold" not in entry:
                raise SplitError(f"{where}: observation {oid!r} has no fold while others do")
            folds[oid] = _int_field(entry, "fold", where, oid)
            buffer = entry.get("fold_buffer") or []
            if not isinstance(buffer, list) or not all(isinstance(f, int) for f in buffer):
                raise SplitError(f"{where}: observation {oid!r} field fold_buffer must be a list of folds")
            if buffer:
                fold_buffer[oid] = [int(f) for f in buffer]
    return Split(
        train_ids=by_split["train"],
        test_ids=by_split["test"],
        reasons=reasons,
        regions=raw["test_spatial_regions"],
        statistics=raw.get("split_statistics", {}),
        folds=folds,
        raw=raw,
        excluded_ids=by_split["excluded"],
        fold_buffer=fold_buffer,
        path=Path(path) if path is not None else None,
        validation_ids=by_split["validation"],
        validation_regions=raw.get("validation_regions", []),
    )


def load_split(path: str | Path) -> Split:
    """Reads a split file: ours, or the original `central_florida_split.json` as it is."""
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"no split file at {path}")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SplitError(f"{path} is not valid JSON: {e}") from None
    return parse_split(raw, path)


def write_split(payload: dict, path: str | Path) -> None:
    """Writes a split payload as JSON, atomically (a temporary file, then a rename)."""
    from deepearth_jax.io import write_json_atomic

    path = Path(path)
    blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise SplitError(f"cannot write split file {path}: {blocked} is not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, payload)
    except OSError as e:  # under a regular file, read-only, disk full: one line, nothing half-written
        raise SplitError(f"cannot write split file {path}: {e.strerror or e}") from None
