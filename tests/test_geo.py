"""Distances and boxes on WGS84 against geographiclib (Karney) and hand-computed cases."""

import math

import numpy as np
import pytest
from conftest import test_seed
from geographiclib.geodesic import Geodesic

from deepearth_jax.data import geo


@pytest.mark.parametrize("scale_deg", [1e-4, 0.01, 0.1, 1.0, 10.0])
def test_geodesic_agrees_with_geographiclib(scale_deg):
    rng = np.random.default_rng(test_seed())
    lat1 = rng.uniform(-70, 70, 200)
    lon1 = rng.uniform(-180, 180, 200)
    lat2 = np.clip(lat1 + rng.normal(0, scale_deg, 200), -80, 80)
    lon2 = lon1 + rng.normal(0, scale_deg, 200)
    ours = geo.geodesic_km(lat1, lon1, lat2, lon2)
    ref = np.array(
        [
            Geodesic.WGS84.Inverse(a, b, c, d)["s12"] / 1000
            for a, b, c, d in zip(lat1, lon1, lat2, lon2, strict=True)
        ]
    )
    assert ours.shape == (200,)
    # The brief asks for 0.1%; Lambert's formula does ~100x better.
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-9)


def test_geodesic_hand_cases():
    # One degree of latitude from the equator (meridian arc) and of longitude along it, WGS84 textbook values.
    assert geo.geodesic_km(0, 0, 1, 0) == pytest.approx(110.574, abs=1e-3)
    assert geo.geodesic_km(0, 0, 0, 1) == pytest.approx(111.320, abs=1e-3)
    assert geo.geodesic_km(28.5, -81.3, 28.5, -81.3) == 0.0
    # Symmetric and broadcasting.
    d = geo.geodesic_km(28.0, -81.0, np.array([28.1, 28.2]), -81.0)
    assert d.shape == (2,) and d[1] == pytest.approx(2 * d[0], rel=1e-3)
    assert geo.geodesic_km(28.1, -81.0, 28.0, -81.0) == pytest.approx(d[0], rel=1e-12)


def test_box_around_is_the_original_formula():
    lat, lon = 28.4, -81.2
    box = geo.box_around(lat, lon, 10.0)
    assert box["north"] == lat + 5 / 111.0
    assert box["south"] == lat - 5 / 111.0
    assert box["east"] == lon + 5 / (111.0 * math.cos(math.radians(lat)))
    assert box["west"] == lon - 5 / (111.0 * math.cos(math.radians(lat)))
    # Edges are inside, as the original's >= / <= comparisons.
    inside = geo.in_box(
        [box["north"], box["south"], lat, lat, box["north"] + 1e-9],
        [lon, lon, box["east"], box["west"], lon],
        box,
    )
    assert inside.tolist() == [True, True, True, True, False]


def test_distance_to_box():
    box = geo.box_around(28.4, -81.2, 10.0)
    assert geo.distance_to_box_km(28.4, -81.2, box) == 0.0
    north = geo.distance_to_box_km(box["north"] + 0.05, -81.2, box)
    assert north == pytest.approx(
        Geodesic.WGS84.Inverse(box["north"] + 0.05, -81.2, box["north"], -81.2)["s12"] / 1e3
    )
    corner = geo.distance_to_box_km(box["south"] - 0.03, box["west"] - 0.03, box)
    ref = (
        Geodesic.WGS84.Inverse(box["south"] - 0.03, box["west"] - 0.03, box["south"], box["west"])["s12"]
        / 1e3
    )
    assert corner == pytest.approx(ref, rel=1e-5)


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(test_seed())
    ref_lat, ref_lon = rng.uniform(28, 29, 700), rng.uniform(-82, -81, 700)
    ref_lat[5], ref_lon[5] = ref_lat[4], ref_lon[4]  # a duplicate point
    q_lat, q_lon = rng.uniform(27.9, 29.1, 300), rng.uniform(-82.1, -80.9, 300)
    q_lat[0], q_lon[0] = ref_lat[10], ref_lon[10]  # a query on a reference point
    d, i = geo.nearest_km(q_lat, q_lon, ref_lat, ref_lon, chunk=64)
    full = geo.geodesic_km(q_lat[:, None], q_lon[:, None], ref_lat[None, :], ref_lon[None, :])
    np.testing.assert_allclose(d, full.min(axis=1), rtol=0, atol=1e-9)
    np.testing.assert_allclose(full[np.arange(300), i], d, rtol=0, atol=1e-9)
    assert d[0] == 0.0 and i[0] == 10
    with pytest.raises(ValueError, match="at least one reference"):
        geo.nearest_km(q_lat, q_lon, [], [])


def test_nearest_asks_for_more_candidates_when_many_are_equally_near():
    rng = np.random.default_rng(test_seed())
    # 60 references within a few decimetres of one spot and a query 100 m away: the 8 chord-nearest cannot
    # rule the others out, so the search widens; the answer is still the brute-force one.
    ref_lat = np.concatenate([28.5 + rng.normal(0, 2e-6, 60), rng.uniform(28, 29, 200)])
    ref_lon = np.concatenate([-81.5 + rng.normal(0, 2e-6, 60), rng.uniform(-82, -81, 200)])
    q_lat, q_lon = np.array([28.5009, 28.5]), np.array([-81.5, -81.5])
    d, i = geo.nearest_km(q_lat, q_lon, ref_lat, ref_lon, candidates=2)
    full = geo.geodesic_km(q_lat[:, None], q_lon[:, None], ref_lat[None, :], ref_lon[None, :])
    np.testing.assert_allclose(d, full.min(axis=1), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(i, full.argmin(axis=1))
