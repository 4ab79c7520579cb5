"""make_split: the pool, test regions, reasons, folds and statistics assembled into the split file's JSON."""

from __future__ import annotations

import datetime as _dt
import logging
import math
from pathlib import Path

import numpy as np

from deepearth_jax import __version__
from deepearth_jax.data.split import sizing
from deepearth_jax.data.split.file_format import SPLIT_FORMAT, SPLIT_VERSION, Split, describe_ids, load_split
from deepearth_jax.data.split.folds import check_block_cv, fold_masks, make_folds
from deepearth_jax.data.split.options import DEFAULTS, SplitOptions
from deepearth_jax.data.split.pool import Pool, pool_of
from deepearth_jax.data.split.reasons import Kind, of_kind
from deepearth_jax.data.split.regions import assign_reasons, choose_regions, count_observations
from deepearth_jax.data.split.stats import fold_statistics, statistics
from deepearth_jax.data.split.validation import carve_validation
from deepearth_jax.errors import SplitError

log = logging.getLogger(__name__)

_REGION_FIELDS = {"num_regions", "region_km", "min_distance_km", "region_share"}


def _taxon_id_value(value):
    """The original wrote taxon_id as an int; keep ints where the id is numeric."""
    text = str(value)
    return int(text) if text.isdigit() else text


def _optional_int(value) -> int | None:
    return None if value is None or not np.isfinite(value) else int(value)


def _file_error(other: Split, field: str, expected: str, value) -> SplitError:
    return SplitError(f"{other.path or 'the split file'}: {field} must be {expected}, got {value!r}")


