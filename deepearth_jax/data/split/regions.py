"""Choosing the spatial test regions (box centres) and assigning the holdout split's reasons."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from deepearth_jax.data import geo
from deepearth_jax.data.split.pool import Pool
from deepearth_jax.data.split.reasons import TEMPORAL_TEST, TEMPORAL_TRAIN, Kind, Reason, of_kind
from deepearth_jax.errors import SplitError

log = logging.getLogger(__name__)

REGION_DRAWS = 16  # seeded random draws of region centres; the most spread out one wins
SHARE_TOLERANCE = 2.0  # a region's box holds between target/2 and target*2 of the pool


def box_counts(lat: np.ndarray, lon: np.ndarray, size_km: float) -> np.ndarray:
    """For each point, how many points (itself included) lie in the box of `size_km` centred on it, `(N,)`.

    Boxes as geo.box_around, edges included, with exactly its floating-point bounds. Exact orthogonal range
    counting in O(N log^2 N) time and O(N) memory whatever the box size: points sorted by latitude make a
    box's latitude band an index range [a, b), and the count of longitudes in range within a prefix [0, p)
    is summed over the aligned power-of-two blocks that make up the prefix, each sorted once per level.
    """
    lat = np.asarray(lat, np.float64)
    lon = np.asarray(lon, np.float64)
    n = len(lat)
    order = np.argsort(lat, kind="stable")
    slat, slon = lat[order], lon[order]
    half_lat = (size_km / 2) / geo.KM_PER_DEGREE
    half_lon = (size_km / 2) / (geo.KM_PER_DEGREE * np.cos(np.radians(slat)))
    a = np.searchsorted(slat, slat - half_lat, side="left")  # first point with lat >= south
    b = np.searchsorted(slat, slat + half_lat, side="right")  # past the last with lat <= north
    # Longitudes as ranks among the distinct values: lon in [west, east] <=> rank in [r_lo, r_hi).
    distinct = np.unique(slon)
    rank = np.searchsorted(distinct, slon)
    r_lo = np.searchsorted(distinct, slon - half_lon, side="left")
    r_hi = np.searchsorted(distinct, slon + half_lon, side="right")
    counts_sorted = np.zeros(n, np.int64)
    stride = len(distinct) + 1  # keys block * stride + rank sort blocks apart, ranks within a block
    level = 0
    while (1 << level) <= n:
        size = 1 << level
        blocks = -(-n // size)
        padded = np.full(blocks * size, len(distinct), np.int64)  # padding ranks are never counted
        padded[:n] = rank
        keys = (np.sort(padded.reshape(blocks, size), axis=1) + stride * np.arange(blocks)[:, None]).ravel()
        for prefix, sign in ((b, 1), (a, -1)):
            has = np.flatnonzero((prefix >> level) & 1)  # prefix [0, p) holds block (p >> level) - 1
            block = (prefix[has] >> level) - 1
            base = block * stride
            within = _sorted_search(keys, base + r_hi[has]) - _sorted_search(keys, base + r_lo[has])
            counts_sorted[has] += sign * within
        level += 1
    counts = np.empty_like(counts_sorted)
    counts[order] = counts_sorted
    return counts


def _sorted_search(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """np.searchsorted(keys, values), the values visited in sorted order (binary searches that follow each
    other through memory: several times faster on large random queries)."""
    if len(values) < 4096:
        return np.searchsorted(keys, values)
    order = np.argsort(values)
    out = np.empty(len(values), np.int64)
    out[order] = np.searchsorted(keys, values[order])
    return out


def _min_pairwise_km(lat: np.ndarray, lon: np.ndarray) -> float:
    if len(lat) < 2:
        return math.inf
    d = geo.geodesic_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    return float(d[~np.eye(len(lat), dtype=bool)].min())


MIN_KM_PER_DEGREE_LAT = 110.0  # below the shortest meridian degree (110.57 km): a safe latitude band


def _draw(cand_lat, cand_lon, order, num_regions, min_distance_km, by_lat=None) -> list[int]:
    """Keeps candidates in `order` >= min_distance_km from those kept; returns indices into candidates.

    Only candidates in the latitude band that min_distance_km can reach are measured (`by_lat`: the
    candidates in latitude order, computed once per search), so a draw costs O(band), not O(N), per region.
    """
    by_lat = np.argsort(cand_lat, kind="stable") if by_lat is None else by_lat
    sorted_lat = cand_lat[by_lat]
    reach = min_distance_km / MIN_KM_PER_DEGREE_LAT
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
        lo = np.searchsorted(sorted_lat, cand_lat[c] - reach, side="left")
        hi = np.searchsorted(sorted_lat, cand_lat[c] + reach, side="right")
        band = by_lat[lo:hi]  # beyond it every candidate is farther than min_distance_km
        d = geo.geodesic_km(cand_lat[band], cand_lon[band], cand_lat[c], cand_lon[c])
        blocked[band] |= (d < min_distance_km) | (d <= 0.0)  # never two regions on one point
    return kept


def _farthest_draw(cand_lat, cand_lon, first, num_regions, min_distance_km) -> list[int]:
    kept = [int(first)]
    nearest = geo.geodesic_km(cand_lat, cand_lon, cand_lat[first], cand_lon[first])
    while len(kept) < num_regions:
        c = int(np.argmax(nearest))
        if nearest[c] < min_distance_km or nearest[c] <= 0.0:
            break
        kept.append(c)
        nearest = np.minimum(nearest, geo.geodesic_km(cand_lat, cand_lon, cand_lat[c], cand_lon[c]))
    return kept


@dataclass(frozen=True)
class _ShareBand:
    """The share of the pool a region box should hold: `lo..hi` around `target`, a constraint when `hard`."""

    target: float
    lo: float
    hi: float
    in_band: np.ndarray  # (N,) bool: whose box holds a share in the band
    hard: bool


class RegionsDoNotFit(SplitError):
    """choose_regions could not place every region; `most` is how many one draw placed."""

    def __init__(self, most: int, message: str):
        super().__init__(message)
        self.most = most


def _share_band(pool: Pool, region_km: float, region_share: float | None) -> _ShareBand:
    share = box_counts(pool.lat, pool.lon, region_km) / len(pool.lat)
    hard = region_share is not None
    target = float(region_share) if hard else float(np.median(share))
    lo, hi = target / SHARE_TOLERANCE, target * SHARE_TOLERANCE
    return _ShareBand(target, lo, hi, (share >= lo) & (share <= hi), hard)


def _search(cand_lat, cand_lon, preferred, num_regions, min_distance_km, seed, stream):
    """Seeded random draws, then one farthest-point draw if none placed every region.

    Returns `(best candidate indices or None, key (outside band, -spread), method, most placed)`.
    """
    rng = np.random.default_rng([seed, stream])
    by_lat = np.argsort(cand_lat, kind="stable")
    best: list[int] | None = None
    best_key = (math.inf, math.inf)
    most = 0
    for _ in range(REGION_DRAWS):
        order = rng.permutation(len(cand_lat))
        order = np.concatenate([order[preferred[order]], order[~preferred[order]]])
        kept = _draw(cand_lat, cand_lon, order, num_regions, min_distance_km, by_lat)
        most = max(most, len(kept))
        if len(kept) == num_regions:
            # Fewest regions outside the share band first, then the most spread out.
            key = (int((~preferred[kept]).sum()), -_min_pairwise_km(cand_lat[kept], cand_lon[kept]))
            if key < best_key:
                best, best_key = kept, key
    method = "random"
    if best is None:
        first = int(rng.integers(len(cand_lat)))
        kept = _farthest_draw(cand_lat, cand_lon, first, num_regions, min_distance_km)
        most = max(most, len(kept))
        if len(kept) == num_regions:
            best, method = kept, "farthest_point"
            best_key = (int((~preferred[kept]).sum()), -_min_pairwise_km(cand_lat[kept], cand_lon[kept]))
    return best, best_key, method, most


def _region_records(pool: Pool, centres: np.ndarray, region_km: float) -> list[dict]:
    """The test_spatial_regions entries of boxes centred on pool observations `centres`, ids from 1."""
    regions = []
    for k, i in enumerate(centres):
        i = int(i)
        region = {
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
        # Counted again with the exact box, so the share matches the assignment to the last observation.
        region["box_share"] = float(geo.in_box(pool.lat, pool.lon, region["bounds"]).mean())
        regions.append(region)
    return regions


def choose_regions(
    pool: Pool,
    *,
    num_regions: int,
    region_km: float,
    min_distance_km: float,
    region_share: float | None,
    seed: int,
    what: str = "test",
    stream: int = 7,
) -> tuple[list[dict], dict]:
    """Chooses region centres (objective in the package docstring); returns `(regions, selection_record)`.

    `what` names the regions in messages ("test" or "validation"); `stream` separates their random draws.
    Raises ValueError naming the constraints when they cannot all be met.
    """
    if num_regions == 0:
        return [], {"objective": f"none (no spatial {what} regions)"}
    n = len(pool.lat)
    band = _share_band(pool, region_km, region_share)
    # With --region-share the band is a constraint; by default it is a preference (in-band centres first).
    eligible = np.flatnonzero(band.in_band) if band.hard else np.arange(n)
    spacing = f"{num_regions} {what} regions of {region_km:g} km with centres >= {min_distance_km:g} km apart"
    share_text = f"holding {100 * band.lo:.2g}%..{100 * band.hi:.2g}% of the {n} candidate observations"
    constraints = (
        f"{spacing}, each {share_text}" if band.hard else f"{spacing} among the {n} candidate observations"
    )
    if len(eligible) == 0:
        raise SplitError(
            f"cannot place {constraints}: no observation's box holds such a share; change --region-share"
        )
    preferred = band.in_band[eligible]
    best, best_key, method, most = _search(
        pool.lat[eligible], pool.lon[eligible], preferred, num_regions, min_distance_km, seed, stream
    )
    if best is None:
        raise RegionsDoNotFit(
            most,
            f"cannot place {constraints}: at most {most} fit ({len(eligible)} candidate centres); use fewer "
            f"{'--regions' if what == 'test' else '--validation-regions'}, a smaller --min-distance-km or "
            "--region-km" + (", or another --region-share" if band.hard else ""),
        )
    outside = int(best_key[0])
    if outside:
        log.warning(
            "%d of %d %s regions hold a share of observations outside the preferred %.2g%%..%.2g%% (see "
            "split_strategy.%s.selection); pass --region-share to make the range a constraint",
            outside,
            num_regions,
            what,
            100 * band.lo,
            100 * band.hi,
            "spatial_split" if what == "test" else "validation",
        )
    regions = _region_records(pool, eligible[best], region_km)
    spread = -best_key[1]
    record = {
        "objective": (
            "over seeded random draws of centres >= min_distance_km apart, fewest boxes outside the share "
            "range, then the largest minimum geodesic distance between centres"
        ),
        "target_share": band.target,
        "target_share_source": "--region-share" if band.hard else "median box share over candidate centres",
        "share_range": [band.lo, band.hi],
        "share_range_is_constraint": band.hard,
        "regions_outside_share_range": outside,
        "candidate_centres": int(len(eligible)),
        "centres_in_share_range": int(band.in_band.sum()),
        "draws": REGION_DRAWS,
        "method": method,
        "min_center_distance_km": spread if math.isfinite(spread) else None,
    }
    return regions, record


def assign_reasons(
    lat: np.ndarray, lon: np.ndarray, year: np.ndarray, test_years, regions: list[dict], buffer_km: float
) -> tuple[np.ndarray, np.ndarray]:
    """The holdout assignment: `(split, reason)`, `(N,)` object arrays of subset names and Reason.

    Temporal first, then each region in order overrides, buffers last (package docstring, steps 1-3).
    """
    n = len(lat)
    split = np.full(n, "train", dtype=object)
    reason = np.full(n, TEMPORAL_TRAIN, dtype=object)
    temporal = np.isin(year, np.asarray(list(test_years), np.int64))
    split[temporal] = "test"
    reason[temporal] = TEMPORAL_TEST
    for region in regions:
        inside = geo.in_box(lat, lon, region["bounds"])
        split[inside] = "test"
        reason[inside] = Reason(Kind.SPATIAL_TEST, int(region["region_id"]))
    if buffer_km > 0 and regions:
        train = np.flatnonzero(of_kind(reason, Kind.TEMPORAL_TRAIN))
        distance, nearest = near_boxes(lat[train], lon[train], regions)
        near = distance <= buffer_km
        buffers = [Reason(Kind.BUFFER, int(r["region_id"])) for r in regions]
        split[train[near]] = "excluded"
        for i, k in zip(train[near], nearest[near], strict=True):
            reason[i] = buffers[k]
    return split, reason


def near_boxes(lat, lon, regions: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """`(distance (N,) km, nearest (N,) int64)`: distance to the nearest region box and that box's index (the
    first of equals). One pass per region, so memory stays `O(N)` however many regions."""
    best = np.full(len(lat), np.inf)
    nearest = np.zeros(len(lat), np.int64)
    for k, region in enumerate(regions):
        d = geo.distance_to_box_km(lat, lon, region["bounds"])
        closer = d < best
        best[closer] = d[closer]
        nearest[closer] = k
    return best, nearest


def count_observations(regions: list[dict], reason: np.ndarray, kind: Kind, what: str, fresh: bool) -> None:
    """Records each region's observation count; a freshly chosen region left empty is refused."""
    for region in regions:
        region["observation_count"] = int(of_kind(reason, kind, int(region["region_id"])).sum())
        if fresh and region["observation_count"] == 0:
            raise SplitError(
                f"{what} region {region['region_id']} holds no observation (later regions' boxes cover it); "
                "use a larger --min-distance-km"
            )
