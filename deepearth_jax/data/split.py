"""Spatiotemporal train/test splits, spatial block cross-validation, and the split file (DATA.md §3).

The holdout split, as the original `create_train_test_split.py` defined it:

1. Every observation in the pool (those with a vision embedding by default, or all) starts as `train`
   (reason `temporal_train`); those in a test year become `test` (`temporal_test`).
2. Then, region by region in order, every observation inside region k's box becomes `test`
   (`spatial_test_region_<k>`), overriding the temporal reason. Boxes are squares of `region_km` centred on an
   observation, built with 111 km per degree (geo.box_around), edges included.
3. Ours: with `buffer_km` > 0, `temporal_train` observations within `buffer_km` (geodesic) of a region's box
   become `excluded` (`buffer_region_<k>`, k the nearest box), so spatial autocorrelation cannot leak.

Region centres (our objective, deterministic by seed): every pool observation is a candidate centre. Its box
should hold between half and twice a target share of the pool: with `region_share` given that range is a hard
constraint; by default the target is the median over candidates of the share in a box centred on them (a
typical neighbourhood) and the range is a preference (reported, never hidden). A draw visits the candidates in
a seeded random order, those in the share range first, and keeps each one at least `min_distance_km`
(geodesic, WGS84) from the centres kept so far, until `num_regions` are kept. Of `REGION_DRAWS` such draws
the one with the fewest boxes outside the share range, then the largest minimum distance between centres
(spread), wins; if no random draw places every region, one farthest-point draw (which packs best) is tried.
If that fails too, make_split raises a ValueError naming the constraints: a constraint is never relaxed.

Block cross-validation (`folds` > 0): the pool is cut into square blocks of `block_km` (a lat/lon grid from
the pool's south-west corner: `block_km / 111` degrees of latitude by `block_km / (111 cos(lat_ref))` degrees
of longitude, lat_ref the middle of the pool's latitudes), and blocks go whole to K folds, balanced by
observation count: a greedy pass over the blocks in seeded random order puts each block in the smallest
fold, then moves and swaps between the largest and smallest folds shrink the spread. Guarantee (tested): the
largest fold minus the smallest is at most the largest block's count. For fold k: test = fold k; train = the
other folds minus those within `buffer_km` of a fold-k block (excluded). The holdout split is still written
alongside (the same `buffer_km` applies around its regions).

The file is a superset of the original schema: every original key with its meaning, plus `format`, buffers,
folds and diagnostics. `load_split` reads ours and the original's `central_florida_split.json` as they are.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepearth_jax import __version__
from deepearth_jax.data import geo
from deepearth_jax.data import ids as ids_lib

log = logging.getLogger(__name__)

SPLIT_FORMAT = "deepearth_jax.split"
SPLIT_VERSION = 1
REGION_DRAWS = 16  # seeded random draws of region centres; the most spread out one wins
SHARE_TOLERANCE = 2.0  # a region's box holds between target/2 and target*2 of the pool
MAX_FOLDS = 62  # fold buffers are kept as bits of an int64
SUBSETS = ("train", "test", "excluded")
ORIGINAL_KEYS = (
    "dataset_info",
    "split_strategy",
    "train_spatial_bounds",
    "test_spatial_regions",
    "split_statistics",
    "observation_mappings",
)


# ----------------------------------------------------------------------------------------------------------
# Loading


def _describe_ids(ids: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" (and {len(ids) - limit} more)" if len(ids) > limit else "")


@dataclass
class Split:
    """A parsed split file (ours or the original's).

    Attributes:
      train_ids, test_ids, excluded_ids: OBSERVATION_IDs `"<gbif_id>_<image_index>"` of the holdout split, in
        file order.
      reasons: id -> split_reason ("temporal_train", "temporal_test", "spatial_test_region_<k>",
        "buffer_region_<k>").
      regions: the test regions (`test_spatial_regions`), each with `region_id` and `bounds`.
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
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def ids(self) -> list[str]:
        """Every id of the file, in file order."""
        return list(self.reasons)

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
            raise ValueError(
                f"split file {self.path or '(in memory)'} names {len(missing)} observation id(s) that store "
                f"{store.path} lacks: {_describe_ids(missing)}; "
                "pass allow_missing (--allow-missing) to drop them"
            )
        return rows

    def subset_mask(self, subset: str, fold: int | None = None) -> np.ndarray:
        """Bool `(len(ids),)` in file order: which ids are in `subset` ("train" | "test" | "excluded")."""
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
        if fold is None:
            splits = np.asarray(
                [self.raw["observation_mappings"][i]["split"] for i in self.ids], dtype=object
            )
            return splits == subset
        if self.folds is None:
            raise ValueError(
                f"split file {self.path or '(in memory)'} has no block-CV folds; make one with --folds"
            )
        if not 0 <= fold < self.num_folds:
            raise ValueError(f"fold must be in 0..{self.num_folds - 1}, got {fold}")
        ids = self.ids
        fold_of = np.fromiter((self.folds[i] for i in ids), np.int64, len(ids))
        buffer = self.fold_buffer or {}
        buffered = np.fromiter((fold in buffer.get(i, ()) for i in ids), bool, len(ids))
        test = fold_of == fold
        excluded = ~test & buffered
        return {"test": test, "excluded": excluded, "train": ~test & ~excluded}[subset]

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

        With `fold=k`: "fold_<k>_test", "fold_<j>_train" (j the row's own fold) or "buffer_fold_<k>".
        """
        store_rows = self._store_rows(store, allow_missing=True)
        ids = self.ids
        if fold is None:
            reasons = np.asarray([self.reasons[i] for i in ids], dtype=object)
        else:
            test = self.subset_mask("test", fold)
            excluded = self.subset_mask("excluded", fold)
            reasons = np.asarray(
                [
                    f"fold_{fold}_test"
                    if t
                    else (f"buffer_fold_{fold}" if e else f"fold_{self.folds[i]}_train")
                    for i, t, e in zip(ids, test, excluded, strict=True)
                ],
                dtype=object,
            )
        by_row = np.full(store.num_observations, "not_in_split", dtype=object)
        ok = store_rows >= 0
        by_row[store_rows[ok]] = reasons[ok]
        return by_row[np.asarray(rows, np.int64)]


def parse_split(raw: dict, path: str | Path | None = None) -> Split:
    """Builds a Split from parsed JSON (ours or the original's); ValueError (one line) when malformed."""
    where = str(path) if path is not None else "(in memory)"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} is not a split file: the top level is not a JSON object")
    missing = [k for k in ("split_strategy", "test_spatial_regions", "observation_mappings") if k not in raw]
    if missing:
        raise ValueError(
            f"{where} is not a DeepEarth split file: missing key(s) {', '.join(missing)} "
            f"(expected the keys of central_florida_split.json: {', '.join(ORIGINAL_KEYS)})"
        )
    fmt = raw.get("format")
    if fmt is not None and (
        not isinstance(fmt, dict) or fmt.get("name") != SPLIT_FORMAT or fmt.get("version") != SPLIT_VERSION
    ):
        raise ValueError(
            f"{where} has split format {fmt!r}; this deepearth_jax reads {SPLIT_FORMAT} v{SPLIT_VERSION}"
        )
    mappings = raw["observation_mappings"]
    regions = raw["test_spatial_regions"]
    if not isinstance(mappings, dict) or not isinstance(regions, list):
        raise ValueError(f"{where}: observation_mappings must be an object and test_spatial_regions a list")
    for region in regions:
        if not isinstance(region, dict) or "region_id" not in region or "bounds" not in region:
            raise ValueError(f"{where}: every test_spatial_regions entry needs region_id and bounds")
        bounds = region["bounds"]
        if not isinstance(bounds, dict) or not all(k in bounds for k in ("north", "south", "east", "west")):
            raise ValueError(
                f"{where}: region {region.get('region_id')} bounds need north, south, east, west"
            )
    ids = list(mappings)
    try:
        gbif, image_index = ids_lib.parse_observation_ids(ids)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    reasons: dict[str, str] = {}
    train, test, excluded = [], [], []
    by_split = {"train": train, "test": test, "excluded": excluded}
    folds: dict[str, int] | None = (
        {} if any("fold" in m for m in mappings.values() if isinstance(m, dict)) else None
    )
    fold_buffer: dict[str, list[int]] | None = {} if folds is not None else None
    for k, oid in enumerate(ids):
        entry = mappings[oid]
        if not isinstance(entry, dict) or "split" not in entry or "split_reason" not in entry:
            raise ValueError(f"{where}: observation {oid!r} has no split/split_reason")
        if entry["split"] not in by_split:
            raise ValueError(
                f"{where}: observation {oid!r} has split {entry['split']!r}; expected train, test or excluded"
            )
        if ("gbif_id" in entry and int(entry["gbif_id"]) != gbif[k]) or (
            "image_index" in entry and int(entry["image_index"]) != image_index[k]
        ):
            raise ValueError(
                f"{where}: observation {oid!r} has gbif_id/image_index fields that disagree with its id"
            )
        by_split[entry["split"]].append(oid)
        reasons[oid] = str(entry["split_reason"])
        if folds is not None:
            if "fold" not in entry:
                raise ValueError(f"{where}: observation {oid!r} has no fold while others do")
            folds[oid] = int(entry["fold"])
            if entry.get("fold_buffer"):
                fold_buffer[oid] = [int(f) for f in entry["fold_buffer"]]
    return Split(
        train_ids=train,
        test_ids=test,
        reasons=reasons,
        regions=regions,
        statistics=raw.get("split_statistics", {}),
        folds=folds,
        raw=raw,
        excluded_ids=excluded,
        fold_buffer=fold_buffer,
        path=Path(path) if path is not None else None,
    )


def load_split(path: str | Path) -> Split:
    """Reads a split file: ours, or the original `central_florida_split.json` as it is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no split file at {path}")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    return parse_split(raw, path)


# ----------------------------------------------------------------------------------------------------------
# Generation: the pool, regions, assignment


@dataclass
class _Pool:
    """The candidate observations (store rows) and their columns."""

    rows: np.ndarray
    ids: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    year: np.ndarray
    gbif: np.ndarray
    image_index: np.ndarray
    taxon_id: np.ndarray
    taxon_name: np.ndarray
    month: np.ndarray
    day: np.ndarray


def _pool(store, all_observations: bool) -> _Pool:
    columns = store.observations.column_names
    absent = [c for c in ("latitude", "longitude", "year") if c not in columns]
    if absent:
        raise ValueError(
            f"store {store.path} has no {', '.join(absent)} column(s): a split needs coordinates and dates"
        )
    if all_observations:
        rows = np.arange(store.num_observations, dtype=np.int64)
    else:
        rows = np.flatnonzero(store.column("vision_row") >= 0).astype(np.int64)
        if len(rows) == 0:
            raise ValueError(
                f"store {store.path} has no observation with a vision embedding; "
                "pass --all-observations to split every observation"
            )
    if len(rows) == 0:
        raise ValueError(f"store {store.path} has no observations")
    lat = np.asarray(store.column("latitude"), np.float64)[rows]
    lon = np.asarray(store.column("longitude"), np.float64)[rows]
    year = np.asarray(store.column("year"), np.float64)[rows]
    ids = np.asarray(store.observation_ids, dtype=object)[rows]
    for name, values in (("latitude", lat), ("longitude", lon), ("year", year)):
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(
                f"store {store.path}: {int(bad.sum())} of {len(rows)} observations have no {name} "
                f"(e.g. {_describe_ids(ids[bad].tolist(), 3)}): a split needs coordinates and dates for all"
            )
    bad = (np.abs(lat) > 90) | (np.abs(lon) > 180)
    if bad.any():
        raise ValueError(
            f"store {store.path}: {int(bad.sum())} observations have coordinates outside the globe "
            f"(e.g. {_describe_ids(ids[bad].tolist(), 3)})"
        )

    def optional(name: str) -> np.ndarray:
        if name not in columns:
            return np.full(len(rows), np.nan)
        return np.asarray(store.column(name), np.float64)[rows]

    return _Pool(
        rows=rows,
        ids=ids,
        lat=lat,
        lon=lon,
        year=year.astype(np.int64),
        gbif=np.asarray(store.column("gbif_id"), np.int64)[rows],
        image_index=np.asarray(store.column("image_index"), np.int64)[rows],
        taxon_id=np.asarray(store.column("taxon_id"), dtype=object)[rows],
        taxon_name=np.asarray(store.column("taxon_name"), dtype=object)[rows],
        month=optional("month"),
        day=optional("day"),
    )


def box_counts(lat: np.ndarray, lon: np.ndarray, size_km: float, chunk: int = 256) -> np.ndarray:
    """For each point, how many points (itself included) lie in the box of `size_km` centred on it, `(N,)`.

    Boxes as geo.box_around. Points are processed in latitude order so each chunk is compared only with the
    latitude band its boxes can reach.
    """
    lat = np.asarray(lat, np.float64)
    lon = np.asarray(lon, np.float64)
    order = np.argsort(lat, kind="stable")
    slat, slon = lat[order], lon[order]
    counts_sorted = np.zeros(len(lat), np.int64)
    half_lat = (size_km / 2) / geo.KM_PER_DEGREE
    for start in range(0, len(lat), chunk):
        c_lat, c_lon = slat[start : start + chunk], slon[start : start + chunk]
        lo = np.searchsorted(slat, c_lat[0] - half_lat - 1e-9, side="left")
        hi = np.searchsorted(slat, c_lat[-1] + half_lat + 1e-9, side="right")
        b_lat, b_lon = slat[lo:hi], slon[lo:hi]
        half_lon = (size_km / 2) / (geo.KM_PER_DEGREE * np.cos(np.radians(c_lat)))
        inside = (
            (b_lat[None, :] >= (c_lat - half_lat)[:, None])
            & (b_lat[None, :] <= (c_lat + half_lat)[:, None])
            & (b_lon[None, :] >= (c_lon - half_lon)[:, None])
            & (b_lon[None, :] <= (c_lon + half_lon)[:, None])
        )
        counts_sorted[start : start + chunk] = inside.sum(axis=1)
    counts = np.empty_like(counts_sorted)
    counts[order] = counts_sorted
    return counts


def _min_pairwise_km(lat: np.ndarray, lon: np.ndarray) -> float:
    if len(lat) < 2:
        return math.inf
    d = geo.geodesic_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    return float(d[~np.eye(len(lat), dtype=bool)].min())


def _draw(cand_lat, cand_lon, order, num_regions, min_distance_km) -> list[int]:
    """Keeps candidates in `order` >= min_distance_km from those kept; returns indices into candidates."""
    blocked = np.zeros(len(cand_lat), bool)
    kept: list[int] = []
    position = 0
    while len(kept) < num_regions:
        free = order[position:][~blocked[order[position:]]]
        if len(free) == 0:
            break
        c = int(free[0])
        position = int(np.flatnonzero(order == c)[0]) + 1
        kept.append(c)
        blocked |= geo.geodesic_km(cand_lat, cand_lon, cand_lat[c], cand_lon[c]) < min_distance_km
    return kept


def _farthest_draw(cand_lat, cand_lon, first, num_regions, min_distance_km) -> list[int]:
    kept = [int(first)]
    nearest = geo.geodesic_km(cand_lat, cand_lon, cand_lat[first], cand_lon[first])
    while len(kept) < num_regions:
        c = int(np.argmax(nearest))
        if nearest[c] < min_distance_km:
            break
        kept.append(c)
        nearest = np.minimum(nearest, geo.geodesic_km(cand_lat, cand_lon, cand_lat[c], cand_lon[c]))
    return kept


def choose_regions(
    pool: _Pool,
    *,
    num_regions: int,
    region_km: float,
    min_distance_km: float,
    region_share: float | None,
    seed: int,
) -> tuple[list[dict], dict]:
    """Chooses region centres (objective in the module docstring); returns `(regions, selection_record)`.

    Raises ValueError naming the constraints when they cannot all be met.
    """
    if num_regions == 0:
        return [], {"objective": "none (no spatial test regions)"}
    n = len(pool.lat)
    counts = box_counts(pool.lat, pool.lon, region_km)
    share = counts / n
    hard = region_share is not None
    target = float(region_share) if hard else float(np.median(share))
    lo, hi = target / SHARE_TOLERANCE, target * SHARE_TOLERANCE
    in_band = (share >= lo) & (share <= hi)
    # With --region-share the band is a constraint; by default it is a preference (in-band centres first).
    eligible = np.flatnonzero(in_band) if hard else np.arange(n)
    spacing = f"{num_regions} test regions of {region_km:g} km with centres >= {min_distance_km:g} km apart"
    band = f"holding {100 * lo:.2g}%..{100 * hi:.2g}% of the {n} candidate observations"
    constraints = f"{spacing}, each {band}" if hard else f"{spacing} among the {n} candidate observations"
    if len(eligible) == 0:
        raise ValueError(
            f"cannot place {constraints}: no observation's box holds such a share; change --region-share"
        )
    cand_lat, cand_lon = pool.lat[eligible], pool.lon[eligible]
    preferred = in_band[eligible]
    rng = np.random.default_rng([seed, 7])
    best: list[int] | None = None
    best_key = (math.inf, math.inf)
    most = 0
    for _ in range(REGION_DRAWS):
        order = rng.permutation(len(eligible))
        order = np.concatenate([order[preferred[order]], order[~preferred[order]]])
        kept = _draw(cand_lat, cand_lon, order, num_regions, min_distance_km)
        most = max(most, len(kept))
        if len(kept) == num_regions:
            # Fewest regions outside the share band first, then the most spread out.
            key = (int((~preferred[kept]).sum()), -_min_pairwise_km(cand_lat[kept], cand_lon[kept]))
            if key < best_key:
                best, best_key = kept, key
    method = "random"
    if best is None:
        first = int(rng.integers(len(eligible)))
        kept = _farthest_draw(cand_lat, cand_lon, first, num_regions, min_distance_km)
        most = max(most, len(kept))
        if len(kept) == num_regions:
            best, method = kept, "farthest_point"
            best_key = (int((~preferred[kept]).sum()), -_min_pairwise_km(cand_lat[kept], cand_lon[kept]))
    if best is None:
        raise ValueError(
            f"cannot place {constraints}: at most {most} fit ({len(eligible)} candidate centres); use fewer "
            "--regions, a smaller --min-distance-km or --region-km"
            + (", or another --region-share" if hard else "")
        )
    outside = int(best_key[0])
    if outside:
        log.warning(
            "%d of %d test regions hold a share of observations outside the preferred %.2g%%..%.2g%% (see "
            "split_strategy.spatial_split.selection); pass --region-share to make the range a constraint",
            outside,
            num_regions,
            100 * lo,
            100 * hi,
        )
    regions = []
    for k, c in enumerate(best):
        i = int(eligible[c])
        regions.append(
            {
                "region_id": k + 1,
                "center_gbif_id": int(pool.gbif[i]),
                "center_species": str(pool.taxon_name[i]),
                "center_lat": float(pool.lat[i]),
                "center_lng": float(pool.lon[i]),
                "bounds": geo.box_around(float(pool.lat[i]), float(pool.lon[i]), region_km),
                "size_km": float(region_km),
                "center_observation_id": str(pool.ids[i]),
                "box_share": 0.0,
            }
        )
        # Counted again with the exact box, so the share matches the assignment to the last observation.
        regions[-1]["box_share"] = float(geo.in_box(pool.lat, pool.lon, regions[-1]["bounds"]).mean())
    spread = -best_key[1]
    record = {
        "objective": (
            "over seeded random draws of centres >= min_distance_km apart, fewest boxes outside the share "
            "range, then the largest minimum geodesic distance between centres"
        ),
        "target_share": target,
        "target_share_source": "--region-share" if hard else "median box share over candidate centres",
        "share_range": [lo, hi],
        "share_range_is_constraint": hard,
        "regions_outside_share_range": outside,
        "candidate_centres": int(len(eligible)),
        "centres_in_share_range": int(in_band.sum()),
        "draws": REGION_DRAWS,
        "method": method,
        "min_center_distance_km": spread if math.isfinite(spread) else None,
    }
    return regions, record


def assign_reasons(
    lat: np.ndarray, lon: np.ndarray, year: np.ndarray, test_years, regions: list[dict], buffer_km: float
) -> tuple[np.ndarray, np.ndarray]:
    """The holdout assignment: `(split, reason)`, both `(N,)` object arrays (module docstring, steps 1-3)."""
    n = len(lat)
    split = np.full(n, "train", dtype=object)
    reason = np.full(n, "temporal_train", dtype=object)
    temporal = np.isin(year, np.asarray(list(test_years), np.int64))
    split[temporal] = "test"
    reason[temporal] = "temporal_test"
    for region in regions:
        inside = geo.in_box(lat, lon, region["bounds"])
        split[inside] = "test"
        reason[inside] = f"spatial_test_region_{region['region_id']}"
    if buffer_km > 0 and regions:
        train = np.flatnonzero(reason == "temporal_train")
        d = np.stack([geo.distance_to_box_km(lat[train], lon[train], r["bounds"]) for r in regions])
        nearest = d.argmin(axis=0)
        near = d[nearest, np.arange(len(train))] <= buffer_km
        ids = np.asarray([r["region_id"] for r in regions])
        split[train[near]] = "excluded"
        reason[train[near]] = np.char.add("buffer_region_", ids[nearest[near]].astype(str)).astype(object)
    return split, reason


# ----------------------------------------------------------------------------------------------------------
# Block cross-validation


def block_grid(lat: np.ndarray, lon: np.ndarray, block_km: float) -> dict:
    """The block grid of a pool: origin (south-west corner), cell sizes in degrees, reference latitude."""
    lat_ref = 0.5 * (float(lat.min()) + float(lat.max()))
    dlat, dlon = geo.degrees_for_km(block_km, lat_ref)
    return {
        "block_km": float(block_km),
        "origin_lat": float(lat.min()),
        "origin_lon": float(lon.min()),
        "lat_ref": lat_ref,
        "dlat_deg": float(dlat),
        "dlon_deg": float(dlon),
    }


def block_of(lat: np.ndarray, lon: np.ndarray, grid: dict) -> tuple[np.ndarray, np.ndarray]:
    """`(row, col)` int64 block indices of points on a grid from block_grid."""
    row = np.floor((np.asarray(lat) - grid["origin_lat"]) / grid["dlat_deg"]).astype(np.int64)
    col = np.floor((np.asarray(lon) - grid["origin_lon"]) / grid["dlon_deg"]).astype(np.int64)
    return row, col


def balance_blocks(counts: np.ndarray, num_folds: int, seed: int) -> np.ndarray:
    """Assigns blocks with `counts` observations to `num_folds` folds; returns `(B,)` int64 folds.

    Greedy in seeded random order (each block to the currently smallest fold), then moves and swaps between
    the largest and smallest folds while they shrink the gap. Guarantee: max - min fold count <= max(counts).
    """
    counts = np.asarray(counts, np.int64)
    rng = np.random.default_rng([seed, 11])
    fold = np.empty(len(counts), np.int64)
    load = np.zeros(num_folds, np.int64)
    for b in rng.permutation(len(counts)):
        f = int(np.argmin(load))
        fold[b] = f
        load[f] += counts[b]
    for _ in range(10 * len(counts) + 100):
        big, small = int(np.argmax(load)), int(np.argmin(load))
        gap = load[big] - load[small]
        if gap <= 0:
            break
        in_big, in_small = np.flatnonzero(fold == big), np.flatnonzero(fold == small)
        # Best move (delta = block size) or swap (delta = size difference): 0 < delta < gap, closest to gap/2.
        options = [(counts[b], b, -1) for b in in_big]
        if len(in_small):
            diff = counts[in_big][:, None] - counts[in_small][None, :]
            a, c = np.unravel_index(np.argmin(np.abs(diff - gap / 2)), diff.shape)
            options.append((diff[a, c], in_big[a], in_small[c]))
        options = [o for o in options if 0 < o[0] < gap]
        if not options:
            break
        delta, b, c = min(options, key=lambda o: (abs(o[0] - gap / 2), o[1], o[2]))
        fold[b] = small
        if c >= 0:
            fold[c] = big
        load[big] -= delta
        load[small] += delta
    return fold


def make_folds(
    lat: np.ndarray,
    lon: np.ndarray,
    *,
    num_folds: int,
    block_km: float,
    buffer_km: float,
    seed: int,
    reuse: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Block-CV folds: `(fold (N,) int64, buffer_bits (N,) int64, block_cv record)`.

    Bit f of buffer_bits[i] is set when observation i (not in fold f) lies within buffer_km of a fold-f block.
    `reuse` is a block_cv record from another file: its grid and block table are applied again (blocks it
    lacks are balanced into the folds after its own).
    """
    if reuse is not None:
        grid = {
            k: reuse[k] for k in ("block_km", "origin_lat", "origin_lon", "lat_ref", "dlat_deg", "dlon_deg")
        }
        num_folds, buffer_km, seed = int(reuse["num_folds"]), float(reuse["buffer_km"]), int(reuse["seed"])
    else:
        if not 2 <= num_folds <= MAX_FOLDS:
            raise ValueError(f"--folds must be in 2..{MAX_FOLDS}, got {num_folds}")
        if block_km <= 0:
            raise ValueError(f"--block-km must be > 0, got {block_km}")
        grid = block_grid(lat, lon, block_km)
    row, col = block_of(lat, lon, grid)
    keys, inverse, counts = np.unique(
        np.stack([row, col], 1), axis=0, return_inverse=True, return_counts=True
    )
    inverse = inverse.ravel()
    block_fold = np.full(len(keys), -1, np.int64)
    if reuse is not None:
        table = {(int(b["row"]), int(b["col"])): int(b["fold"]) for b in reuse["blocks"]}
        for k, (r, c) in enumerate(keys):
            block_fold[k] = table.get((int(r), int(c)), -1)
        new = np.flatnonzero(block_fold < 0)
        if len(new):
            log.warning(
                "%d block(s) hold observations the reused split had none in; balancing them in", len(new)
            )
            load = np.bincount(
                block_fold[block_fold >= 0], weights=counts[block_fold >= 0], minlength=num_folds
            )
            for k in new[np.argsort(-counts[new], kind="stable")]:
                f = int(np.argmin(load))
                block_fold[k] = f
                load[f] += counts[k]
    else:
        if len(keys) < num_folds:
            raise ValueError(
                f"only {len(keys)} block(s) of {block_km:g} km hold observations: "
                f"cannot make {num_folds} folds; use a smaller --block-km or fewer --folds"
            )
        block_fold = balance_blocks(counts, num_folds, seed)
    fold = block_fold[inverse]
    bits = np.zeros(len(lat), np.int64)
    if buffer_km > 0:
        # Blocks further than `reach` cells away are more than buffer_km away.
        side_min = min(
            grid["dlat_deg"] * 110.5,
            grid["dlon_deg"] * 111.2 * math.cos(math.radians(min(89.0, float(np.abs(lat).max()) + 1))),
        )
        reach = int(math.ceil(buffer_km / side_min))
        ncols = int(keys[:, 1].max() - keys[:, 1].min() + 2 * reach + 3)
        base_r, base_c = int(keys[:, 0].min()) - reach - 1, int(keys[:, 1].min()) - reach - 1
        flat_keys = (keys[:, 0] - base_r) * ncols + (keys[:, 1] - base_c)
        sort = np.argsort(flat_keys)
        sorted_keys = flat_keys[sort]
        for dr in range(-reach, reach + 1):
            for dc in range(-reach, reach + 1):
                if dr == 0 and dc == 0:
                    continue
                nr, nc = row + dr, col + dc
                flat = (nr - base_r) * ncols + (nc - base_c)
                pos = np.clip(np.searchsorted(sorted_keys, flat), 0, len(sorted_keys) - 1)
                exists = sorted_keys[pos] == flat
                other = np.where(exists, block_fold[sort[pos]], -1)
                cand = np.flatnonzero(exists & (other != fold))
                if len(cand) == 0:
                    continue
                south = grid["origin_lat"] + nr[cand] * grid["dlat_deg"]
                west = grid["origin_lon"] + nc[cand] * grid["dlon_deg"]
                d = geo.geodesic_km(
                    lat[cand],
                    lon[cand],
                    np.clip(lat[cand], south, south + grid["dlat_deg"]),
                    np.clip(lon[cand], west, west + grid["dlon_deg"]),
                )
                near = cand[d <= buffer_km]
                bits[near] |= np.left_shift(np.int64(1), other[near])
    record = {
        **grid,
        "num_folds": int(num_folds),
        "buffer_km": float(buffer_km),
        "seed": int(seed),
        "fold_numbering": "0..num_folds-1",
        "assignment": (
            "whole blocks to folds, balanced by observation count (greedy in seeded random order, then moves "
            "and swaps); max - min fold count <= the largest block's count"
        ),
        "blocks": [
            {"row": int(r), "col": int(c), "fold": int(f), "count": int(n)}
            for (r, c), f, n in zip(keys, block_fold, counts, strict=True)
        ],
    }
    return fold, bits, record


# ----------------------------------------------------------------------------------------------------------
# Statistics


def _quantiles(d: np.ndarray) -> dict:
    if len(d) == 0:
        return {"count": 0, "median_km": None, "p5_km": None, "min_km": None}
    return {
        "count": int(len(d)),
        "median_km": float(np.median(d)),
        "p5_km": float(np.percentile(d, 5)),
        "min_km": float(d.min()),
    }


def _nearest_train(pool: _Pool, query: np.ndarray, train: np.ndarray) -> np.ndarray:
    if not query.any() or not train.any():
        return np.zeros(0)
    d, _ = geo.nearest_km(pool.lat[query], pool.lon[query], pool.lat[train], pool.lon[train])
    return d


def _statistics(
    pool: _Pool, split: np.ndarray, reason: np.ndarray, regions: list[dict], years: list[int]
) -> dict:
    n = len(split)
    train, test, excluded = split == "train", split == "test", split == "excluded"
    temporal = reason == "temporal_test"
    spatial = np.char.startswith(reason.astype(str), "spatial_test_region_")
    names_train = set(pool.taxon_name[train].tolist())
    names_test = set(pool.taxon_name[test].tolist())
    unseen = sorted(names_test - names_train)
    stats = {
        "total_observations": int(n),
        "train_count": int(train.sum()),
        "test_count": int(test.sum()),
        "train_percentage": float(100 * train.sum() / n),
        "test_percentage": float(100 * test.sum() / n),
        "temporal_test_count": int(temporal.sum()),
        "spatial_test_count": int(spatial.sum()),
        "unique_species_train": len(names_train),
        "unique_species_test": len(names_test),
        "excluded_count": int(excluded.sum()),
        "excluded_percentage": float(100 * excluded.sum() / n),
        "buffer_excluded_count": int(np.char.startswith(reason.astype(str), "buffer_region_").sum()),
        "unseen_test_species": {"count": len(unseen), "names": unseen},
    }
    near_spatial = _nearest_train(pool, spatial, train)
    stats["nearest_train_distance_km"] = {
        "description": "geodesic distance from each test observation to its nearest training observation",
        "spatial_test": _quantiles(near_spatial),
        "temporal_test": _quantiles(_nearest_train(pool, temporal, train)),
    }
    per_region = {}
    for region in regions:
        k = region["region_id"]
        mine = reason == f"spatial_test_region_{k}"
        inside = geo.in_box(pool.lat, pool.lon, region["bounds"])
        per_region[str(k)] = {
            "test_count": int(mine.sum()),
            "in_test_years": int((mine & np.isin(pool.year, years)).sum()),
            "overridden_by_later_region": int((inside & ~mine).sum()),
            "buffer_excluded_count": int((reason == f"buffer_region_{k}").sum()),
            "species": len(set(pool.taxon_name[mine].tolist())),
            "nearest_train_distance_km": _quantiles(_nearest_train(pool, mine, train)),
        }
    stats["per_region"] = per_region
    per_year = {}
    for y in np.unique(pool.year):
        at = pool.year == y
        per_year[str(int(y))] = {s: int((at & (split == s)).sum()) for s in SUBSETS}
    stats["per_year"] = per_year
    names, counts = np.unique(reason.astype(str), return_counts=True)
    stats["per_reason"] = {str(r): int(c) for r, c in zip(names, counts, strict=True)}
    return stats


def _fold_statistics(pool: _Pool, fold: np.ndarray, bits: np.ndarray, record: dict) -> dict:
    k_folds = record["num_folds"]
    counts = np.bincount(fold, minlength=k_folds)
    largest = max(b["count"] for b in record["blocks"])
    per_fold = {}
    for k in range(k_folds):
        test = fold == k
        excluded = ~test & ((bits >> k) & 1).astype(bool)
        train = ~test & ~excluded
        unseen = set(pool.taxon_name[test].tolist()) - set(pool.taxon_name[train].tolist())
        per_fold[str(k)] = {
            "test_count": int(test.sum()),
            "train_count": int(train.sum()),
            "excluded_count": int(excluded.sum()),
            "blocks": sum(1 for b in record["blocks"] if b["fold"] == k),
            "unseen_test_species": len(unseen),
            "nearest_train_distance_km": _quantiles(_nearest_train(pool, test, train)),
        }
    return {
        "num_folds": k_folds,
        "num_blocks": len(record["blocks"]),
        "fold_counts": counts.tolist(),
        "max_minus_min": int(counts.max() - counts.min()),
        "largest_block_count": int(largest),
        "balance_tolerance": "max - min fold count <= largest block count",
        "balanced_within_tolerance": bool(counts.max() - counts.min() <= largest),
        "per_fold": per_fold,
    }


# ----------------------------------------------------------------------------------------------------------
# The payload


def _taxon_id_value(value):
    """The original wrote taxon_id as an int; keep ints where the id is numeric."""
    text = str(value)
    return int(text) if text.isdigit() else text


def _optional_int(value) -> int | None:
    return None if value is None or not np.isfinite(value) else int(value)


def _parse_test_years(test_years) -> list[int]:
    years = sorted({int(y) for y in (test_years or ())})
    return years


def make_split(
    store,
    *,
    test_years=(2025,),
    num_regions: int = 5,
    region_km: float = 10.0,
    min_distance_km: float = 15.0,
    buffer_km: float = 0.0,
    all_observations: bool = False,
    seed: int = 0,
    folds: int = 0,
    block_km: float = 20.0,
    region_share: float | None = None,
    regions_from: str | Path | Split | None = None,
    allow_missing: bool = False,
) -> dict:
    """Makes a split of `store` and returns the JSON payload (see the module docstring for the rules).

    Args:
      test_years: years whose observations are temporal test (may be empty).
      num_regions, region_km, min_distance_km: the spatial test regions (count, box side km, centre
        spacing km).
      buffer_km: training observations within this distance of a region box (or, with folds, of fold k's
        blocks for fold k) are excluded.
      all_observations: the pool is every observation, not only those with a vision embedding.
      seed: chooses region centres and breaks ties in fold balancing.
      folds, block_km: block cross-validation with `folds` folds of `block_km` square blocks (0: none).
      region_share: target share of the pool per region box (default: the median over candidate centres).
      regions_from: a split file (path or Split) whose test years, regions, buffer, pool and folds are applied
        again; the assignment of every id both share must come out the same (ValueError otherwise).
      allow_missing: with regions_from, drop ids of that file that this store's pool lacks instead of failing.
    """
    other: Split | None = None
    selection: dict
    reuse_cv = None
    if regions_from is not None:
        other = regions_from if isinstance(regions_from, Split) else load_split(regions_from)
        strategy = other.raw["split_strategy"]
        spatial_strategy = strategy.get("spatial_split", {})
        test_years = strategy.get("temporal_split", {}).get("test_years", [])
        regions = [dict(r) for r in other.regions]
        num_regions = len(regions)
        region_km = float(spatial_strategy.get("region_size_km", region_km))
        min_distance_km = float(spatial_strategy.get("min_distance_km", min_distance_km))
        buffer_km = float(spatial_strategy.get("buffer_km", 0.0))
        all_observations = spatial_strategy.get("candidate_pool", "vision") == "all"
        if folds == 0 and strategy.get("block_cv"):
            reuse_cv = strategy["block_cv"]
        selection = {"objective": f"regions reused from {other.path or 'another split file'}"}
    years = _parse_test_years(test_years)
    if num_regions < 0 or region_km <= 0 or min_distance_km < 0 or buffer_km < 0:
        raise ValueError(
            "need --regions >= 0, --region-km > 0, --min-distance-km >= 0, --buffer-km >= 0; "
            f"got {num_regions}, {region_km}, {min_distance_km}, {buffer_km}"
        )
    pool = _pool(store, all_observations)
    present = set(np.unique(pool.year).tolist())
    absent = [y for y in years if y not in present]
    if absent:
        raise ValueError(
            f"test year(s) {', '.join(map(str, absent))} have no observations in the pool of "
            f"{len(pool.rows)} (years present: {int(pool.year.min())}..{int(pool.year.max())})"
        )
    if other is None:
        regions, selection = choose_regions(
            pool,
            num_regions=num_regions,
            region_km=region_km,
            min_distance_km=min_distance_km,
            region_share=region_share,
            seed=seed,
        )
    split, reason = assign_reasons(pool.lat, pool.lon, pool.year, years, regions, buffer_km)
    for region in regions:
        region["observation_count"] = int((reason == f"spatial_test_region_{region['region_id']}").sum())

    fold = bits = cv_record = None
    if folds or reuse_cv is not None:
        fold, bits, cv_record = make_folds(
            pool.lat,
            pool.lon,
            num_folds=folds,
            block_km=block_km,
            buffer_km=buffer_km,
            seed=seed,
            reuse=reuse_cv,
        )

    regions_from_record = None
    if other is not None:
        regions_from_record = _compare_with(other, pool, reason, fold, allow_missing)

    stats = _statistics(pool, split, reason, regions, years)
    if cv_record is not None:
        stats["block_cv"] = _fold_statistics(pool, fold, bits, cv_record)
    if regions_from_record is not None:
        stats["regions_from"] = regions_from_record
    train = split == "train"
    provenance = store.manifest.get("provenance", {})
    payload = {
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
                "region_size_km": float(region_km),
                "min_distance_km": float(min_distance_km),
                "description": "Spatial carve-outs for testing geographic generalization",
                "buffer_km": float(buffer_km),
                "seed": int(seed),
                "candidate_pool": "all" if all_observations else "vision",
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
        "split_statistics": stats,
        "observation_mappings": {},
    }
    if cv_record is not None:
        payload["split_strategy"]["block_cv"] = cv_record
    mappings = payload["observation_mappings"]
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
    return payload


def _compare_with(other: Split, pool: _Pool, reason: np.ndarray, fold, allow_missing: bool) -> dict:
    """Checks that ids shared with `other` got the same reason (and fold); records membership changes."""
    index = {oid: i for i, oid in enumerate(pool.ids.tolist())}
    theirs = other.ids
    missing = [oid for oid in theirs if oid not in index]
    if missing and not allow_missing:
        raise ValueError(
            f"split file {other.path or '(in memory)'} names {len(missing)} observation id(s) that this "
            f"store's candidate pool lacks: {_describe_ids(missing)}; pass --allow-missing to drop them"
        )
    shared = [oid for oid in theirs if oid in index]
    different = [oid for oid in shared if other.reasons[oid] != reason[index[oid]]]
    if different:
        shown = ", ".join(f"{o}: {other.reasons[o]} -> {reason[index[o]]}" for o in different[:3])
        raise ValueError(
            f"re-applying {other.path or 'the split file'} gives {len(different)} of {len(shared)} shared "
            f"ids another reason ({shown}); this store's coordinates or years differ from the ones it was "
            "made from"
        )
    if fold is not None and other.folds is not None:
        moved = [oid for oid in shared if other.folds[oid] != fold[index[oid]]]
        if moved:
            raise ValueError(
                f"re-applying {other.path or 'the split file'} moves {len(moved)} shared ids to another fold "
                f"(e.g. {_describe_ids(moved, 3)})"
            )
    return {
        "source": str(other.path) if other.path is not None else None,
        "shared_observations": len(shared),
        "missing_from_store": len(missing),
        "new_observations": int(len(pool.ids) - len(shared)),
        "identical_reasons": True,
    }


def write_split(payload: dict, path: str | Path) -> None:
    """Writes a split payload as JSON, atomically (a temporary file, then a rename)."""
    from deepearth_jax.data.store import write_json_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, payload)


def summary(payload: dict) -> str:
    """A few lines for the terminal: counts, regions, diagnostics, folds."""
    s = payload["split_statistics"]
    lines = [
        f"pool {s['total_observations']}: train {s['train_count']} ({s['train_percentage']:.1f}%), test "
        f"{s['test_count']} ({s['test_percentage']:.1f}%: {s['temporal_test_count']} temporal + "
        f"{s['spatial_test_count']} spatial), excluded {s['excluded_count']} by buffers",
        f"species: {s['unique_species_train']} train, {s['unique_species_test']} test, "
        f"{s['unseen_test_species']['count']} only in test",
    ]
    for r in payload["test_spatial_regions"]:
        lines.append(
            f"  region {r['region_id']}: ({r['center_lat']:.4f}, {r['center_lng']:.4f}) "
            f"{r.get('observation_count', '?')} test observations"
        )
    near = s["nearest_train_distance_km"]["spatial_test"]
    if near["count"]:
        lines.append(
            f"nearest training observation to spatial test points: median {near['median_km']:.2f} km, "
            f"5th percentile {near['p5_km']:.2f} km"
        )
    cv = s.get("block_cv")
    if cv:
        lines.append(
            f"block CV: {cv['num_folds']} folds over {cv['num_blocks']} blocks, counts {cv['fold_counts']} "
            f"(max-min {cv['max_minus_min']} <= largest block {cv['largest_block_count']})"
        )
        for k, f in cv["per_fold"].items():
            d = f["nearest_train_distance_km"]
            lines.append(
                f"  fold {k}: test {f['test_count']}, train {f['train_count']}, "
                f"excluded {f['excluded_count']}, "
                f"nearest-train median {d['median_km'] or 0:.2f} km, p5 {d['p5_km'] or 0:.2f} km"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Command line


def _years_arg(text: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"test years must be integers like 2025 or 2024,2025, got {text!r}"
        ) from None


def add_split_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", type=Path, help="store directory")
    p.add_argument("--out", required=True, type=Path, help="split file to write (JSON)")
    p.add_argument("--plot", type=Path, help="also draw the split map to this PNG")
    p.add_argument(
        "--regions-from",
        type=Path,
        help="re-apply the test years, region bounds, buffer, pool and folds of this split file (ours or the "
        "original central_florida_split.json); the assignment must come out the same for every shared id",
    )
    p.add_argument(
        "--test-years",
        type=_years_arg,
        default=None,
        help="temporal test years, e.g. 2025 or 2024,2025 or none (default 2025)",
    )
    p.add_argument(
        "--regions", type=int, default=None, help="number of spatial test regions (default 5; 0 for none)"
    )
    p.add_argument(
        "--region-km", type=float, default=None, help="side of a square test region, km (default 10)"
    )
    p.add_argument(
        "--min-distance-km",
        type=float,
        default=None,
        help="minimum geodesic distance between region centres (default 15)",
    )
    p.add_argument(
        "--region-share",
        type=float,
        default=None,
        help="target share of the pool in one region box, e.g. 0.01: boxes must then hold half to twice this "
        "(default: prefer, not require, half to twice the median box share over candidate centres)",
    )
    p.add_argument(
        "--buffer-km",
        type=float,
        default=None,
        help="exclude training observations within this distance of a test region (or of fold k's blocks, "
        "for fold k) (default 0)",
    )
    p.add_argument(
        "--all-observations",
        action="store_true",
        default=None,
        help="split every observation, not only those with a vision embedding (the original split only "
        "those with one)",
    )
    p.add_argument(
        "--folds", type=int, default=0, help="spatial block cross-validation folds K (default 0: none)"
    )
    p.add_argument(
        "--block-km", type=float, default=20.0, help="side of a cross-validation block, km (default 20)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for region centres and fold balancing (default 0)"
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="with --regions-from: drop ids of that file this store lacks instead of failing",
    )


def run_split(args: argparse.Namespace) -> int:
    from deepearth_jax.data.store import open_store

    generation = {
        "--test-years": args.test_years,
        "--regions": args.regions,
        "--region-km": args.region_km,
        "--min-distance-km": args.min_distance_km,
        "--region-share": args.region_share,
        "--buffer-km": args.buffer_km,
        "--all-observations": args.all_observations,
    }
    if args.regions_from is not None:
        given = [flag for flag, value in generation.items() if value is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)} come(s) from {args.regions_from} with --regions-from; drop them"
            )
    if args.out.exists() and args.out.is_dir():
        raise ValueError(f"--out {args.out} is a directory; give a file name such as split.json")
    store = open_store(args.store)
    payload = make_split(
        store,
        test_years=[2025] if args.test_years is None else args.test_years,
        num_regions=5 if args.regions is None else args.regions,
        region_km=10.0 if args.region_km is None else args.region_km,
        min_distance_km=15.0 if args.min_distance_km is None else args.min_distance_km,
        buffer_km=0.0 if args.buffer_km is None else args.buffer_km,
        all_observations=bool(args.all_observations),
        seed=args.seed,
        folds=args.folds,
        block_km=args.block_km,
        region_share=args.region_share,
        regions_from=args.regions_from,
        allow_missing=args.allow_missing,
    )
    write_split(payload, args.out)
    print(summary(payload))
    print(f"wrote {args.out} ({len(payload['observation_mappings'])} observations)")
    if args.plot is not None:
        from deepearth_jax.data.split_map import plot_split

        plot_split(payload, args.plot)
        print(f"wrote {args.plot}")
    return 0
