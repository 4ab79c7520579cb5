"""The original `central_florida_split.json`, applied to a store converted from the published layout,
trains and evaluates the space-time configs unchanged (issue 10): only `store` and `split_file` are set."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import small_dataset
from test_split import _original_file

from deepearth_jax import evaluate as evaluate_lib
from deepearth_jax import train as train_lib
from deepearth_jax.config_utils import load_config
from deepearth_jax.data import convert as convert_lib
from deepearth_jax.data import split as split_lib
from deepearth_jax.data import synthetic_layouts

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A store converted from the HF layout (missing clock times, no elevation, as the real data) and a split
    file written by hand in the original's schema (one 10 km region, test year 2025)."""
    root = tmp_path_factory.mktemp("original")
    dataset = small_dataset(observations=500, species=10, vision_shape=(2, 2, 2, 8), language_dim=12, seed=5)
    store = convert_lib.convert(synthetic_layouts.write_hf(dataset, root / "hf"), root / "store")
    raw = _original_file(store, root / "central_florida_split.json")
    return store, root / "central_florida_split.json", raw


@pytest.mark.parametrize("spec", ["vision_geo.py:tiny"])  # reads both place and date and vision (geo_prior:
def test_space_time_configs_run_on_the_original_split(converted, tmp_path, spec):  # the same path, less)
    store, split_file, raw = converted
    overrides = [f"--config.store={store.path}", f"--config.split_file={split_file}", "--config.num_steps=4"]
    config = load_config(f"{ROOT}/configs/{spec}", overrides)
    summary = train_lib.train_and_evaluate(config, tmp_path / "w")
    assert summary["complete"] and summary["steps"] == 4
    result = evaluate_lib.evaluate_workdir(tmp_path / "w")
    # Test is exactly the original file's test rows that have an embedding (the vision pool), per reason.
    original = split_lib.load_split(split_file)
    test_rows = original.rows(store, "test")
    pooled = test_rows[store.column("vision_row")[test_rows] >= 0]
    assert result["test/count"] == len(pooled)
    reasons = {v["split_reason"] for v in raw["observation_mappings"].values()}
    assert {"temporal_test", "spatial_test_region_3"} <= reasons
    assert result["test/temporal/count"] + result["test/spatial/count"] == result["test/count"]
    for key in ("test/top1", "test/top5", "test/baseline_knn/top5", "test/baseline_frequency/top5"):
        assert 0.0 <= result[key] <= 1.0
