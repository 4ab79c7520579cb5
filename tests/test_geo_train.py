"""The geo models end to end on a tiny store: train, resume, K steps, device epochs, evaluate, the region."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from deepearth_jax import baselines, inputs, region
from deepearth_jax import evaluate as evaluate_lib
from deepearth_jax import train as train_lib
from deepearth_jax.config_utils import load_config
from deepearth_jax.data import pipeline
from deepearth_jax.data import split as split_lib
from deepearth_jax.data.synthetic import make_synthetic_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("geo_data")
    store = make_synthetic_store(
        root / "store", observations=600, species=12, vision_shape=(2, 3, 3, 8), language_dim=16, seed=3
    )
    split_path = root / "split.json"
    split_lib.write_split(split_lib.make_split(store, seed=0), split_path)
    return root / "store", split_path


def geo_config(spec: str, store: Path, split: Path, **overrides):
    values = {"store": store, "split_file": split, **overrides}
    return load_config(f"{ROOT}/configs/{spec}", [f"--config.{k}={v}" for k, v in values.items()])


# vision_geo.py:tiny: tests/test_fusion.py (the same checks, and its fusion report).
@pytest.mark.parametrize("spec", ["geo_prior.py:tiny", "geo_prior.py:tiny,loss=sinr"])
def test_geo_configs_train_evaluate_and_report(tiny_data, tmp_path, spec, capsys):
    store, split = tiny_data
    config = geo_config(spec, store, split, num_steps=3, log_every_steps=1)
    summary = train_lib.train_and_evaluate(config, tmp_path / "w")
    assert summary["steps"] == 3 and summary["complete"]
    rows = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
    result = evaluate_lib.evaluate_workdir(tmp_path / "w")
    best = json.loads((tmp_path / "w" / "summary.json").read_text())["best"]  # evaluate's default checkpoint
    assert result["test/top1"] == pytest.approx(best["test/top1"])
    assert 0.0 <= result["test/top5"] <= 1.0
    final_summary = json.loads((tmp_path / "w" / "summary.json").read_text())["final"]
    for base in baselines.NAMES:
        for k in ("top1", "top5"):
            assert 0.0 <= final_summary[f"test/{base}/{k}"] <= 1.0
            assert result[f"test/{base}/{k}"] == final_summary[f"test/{base}/{k}"]
    for base in baselines.NAMES:  # per reason too, with intervals
        assert any(key.endswith(f"/{base}/top5") and key.count("/") == 3 for key in result)
        low, high = result[f"test/{base}/top5_ci"]
        assert low <= result[f"test/{base}/top5"] <= high
    # What validation chose, recorded beside the numbers.
    assert result["test/baseline_knn_weighted/neighbors"] in baselines.KNN_GRID
    assert result["test/baseline_kde/bandwidth_km"] in baselines.KDE_GRID_KM
    # A range map of the four most frequent species; an unknown --range-species is refused before anything
    # is evaluated or written.
    image = matplotlib.image.imread(tmp_path / "w" / "eval_test" / "range_map.png")
    assert image.shape[0] > 800 and image.shape[1] > 1000  # 2 x 2 panels at 110 dpi
    before = (tmp_path / "w" / "eval_test" / "metrics.json").read_bytes()
    assert evaluate_lib.main(["--workdir", str(tmp_path / "w"), "--range-species", "Nonesuch nowhere"]) == 2
    assert "not a training species of this run: Nonesuch nowhere" in capsys.readouterr().err
    assert (tmp_path / "w" / "eval_test" / "metrics.json").read_bytes() == before


def test_geo_k_steps_per_call_and_resume_give_the_same_parameters(tiny_data, tmp_path):
    store, split = tiny_data
    sums = []
    for k in (1, 4):
        config = geo_config(
            "geo_prior.py:tiny", store, split, num_steps=8, steps_per_call=k, eval_every_steps=100
        )
        sums.append(train_lib.train_and_evaluate(config, tmp_path / f"k{k}")["params_checksum"])
    assert sums[0] == sums[1]
    config = geo_config("geo_prior.py:tiny", store, split, num_steps=4, eval_every_steps=100)
    train_lib.train_and_evaluate(config, tmp_path / "r")
    config = geo_config("geo_prior.py:tiny", store, split, num_steps=8, eval_every_steps=100)
    assert train_lib.train_and_evaluate(config, tmp_path / "r")["params_checksum"] == sums[0]


def test_geo_trains_whole_epochs_on_device(tiny_data, tmp_path):
    store, split = tiny_data
    config = geo_config("geo_prior.py:tiny", store, split, device_epochs="true", num_epochs=2)
    summary = train_lib.train_and_evaluate(config, tmp_path / "w")
    assert summary["complete"] and len(summary["params_checksum"]) == 64


def test_region_is_fitted_on_training_rows_only(tiny_data, tmp_path):
    store, split = tiny_data
    config = geo_config("geo_prior.py:tiny", store, split)
    data = inputs.prepare_data(config, tmp_path)
    fitted = data.input_dims[region.NORMALIZER_KEY]
    assert fitted == region.fit_normalizer(data.store, data.train_rows)
    assert fitted != region.fit_normalizer(data.store, data.test_rows)
    location, _ = region.place_and_date(data.store, data.train_rows)
    assert location.shape == (len(data.train_rows), 3)
    assert (
        "earth4d_normalizer"
        not in inputs.prepare_data(geo_config("vision.py:tiny", store, split), tmp_path).input_dims
    )


def test_geo_modes_drop_rows_without_a_place_or_date(tiny_data):
    from deepearth_jax.data import store as store_lib

    store = store_lib.open_store(tiny_data[0])
    rows = np.arange(store.num_observations if hasattr(store, "num_observations") else 50, dtype=np.int64)[
        :50
    ]
    assert np.array_equal(pipeline.usable_rows(store, rows, "geo"), rows)  # the synthetic store has them all
