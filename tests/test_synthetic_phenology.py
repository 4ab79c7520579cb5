"""The synthetic demo's phenology: each species is seen around its own season; the demo cache key changes."""

from __future__ import annotations

import numpy as np

from deepearth_jax.data import synthetic


def test_species_are_observed_around_a_seasonal_peak():
    cfg = synthetic.SyntheticConfig(observations=3000, species=8, vision_shape=(1, 2, 2, 8), language_dim=8)
    ds = synthetic.SyntheticDataset(cfg)
    dates = np.array(
        [f"{y:04d}-{m:02d}-{d:02d}" for y, m, d in zip(ds.year, ds.month, ds.day, strict=True)],
        "datetime64[D]",
    )
    doy = (dates - dates.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64)
    angle = 2 * np.pi * doy / 365.0
    for sp in np.unique(ds.species_index):
        a = angle[ds.species_index == sp]
        if len(a) < 30:
            continue
        resultant = np.hypot(np.cos(a).mean(), np.sin(a).mean())
        assert resultant > 0.6  # sd <= 60 days: wrapped normal resultant >= exp(-(60/365*2pi)^2/2) ~ 0.59
    everyone = np.hypot(np.cos(angle).mean(), np.sin(angle).mean())
    assert everyone < 0.5  # peaks spread over the year


def test_generator_version_enters_the_demo_cache_key(monkeypatch):
    from configs import common
    from deepearth_jax import inputs

    demo = common.base_config().demo
    keys = []
    for version in (1, 2, 2):
        monkeypatch.setattr(synthetic, "GENERATOR_VERSION", version)
        keys.append(inputs.demo_cache_key(demo))
    assert keys[0] != keys[1] and keys[1] == keys[2] and len(keys[1]) == 12
