"""Distances and boxes on the WGS84 ellipsoid, vectorised over numpy arrays.

Latitudes and longitudes are in degrees, distances in km. `geodesic_km` uses Lambert's formula for the
ellipsoid (one pass, no iteration): its relative error against Karney's exact geodesics (geographiclib) is
below 1e-4 up to a few thousand km, tested in tests/test_geo.py; it is not meant for near-antipodal points.

Boxes are built as the original DeepEarth split did (DATA.md §3): a box of side `size_km` centred on
(lat, lon) has half-sides `size_km / 2 / 111` degrees of latitude and `size_km / 2 / (111 cos(lat))` degrees
of longitude, and a point is inside when south <= lat <= north and west <= lon <= east (inclusive).
"""

from __future__ import annotations

import numpy as np

WGS84_A_KM = 6378.137  # semi-major axis
WGS84_F = 1.0 / 298.257223563  # flattening
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)  # first eccentricity squared
KM_PER_DEGREE = 111.0  # the original split's conversion, kept so that boxes are comparable


def geodesic_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Geodesic distance on WGS84 between points (broadcast like numpy), km, float64.

    Lambert's formula: great-circle angle between the parametric (reduced) latitudes, corrected for the
    flattening to first order. Agrees with geographiclib to better than 0.01% below a few thousand km.
    """
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(v, np.float64)) for v in (lat1, lon1, lat2, lon2))
    beta1 = np.arctan((1.0 - WGS84_F) * np.tan(lat1))
    beta2 = np.arctan((1.0 - WGS84_F) * np.tan(lat2))
    p = 0.5 * (beta1 + beta2)
    q = 0.5 * (beta2 - beta1)
    # Haversine form of the central angle: well conditioned at short distances.
    h = np.sin(q) ** 2 + np.cos(beta1) * np.cos(beta2) * np.sin(0.5 * (lon2 - lon1)) ** 2
    h = np.clip(h, 0.0, 1.0)
    sigma = 2.0 * np.arcsin(np.sqrt(h))
    sin_sigma = np.sin(sigma)
    sin_half2 = h  # sin^2(sigma / 2)
    cos_half2 = 1.0 - h  # cos^2(sigma / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (sigma - sin_sigma) * np.sin(p) ** 2 * np.cos(q) ** 2 / cos_half2
        y = (sigma + sin_sigma) * np.cos(p) ** 2 * np.sin(q) ** 2 / sin_half2
    x = np.where(cos_half2 > 0, x, 0.0)
    y = np.where(sin_half2 > 0, y, 0.0)
    return WGS84_A_KM * (sigma - 0.5 * WGS84_F * (x + y))


def degrees_for_km(km, lat) -> tuple[np.ndarray, np.ndarray]:
    """`(dlat, dlon)` in degrees spanned by `km` at latitude `lat`, with the original's 111 km per degree."""
    km = np.asarray(km, np.float64)
    lat = np.asarray(lat, np.float64)
    return km / KM_PER_DEGREE, km / (KM_PER_DEGREE * np.cos(np.radians(lat)))


def box_around(lat: float, lon: float, size_km: float) -> dict[str, float]:
    """The square of side `size_km` centred on (lat, lon), exactly as the original split built it.

    Returns `{"north", "south", "east", "west"}` in degrees.
    """
    lat_offset = (size_km / 2) / KM_PER_DEGREE
    lon_offset = (size_km / 2) / (KM_PER_DEGREE * np.cos(np.radians(lat)))
    return {
        "north": float(lat + lat_offset),
        "south": float(lat - lat_offset),
        "east": float(lon + lon_offset),
        "west": float(lon - lon_offset),
    }


def in_box(lat, lon, bounds: dict) -> np.ndarray:
    """Whether each point lies in the box (edges included, as the original), bool, shaped like lat."""
    lat = np.asarray(lat, np.float64)
    lon = np.asarray(lon, np.float64)
    return (
        (lat >= bounds["south"])
        & (lat <= bounds["north"])
        & (lon >= bounds["west"])
        & (lon <= bounds["east"])
    )


def distance_to_box_km(lat, lon, bounds: dict) -> np.ndarray:
    """Geodesic distance from each point to the nearest point of a lat/lon box, km (0 inside).

    The nearest point is taken as the point clamped into the box; for boxes of tens of km the meridian
    convergence this ignores changes distances by far less than a metre.
    """
    lat = np.asarray(lat, np.float64)
    lon = np.asarray(lon, np.float64)
    near_lat = np.clip(lat, bounds["south"], bounds["north"])
    near_lon = np.clip(lon, bounds["west"], bounds["east"])
    return geodesic_km(lat, lon, near_lat, near_lon)