def _file_number(other: Split, field: str, value, low: float = 0.0) -> float:
    """A number of another split file's strategy, checked: one line naming the file and field otherwise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < low
    ):
        raise _file_error(other, field, f"a finite number >= {low:g}", value)
    return float(value)


def _file_years(other: Split, field: str, years) -> list[int]:
    if not isinstance(years, list) or not all(isinstance(y, int) and not isinstance(y, bool) for y in years):
        raise _file_error(other, field, "a list of integer years", years)
    return years


def _from_other(
    other: Split, options: SplitOptions
) -> tuple[SplitOptions, list[dict], dict | None, dict | None]:
    """What re-applying `other` takes from it: `(options, regions, block_cv record, validation to reuse)`."""
    strategy = other.raw["split_strategy"]
    spatial = strategy.get("spatial_split", {})
    if not isinstance(spatial, dict):
        raise _file_error(other, "split_strategy.spatial_split", "an object", spatial)
    field = "split_strategy.spatial_split."
    options = options.replace(
        test_years=_file_years(
            other,
            "split_strategy.temporal_split.test_years",
            strategy.get("temporal_split", {}).get("test_years", []),
        ),
        num_regions=len(other.regions),
        region_km=_file_number(
            other, field + "region_size_km", spatial.get("region_size_km", options.region_km)
        ),
        min_distance_km=_file_number(
            other, field + "min_distance_km", spatial.get("min_distance_km", options.min_distance_km)
        ),
        buffer_km=_file_number(other, field + "buffer_km", spatial.get("buffer_km", 0.0)),
        all_observations=spatial.get("candidate_pool", "vision") == "all",
    )
    reuse_cv = strategy["block_cv"] if options.folds == 0 and strategy.get("block_cv") else None
    if reuse_cv is not None:
        check_block_cv(reuse_cv, other.path or "the split file")
    reuse_validation = None
    if other.has_validation:
        record = strategy["validation"]
        years = _file_years(
            other,
            "split_strategy.validation.years",
            record.get("years") if isinstance(record, dict) else None,
        )
        reuse_validation = {"years": years, "regions": other.validation_regions}
    return options, [dict(r) for r in other.regions], reuse_cv, reuse_validation


def _check_years(pool: Pool, years: list[int]) -> None:
    """Refuses test years the pool has no observation in."""
    present = set(np.unique(pool.year).tolist())
    absent = [y for y in years if y not in present]
    if absent:
        raise SplitError(
            f"test year(s) {', '.join(map(str, absent))} have no observations in the pool of "
            f"{len(pool.rows)} (years present: {int(pool.year.min())}..{int(pool.year.max())})"
        )


def _default_test_years(pool: Pool, years: list[int], store) -> tuple[list[int], str | None]:
    """The default test years (DEFAULTS.test_years, not asked for), or when the pool has none of them the
    most recent year it has: `(years, the rule recorded in the file, or None when the default stands)`.

    So that `split STORE` works as written on any store (an occurrence table of 2010-2024 has no 2025),
    with the choice said on the console and written in split_strategy.temporal_split.test_years_rule.
    """
    present = set(np.unique(pool.year).tolist())
    if any(y in present for y in years):
        return years, None
    latest = int(pool.year.max())
    rule = (
        f"the most recent year in the pool ({latest}): the default test year(s) "
        f"{', '.join(map(str, years))} have no observations"
    )
    log.warning(
        "store %s has no observation in the default test year(s) %s: holding out %d, its most recent year, "
        "as the temporal test (pass --test-years to choose)",
        store.path,
        ", ".join(map(str, years)),
        latest,
    )
    return [latest], rule


def _check_training(split: np.ndarray, fold, bits, reason) -> None:
    """Refuses a split (or a fold) that leaves nothing to train on."""
    counts = {s: int((split == s).sum()) for s in ("train", "test", "excluded", "validation")}
    if counts["train"] == 0:
        raise SplitError(
            f"the split leaves no training observations (test {counts['test']}, validation "
            f"{counts['validation']}, excluded {counts['excluded']}); use fewer test years or regions, a "
            "smaller --buffer-km, or fewer --validation-years / --validation-regions"
        )
    if fold is None:
        return
    validation_buffer = of_kind(reason, Kind.VALIDATION_BUFFER)
    for k in range(int(fold.max()) + 1):
        if not fold_masks(fold == k, ((bits >> k) & 1) == 1, split, validation_buffer)["train"].any():
            raise SplitError(
                f"fold {k} leaves no training observations; use a smaller --buffer-km or more folds"
            )


def _holdout(pool: Pool, years: list[int], options: SplitOptions, regions, reuse_validation) -> tuple:
    """Regions (chosen unless given), the holdout assignment and the validation carve-out: `(regions,
    selection, holdout reason, split, reason, validation regions, validation record)`."""
    selection = None
    fresh = regions is None
    if fresh:
        regions, selection = choose_regions(
            pool,
            num_regions=options.num_regions,
            region_km=options.region_km,
            min_distance_km=options.min_distance_km,
            region_share=options.region_share,
            seed=options.seed,
        )
    regions = [dict(r) for r in regions]
    split, holdout_reason = assign_reasons(pool.lat, pool.lon, pool.year, years, regions, options.buffer_km)
    count_observations(regions, holdout_reason, Kind.SPATIAL_TEST, "test", fresh=fresh)
    _check_training(split, None, None, holdout_reason)
    split, reason, validation_regions, validation = carve_validation(
        pool, split, holdout_reason, regions, options, reuse=reuse_validation
    )
    count_observations(
        validation_regions, reason, Kind.VALIDATION_SPATIAL, "validation", reuse_validation is None
    )
    return regions, selection, holdout_reason, split, reason, validation_regions, validation


def make_split(
    store,
    options: SplitOptions | None = None,
    *,
    regions_from: str | Path | Split | None = None,
    allow_missing: bool = False,
    test_years_given: bool = False,
    strict: bool = False,
    **changes,
) -> dict:
    """Makes a split of `store` and returns the JSON payload (the package docstring states the rules).

    Args:
      options: the parameters (SplitOptions; its defaults when None); `changes` override fields by name,
        e.g. `make_split(store, seed=1, buffer_km=2.0)`; a region field among them turns fit_regions off.
      regions_from: a split file (path or Split) whose test years, regions, buffer, pool, folds and
        validation set are applied again; every id both share must get the same reason (ValueError
        otherwise). A file without a validation set gets one carved as make_split carves it.
      allow_missing: with regions_from, drop ids of that file that this store's pool lacks instead of failing.
      test_years_given: the test years were asked for (the CLI's --test-years). When they were not, are
        the defaults, and the pool has none of them, the pool's most recent year is the temporal test
        (logged, and recorded as `split_strategy.temporal_split.test_years_rule`).
      strict: a lopsided split (sizing.py) raises SplitError naming the flags that fix it; otherwise it is
        kept with a warning. Default regions are fitted to the pool first either way.

    A store without vision embeddings (an observation-only store) is split whole: its pool is every
    observation.
    """
    if set(changes) & _REGION_FIELDS and "fit_regions" not in changes:
        changes["fit_regions"] = False  # regions asked for by name are those regions, never fitted
    options = (options or DEFAULTS).replace(**changes)
    other = reuse_cv = reuse_validation = regions = None
    if regions_from is not None:
        other = regions_from if isinstance(regions_from, Split) else load_split(regions_from)
        options, regions, reuse_cv, reuse_validation = _from_other(other, options)
        selection = {"objective": f"regions reused from {other.path or 'another split file'}"}
    if not store.has_vision and not options.all_observations:
        options = options.replace(all_observations=True)  # no vision rows to pool: every observation
    options.check()
    years = sorted({int(y) for y in (options.test_years or ())})
    pool = pool_of(store, options.all_observations)
    years_rule = None
    if other is None and not test_years_given and tuple(years) == tuple(DEFAULTS.test_years):
        years, years_rule = _default_test_years(pool, years, store)
    _check_years(pool, years)
    options, held, sizing_record = _sized_holdout(
        pool, years, options, regions, reuse_validation, other, strict
    )
    regions = held[0]
    if other is None:
        selection = held[1]
    holdout_reason, split, reason, validation_regions, validation = held[2:]
    fold = bits = cv_record = None
    if options.folds or reuse_cv is not None:
        fold, bits, cv_record = make_folds(
            pool.lat,
            pool.lon,
            num_folds=options.folds,
            block_km=options.block_km,
            buffer_km=options.buffer_km,
            seed=options.seed,
            reuse=reuse_cv,
        )
    _check_training(split, fold, bits, reason)
    compared = None
    if other is not None:
        theirs = reason if reuse_validation is not None else holdout_reason
        compared = _compare_with(other, pool, theirs, fold, allow_missing)
    stats = _statistics(
        pool, split, reason, regions, years, validation_regions, (fold, bits, cv_record), compared
    )
    payload = _payload(store, pool, options, years, regions, selection, split, stats)
    if years_rule is not None:
        payload["split_strategy"]["temporal_split"]["test_years_rule"] = years_rule
    payload["split_strategy"]["spatial_split"]["sizing"] = sizing_record
    payload["split_strategy"]["validation"] = validation
    if cv_record is not None:
        payload["split_strategy"]["block_cv"] = cv_record
    payload["validation_regions"] = validation_regions
    payload["observation_mappings"] = _mappings(pool, split, reason, fold, bits, cv_record)
    return payload


def _statistics(pool: Pool, split, reason, regions, years, validation_regions, folds, compared) -> dict:
    """The split file's statistics: subsets, reasons and regions; folds (`(fold, bits, record)`, record None
    without folds) and the comparison with a re-applied file when there are."""
    stats = statistics(pool, split, reason, regions, years, validation_regions)
    if folds[2] is not None:
        stats["block_cv"] = fold_statistics(pool, split, reason, *folds)
    if compared is not None:
        stats["regions_from"] = compared
    return stats


def _sized_holdout(pool: Pool, years, options: SplitOptions, regions, reuse_validation, other, strict: bool):
    """`(options, held, sizing record)`: the holdout of `pool` (`_holdout`'s tuple), its default regions
    fitted to the bounds (sizing.py; refused when `strict` and nothing fits); a file's own regions (`other`)
    are kept as they are, and a lopsided result is said, not refused."""

    def attempt(candidate: SplitOptions):
        held = _holdout(pool, years, candidate, regions, reuse_validation)
        return held, held[3]

    if other is None:
        return sizing.sized(attempt, options, strict=strict)
    held, _ = attempt(options)
    record = {"bounds": sizing.bounds(), "fitted": False}
    found = sizing.problems(held[3])
    if found:
        log.warning("re-applying %s gives a lopsided split: %s", other.path, "; ".join(found))
        record["problems"] = found
    return options, held, record


def _payload(store, pool: Pool, options: SplitOptions, years, regions, selection, split, stats) -> dict:
    """Every key of the file but the observation mappings (and block_cv), in the original's order."""
    train = split == "train"
    provenance = store.manifest.get("provenance", {})
    return {
        "format": {"name": SPLIT_FORMAT, "version": SPLIT_VERSION},
        "dataset_info": {
            "dataset_name": str(provenance.get("dataset_name") or Path(store.path).name),
            "version": str(provenance.get("dataset_version", "unknown")),
            "split_created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "description": "Spatial and temporal train/test split for DeepEarth ML training (deepearth_jax)",
            "store": str(store.path),
            "store_created": store.manifest.get("created"),
            "store_observations": int(store.num_observations),
            "generator": f"deepearth_jax {__version__}",
        },
        "split_strategy": {
            "temporal_split": {
                "train_years": f"all except {', '.join(map(str, years))}" if years else "all",
                "test_years": years,
                "description": "Exclude the test years from training to test temporal generalization",
            },
            "spatial_split": {
                "num_test_regions": len(regions),
                "region_size_km": float(options.region_km),
                "min_distance_km": float(options.min_distance_km),
                "description": "Spatial carve-outs for testing geographic generalization",
                "buffer_km": float(options.buffer_km),
                "seed": int(options.seed),
                "candidate_pool": "all" if options.all_observations else "vision",
                "box_rule": "half-side size_km/2 at 111 km/deg of latitude, 111*cos(center_lat) of longitude",
                "assignment_order": "temporal first, then each region in order overrides; buffers last",
                "selection": selection,
            },
        },
        "train_spatial_bounds": {
            "north": float(pool.lat[train].max()) if train.any() else None,
            "south": float(pool.lat[train].min()) if train.any() else None,
            "east": float(pool.lon[train].max()) if train.any() else None,
            "west": float(pool.lon[train].min()) if train.any() else None,
        },
        "test_spatial_regions": regions,
        "validation_regions": [],
        "split_statistics": stats,
        "observation_mappings": {},
    }


def _mappings(pool: Pool, split, reason, fold, bits, cv_record) -> dict:
    """`observation_mappings`: one entry per pool observation, in store order."""
    mappings = {}
    for i in range(len(pool.rows)):
        entry = {
            "gbif_id": int(pool.gbif[i]),
            "taxon_id": _taxon_id_value(pool.taxon_id[i]),
            "taxon_name": str(pool.taxon_name[i]),
            "image_index": int(pool.image_index[i]),
            "split": str(split[i]),
            "split_reason": str(reason[i]),
            "latitude": float(pool.lat[i]),
            "longitude": float(pool.lon[i]),
            "year": int(pool.year[i]),
            "month": _optional_int(pool.month[i]),
            "day": _optional_int(pool.day[i]),
        }
        if fold is not None:
            entry["fold"] = int(fold[i])
            entry["fold_buffer"] = [f for f in range(cv_record["num_folds"]) if (bits[i] >> f) & 1]
        mappings[str(pool.ids[i])] = entry
    return mappings


def _compare_with(other: Split, pool: Pool, reason: np.ndarray, fold, allow_missing: bool) -> dict:
    """Checks that ids shared with `other` got the same reason (and fold); records membership changes."""
    index = {oid: i for i, oid in enumerate(pool.ids.tolist())}
    theirs = other.ids
    missing = [oid for oid in theirs if oid not in index]
    if missing and not allow_missing:
        raise SplitError(
            f"split file {other.path or '(in memory)'} names {len(missing)} observation id(s) that this "
            f"store's candidate pool lacks: {describe_ids(missing)}; pass --allow-missing to drop them"
        )
    shared = [oid for oid in theirs if oid in index]
    different = [oid for oid in shared if other.reasons[oid] != str(reason[index[oid]])]
    if different:
        shown = ", ".join(f"{o}: {other.reasons[o]} -> {reason[index[o]]}" for o in different[:3])
        raise SplitError(
            f"re-applying {other.path or 'the split file'} gives {len(different)} of {len(shared)} shared "
            f"ids another reason ({shown}); this store's coordinates or years differ from the ones it was "
            "made from"
        )
    if fold is not None and other.folds is not None:
        moved = [oid for oid in shared if other.folds[oid] != fold[index[oid]]]
        if moved:
            raise SplitError(
                f"re-applying {other.path or 'the split file'} moves {len(moved)} shared ids to another fold "
                f"(e.g. {describe_ids(moved, 3)})"
            )
    return {
        "source": str(other.path) if other.path is not None else None,
        "shared_observations": len(shared),
        "missing_from_store": len(missing),
        "new_observations": int(len(pool.ids) - len(shared)),
        "identical_reasons": True,
    }
