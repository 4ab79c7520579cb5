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
from scipy.spatial import cKDTree

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


def nearest_km(
    query_lat, query_lon, ref_lat, ref_lon, *, chunk: int = 65536, candidates: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """For each query point, the geodesic distance (km) to its nearest reference point and that point's index.

    Exact (up to `geodesic_km`'s accuracy), in O((Q + R) log R): a cKDTree over the references' Earth-centred
    coordinates gives each query its `candidates` nearest by straight-line (chord) distance, which never
    exceeds the geodesic one; the nearest of them geodesically is the answer unless the farthest candidate's
    chord is within that distance, and then (rarely) the query is asked again with 4x the candidates. Of
    equally near points, the first in reference order among those measured.
    Queries go in chunks of `chunk` rows (bounded memory). Returns `(distance (Q,) float64, index (Q,)
    int64)`; raises ValueError when there are no reference points.
    """
    query_lat = np.asarray(query_lat, np.float64).ravel()
    query_lon = np.asarray(query_lon, np.float64).ravel()
    ref_lat = np.asarray(ref_lat, np.float64).ravel()
    ref_lon = np.asarray(ref_lon, np.float64).ravel()
    if len(ref_lat) == 0:
        raise ValueError("nearest neighbour search needs at least one reference point")
    tree = cKDTree(ecef_km(ref_lat, ref_lon))
    distance = np.full(len(query_lat), np.inf)
    index = np.full(len(query_lat), -1, np.int64)
    for start in range(0, len(query_lat), chunk):
        rows = np.arange(start, min(start + chunk, len(query_lat)))
        k = min(int(candidates), len(ref_lat))
        while len(rows):
            d, i, sure = _nearest_among(tree, query_lat[rows], query_lon[rows], ref_lat, ref_lon, k)
            distance[rows[sure]], index[rows[sure]] = d[sure], i[sure]
            rows, k = rows[~sure], min(4 * k, len(ref_lat))
    return distance, index


def _nearest_among(tree, lat, lon, ref_lat, ref_lon, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The geodesically nearest of each query's k chord-nearest references: `(km, index, sure)`; `sure`
    where no other reference can be closer (see nearest_km)."""
    chord, near = tree.query(ecef_km(lat, lon), k=k, workers=-1)
    chord, near = chord.reshape(len(lat), k), near.reshape(len(lat), k).astype(np.int64)
    d = geodesic_km(lat[:, None], lon[:, None], ref_lat[near], ref_lon[near])
    first = np.lexsort((near, d), axis=1)[:, :1]  # the nearest, equal distances by reference order
    best_d, best_i = np.take_along_axis(d, first, 1)[:, 0], np.take_along_axis(near, first, 1)[:, 0]
    # A reference not among the k is farther by chord than the k-th, so it cannot be closer geodesically
    # when that chord exceeds the best geodesic distance (+ a metre of rounding slack); nothing is closer
    # than 0. Otherwise the caller asks again with more candidates.
    sure = (k == len(ref_lat)) | (chord[:, -1] > best_d + 1e-3) | (best_d == 0.0)
    return best_d, best_i, sure