def ecef_km(lat, lon) -> np.ndarray:
    """Earth-centred Cartesian coordinates on the WGS84 ellipsoid surface, `(..., 3)` km."""
    lat = np.radians(np.asarray(lat, np.float64))
    lon = np.radians(np.asarray(lon, np.float64))
    n = WGS84_A_KM / np.sqrt(1.0 - WGS84_E2 * np.sin(lat) ** 2)
    return np.stack(
        [n * np.cos(lat) * np.cos(lon), n * np.cos(lat) * np.sin(lon), n * (1.0 - WGS84_E2) * np.sin(lat)],
        axis=-1,
    )


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """Spreads the low 16 bits of v so that bit i moves to bit 2i (for Morton codes)."""
    v = v.astype(np.uint64) & np.uint64(0xFFFF)
    for shift, mask in ((8, 0x00FF00FF), (4, 0x0F0F0F0F), (2, 0x33333333), (1, 0x55555555)):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def _morton_order(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """An order of the points along a Z-curve, so that consecutive points are close together."""

    def quantize(x: np.ndarray) -> np.ndarray:
        span = max(float(x.max() - x.min()), 1e-12)
        return np.floor((x - x.min()) / span * 65535).astype(np.int64)

    return np.argsort(
        _spread_bits(quantize(lat)) | (_spread_bits(quantize(lon)) << np.uint64(1)), kind="stable"
    )


def _nearest_brute(q_ll, q_xyz, r_ll, r_xyz, r_sq) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest neighbours of a few queries among some references (see nearest_km)."""
    chord_sq = (q_xyz**2).sum(axis=1)[:, None] + r_sq[None, :] - 2.0 * (q_xyz @ r_xyz.T)
    np.maximum(chord_sq, 0.0, out=chord_sq)
    best = chord_sq.argmin(axis=1)
    bound = geodesic_km(q_ll[0], q_ll[1], r_ll[0][best], r_ll[1][best])
    # Candidates: chord <= bound (+ a metre of slack for rounding).
    cand_q, cand_r = np.nonzero(chord_sq <= ((bound + 1e-3) ** 2)[:, None])
    d = geodesic_km(q_ll[0][cand_q], q_ll[1][cand_q], r_ll[0][cand_r], r_ll[1][cand_r])
    best_d = bound.copy()
    best_i = best.astype(np.int64)
    order = np.lexsort((d, cand_q))  # per query, smallest distance first
    first = np.ones(len(order), bool)
    first[1:] = cand_q[order][1:] != cand_q[order][:-1]
    sel = order[first]
    better = d[sel] < best_d[cand_q[sel]]
    best_d[cand_q[sel][better]] = d[sel][better]
    best_i[cand_q[sel][better]] = cand_r[sel][better]
    return best_d, best_i


def nearest_km(
    query_lat, query_lon, ref_lat, ref_lon, *, chunk: int = 64, start_km: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """For each query point, the geodesic distance (km) to its nearest reference point and that point's index.

    Exact (up to `geodesic_km`'s accuracy). Queries go in chunks of nearby points (a Z-curve order); each
    chunk searches the reference points inside its bounding box (Earth-centred coordinates) grown by a
    margin m,
    starting at `start_km` and doubling for the queries whose nearest point found lies further than m (only
    then could a closer one lie outside). Within that set, the straight-line (chord) distance never exceeds
    the geodesic one, so the chord nearest neighbour's geodesic distance bounds the search, and every point
    whose chord distance is within that bound is measured geodesically. Returns `(distance (Q,) float64,
    index (Q,) int64)`; raises ValueError when there are no reference points.
    """
    query_lat = np.asarray(query_lat, np.float64).ravel()
    query_lon = np.asarray(query_lon, np.float64).ravel()
    ref_lat = np.asarray(ref_lat, np.float64).ravel()
    ref_lon = np.asarray(ref_lon, np.float64).ravel()
    if len(ref_lat) == 0:
        raise ValueError("nearest neighbour search needs at least one reference point")
    q_xyz = ecef_km(query_lat, query_lon)
    r_xyz = ecef_km(ref_lat, ref_lon)
    # Centre the coordinates so that |a|^2 + |b|^2 - 2 a.b does not cancel catastrophically.
    centre = r_xyz.mean(axis=0)
    q_xyz -= centre
    r_xyz -= centre
    distance = np.full(len(query_lat), np.inf)
    index = np.full(len(query_lat), -1, np.int64)
    if len(query_lat) == 0:
        return distance, index
    order = _morton_order(query_lat, query_lon)
    by_x = np.argsort(r_xyz[:, 0], kind="stable")  # references sorted on x: a box is a slice, then a filter
    sorted_x = r_xyz[by_x, 0]
    margin_hint = float(start_km)
    for start in range(0, len(order), chunk):
        pending = order[start : start + chunk]
        # Neighbouring chunks along the Z-curve have similar distances: start from the last one's.
        margin = max(float(start_km), margin_hint)
        found = []
        while len(pending):
            q = q_xyz[pending]
            lo, hi = q.min(axis=0) - margin, q.max(axis=0) + margin
            a, b = np.searchsorted(sorted_x, lo[0], "left"), np.searchsorted(sorted_x, hi[0], "right")
            near_x = by_x[a:b]
            inside = near_x[((r_xyz[near_x, 1:] >= lo[1:]) & (r_xyz[near_x, 1:] <= hi[1:])).all(axis=1)]
            everything = len(inside) == len(ref_lat)
            if len(inside):
                r = r_xyz[inside]
                d, i = _nearest_brute(
                    (query_lat[pending], query_lon[pending]),
                    q,
                    (ref_lat[inside], ref_lon[inside]),
                    r,
                    (r**2).sum(axis=1),
                )
                # Found within the margin: no point outside the box can be closer.
                done = np.ones(len(pending), bool) if everything else d <= margin
                distance[pending[done]] = d[done]
                index[pending[done]] = inside[i[done]]
                found.append(d[done])
                pending = pending[~done]
            margin *= 2.0
        margin_hint = float(np.concatenate(found).max()) if found else margin_hint
    return distance, index
