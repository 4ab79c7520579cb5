"""The validation set: carved from the training rows so that it mirrors the test's reasons.

Model selection (the best checkpoint, evaluate's default) must never look at the test set, so the split file
carries a `validation` subset taken from the holdout's TRAINING rows only (test and excluded rows are never
touched), in three steps after the holdout assignment:

1. Temporal: training rows of the `validation_years` most recent training years become `validation`
   (`validation_temporal`), mirroring the temporal test years.
2. Spatial: `validation_regions` boxes of `region_km`, centred on training observations at least
   `min_distance_km` from every test box and from each other, chosen like the test regions (same objective,
   its own seeded draws); training rows inside box k become `validation` (`validation_spatial_region_<k>`,
   overriding step 1). By default as many as the test has, or as many as fit (a warning says so); an
   explicit count is a constraint.
3. Buffer: with `buffer_km` > 0, the remaining training rows within `buffer_km` of a validation box become
   `excluded` (`validation_buffer_region_<k>`), as the test regions' buffers do.

Deterministic by seed. `with_validation` carves a file that has none (a v1 file, the original
central_florida_split.json) at load time in exactly this way, so old files keep working.
"""

from __future__ import annotations

import copy
import logging

import numpy as np

from deepearth_jax.data import geo
from deepearth_jax.data import ids as ids_lib
from deepearth_jax.data.split.file_format import Split, parse_split
from deepearth_jax.data.split.options import DEFAULTS, SplitOptions
from deepearth_jax.data.split.pool import Pool, subset
from deepearth_jax.data.split.reasons import VALIDATION_TEMPORAL, Kind, Reason
from deepearth_jax.data.split.regions import RegionsDoNotFit, choose_regions, count_observations, near_boxes
from deepearth_jax.errors import SplitError

log = logging.getLogger(__name__)

VALIDATION_STREAM = 13  # the validation regions' random draws, apart from the test regions' (7)


def _validation_years(train_years: np.ndarray, count: int) -> list[int]:
    years = sorted({int(y) for y in np.unique(train_years)})
    if count == 0:
        return []
    if len(years) <= count:
        raise SplitError(
            f"--validation-years {count} would hold out every training year ({', '.join(map(str, years))}) "
            "and leave no training observations; pass a smaller --validation-years (0: none)"
        )
    return years[-count:]


def _choose(pool: Pool, train: np.ndarray, test_regions: list[dict], options: SplitOptions):
    """Validation regions centred on training rows >= min_distance_km from every test box.

    An explicit `validation_regions` is a constraint (ValueError when it cannot be met); the default (as many
    as the test has) places as many as fit, fewest first dropped, and says so.
    """
    wanted = options.num_validation_regions
    candidates = np.flatnonzero(train)
    if wanted and test_regions and len(candidates):
        distance, _ = near_boxes(pool.lat[candidates], pool.lon[candidates], test_regions)
        candidates = candidates[distance >= options.min_distance_km]
    explicit = options.validation_regions is not None
    if wanted and len(candidates) == 0 and explicit:
        raise SplitError(
            f"cannot place {wanted} validation regions: no training observation lies >= "
            f"{options.min_distance_km:g} km from the test regions; pass --validation-regions 0 or a smaller "
            "--min-distance-km"
        )
    count = wanted if len(candidates) else 0
    while True:
        try:
            regions, selection = choose_regions(
                subset(pool, candidates),
                num_regions=count,
                region_km=options.region_km,
                min_distance_km=options.min_distance_km,
                region_share=options.region_share,
                seed=options.seed,
                what="validation",
                stream=VALIDATION_STREAM,
            )
            break
        except RegionsDoNotFit as e:
            if explicit:
                raise
            count = min(count - 1, e.most)  # a draw placed `most`: the same draw places that many again
    if count < wanted:
        log.warning(
            "only %d of %d validation regions fit among the training observations >= %g km from the test "
            "regions (pass --validation-regions to require a number)",
            count,
            wanted,
            options.min_distance_km,
        )
    if count:
        selection["candidate_rule"] = "training observations >= min_distance_km from every test box"
    selection["requested"] = wanted
    return regions, selection


