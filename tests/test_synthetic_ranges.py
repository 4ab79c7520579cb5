"""The synthetic demo's species ranges: a species is seen inside its range (clustered, smooth in space)."""

from __future__ import annotations

import numpy as np
from conftest import test_seed

from deepearth_jax.data import synthetic


def _dataset(seed: int) -> synthetic.SyntheticDataset:
    cfg = synthetic.SyntheticConfig(
        observations=4000, species=60, vision_shape=(1, 1, 1, 8), language_dim=4, seed=seed
    )
    return synthetic.SyntheticDataset(cfg)


def _km(ds: synthetic.SyntheticDataset) -> np.ndarray:
    lat0 = np.radians(np.mean(ds.latitude))
    return np.stack([ds.longitude * 111.0 * np.cos(lat0), ds.latitude * 111.0], axis=1)


def _median_pair_km(xy: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> float:
    i, j = rng.choice(rows, (2, 2000))
    return float(np.median(np.hypot(*(xy[i] - xy[j]).T)))


def test_species_are_seen_within_their_ranges():
    ds = _dataset(seed=0)
    xy, rng = _km(ds), np.random.default_rng(test_seed())
    everyone = _median_pair_km(xy, np.arange(len(xy)), rng)
    spreads = [
        _median_pair_km(xy, rows, rng)
        for sp in range(60)
        if len(rows := np.flatnonzero(ds.species_index == sp)) >= 20
    ]
    # Ranges of 1..3 centres of 5..15 km within ~12 km: a species' sightings lie far closer together than
    # any two sightings (measured: median 20 km vs 47 km over the ~100 km box).
    assert len(spreads) > 30 and np.median(spreads) < 0.6 * everyone


def test_ranges_are_smooth_so_near_sites_share_species():
    ds = _dataset(seed=0)
    xy = _km(ds)
    sites = np.unique(ds.site)
    centre = np.stack([xy[ds.site == s].mean(axis=0) for s in sites])
    mix = np.stack([np.bincount(ds.species_index[ds.site == s], minlength=60) for s in sites]).astype(float)
    mix /= mix.sum(axis=1, keepdims=True)
    d = np.hypot(*(centre[:, None] - centre[None]).transpose(2, 0, 1))
    overlap = np.minimum(mix[:, None], mix[None]).sum(axis=-1)  # shared share of the species mix
    off = ~np.eye(len(sites), dtype=bool)
    near, far = overlap[off & (d < 10.0)], overlap[off & (d > 40.0)]
    assert len(near) > 20 and near.mean() > 2.0 * far.mean()


def test_ranges_are_deterministic_by_seed():
    a, b, c = _dataset(seed=4), _dataset(seed=4), _dataset(seed=5)
    np.testing.assert_array_equal(a.latitude, b.latitude)
    np.testing.assert_array_equal(a.species_index, b.species_index)
    assert not np.array_equal(a.latitude, c.latitude)