def carve_validation(
    pool: Pool,
    split: np.ndarray,
    reason: np.ndarray,
    test_regions: list[dict],
    options: SplitOptions,
    *,
    reuse: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict], dict]:
    """Steps 1-3 of the module docstring on a holdout assignment: `(split, reason, regions, record)`.

    `reuse` is `{"years": [...], "regions": [...]}` of a file that has a validation set: applied again.
    """
    split, reason = split.copy(), reason.copy()
    train = split == "train"
    if reuse is None:
        years = _validation_years(pool.year[train], options.validation_years)
        regions, selection = _choose(pool, train, test_regions, options)
    else:
        years, regions = [int(y) for y in reuse["years"]], [dict(r) for r in reuse["regions"]]
        selection = {"objective": "validation regions reused from another split file"}
    temporal = train & np.isin(pool.year, np.asarray(years, np.int64))
    split[temporal] = "validation"
    reason[temporal] = VALIDATION_TEMPORAL
    for region in regions:
        inside = train & geo.in_box(pool.lat, pool.lon, region["bounds"])
        split[inside] = "validation"
        reason[inside] = Reason(Kind.VALIDATION_SPATIAL, int(region["region_id"]))
    if options.buffer_km > 0 and regions:
        rest = np.flatnonzero(split == "train")
        distance, nearest = near_boxes(pool.lat[rest], pool.lon[rest], regions)
        near = distance <= options.buffer_km
        buffers = [Reason(Kind.VALIDATION_BUFFER, int(r["region_id"])) for r in regions]
        split[rest[near]] = "excluded"
        for i, k in zip(rest[near], nearest[near], strict=True):
            reason[i] = buffers[k]
    count_observations(regions, reason, Kind.VALIDATION_SPATIAL, "validation", fresh=reuse is None)
    record = {
        "description": (
            "carved from the training rows to mirror the test: the most recent training year(s), then "
            "spatial regions (override), then buffers like the test regions'; never test rows"
        ),
        "years": years,
        "num_regions": len(regions),
        "region_size_km": float(options.region_km),
        "min_distance_km": float(options.min_distance_km),
        "buffer_km": float(options.buffer_km),
        "seed": int(options.seed),
        "selection": selection,
    }
    return split, reason, regions, record


def _pool_from_file(split: Split, store) -> Pool:
    """The file's observations as a Pool, in file order; coordinates and years from the file or the store."""
    ids = split.ids
    entries = [split.raw["observation_mappings"][i] for i in ids]
    n = len(ids)

    def column(name: str, store_name: str) -> np.ndarray:
        if all(isinstance(e.get(name), int | float) and not isinstance(e.get(name), bool) for e in entries):
            return np.asarray([e[name] for e in entries], np.float64)
        if store is None:
            raise SplitError(
                f"split file {split.path or '(in memory)'} lacks {name} for some observations; pass the store"
            )
        return np.asarray(store.column(store_name), np.float64)[split._store_rows(store, False)]

    lat, lon, year = column("latitude", "latitude"), column("longitude", "longitude"), column("year", "year")
    bad = ~(np.isfinite(lat) & np.isfinite(lon) & np.isfinite(year))
    if bad.any():
        raise SplitError(
            f"split file {split.path or '(in memory)'}: {int(bad.sum())} observations have no finite "
            "latitude/longitude/year; cannot carve a validation set"
        )
    gbif, image_index = ids_lib.parse_observation_ids(ids)
    return Pool(
        rows=np.arange(n, dtype=np.int64),
        ids=np.asarray(ids, dtype=object),
        lat=lat,
        lon=lon,
        year=year.astype(np.int64),
        gbif=np.asarray(gbif, np.int64),
        image_index=np.asarray(image_index, np.int64),
        taxon_id=np.asarray([e.get("taxon_id") for e in entries], dtype=object),
        taxon_name=np.asarray([str(e.get("taxon_name", "")) for e in entries], dtype=object),
        month=np.full(n, np.nan),
        day=np.full(n, np.nan),
    )


def options_of_file(split: Split, seed: int | None = None) -> SplitOptions:
    """The options a file's own strategy implies (its box size, spacing, buffer, seed), defaults elsewhere."""
    spatial = split.raw["split_strategy"].get("spatial_split", {})
    file_seed = spatial.get("seed", DEFAULTS.seed)
    options = DEFAULTS.replace(
        num_regions=len(split.regions),
        region_km=spatial.get("region_size_km", DEFAULTS.region_km),
        min_distance_km=spatial.get("min_distance_km", DEFAULTS.min_distance_km),
        buffer_km=spatial.get("buffer_km", 0.0),
        seed=file_seed if seed is None else seed,
    )
    try:
        options.check()
    except ValueError as e:
        raise SplitError(f"split file {split.path or '(in memory)'}: split_strategy: {e}") from None
    return options


def with_validation(split: Split, store=None, seed: int | None = None) -> Split:
    """The split with a validation set: itself when the file carries one, else carved now (module docstring).

    Old files (v1, the original central_florida_split.json) get the validation set make_split would have
    written: the most recent training year and as many regions as the test has, of the file's own box size,
    spacing and buffer, drawn with `seed` (default: the file's recorded seed, else 0). Deterministic; never
    takes test rows. `store` is read only when the file lacks coordinates or years.
    """
    if split.has_validation:
        return split
    options = options_of_file(split, seed)
    pool = _pool_from_file(split, store)
    holdout = np.asarray([split.raw["observation_mappings"][i]["split"] for i in split.ids], dtype=object)
    reason = np.asarray(list(split.reasons.values()), dtype=object)
    new_split, new_reason, regions, record = carve_validation(pool, holdout, reason, split.regions, options)
    record["carved"] = "at load time by with_validation: the file has no validation set"
    record["validation_count"] = int((new_split == "validation").sum())
    raw = dict(split.raw)
    raw["split_strategy"] = {**raw["split_strategy"], "validation": record}
    raw["validation_regions"] = regions
    mappings = dict(raw["observation_mappings"])
    for k in np.flatnonzero(new_split != holdout):
        oid = split.ids[k]
        mappings[oid] = {**mappings[oid], "split": str(new_split[k]), "split_reason": str(new_reason[k])}
    raw["observation_mappings"] = mappings
    return parse_split(copy.copy(raw), split.path)
