"""Fusion of vision with place and date, scored honestly: the late fusion exponent is fitted on validation
only, gains carry paired intervals, baselines carry intervals, a geo prior's evaluation draws range maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import store_and_split, test_seed

from deepearth_jax import baselines, evaluation
from deepearth_jax import evaluate as evaluate_lib
from deepearth_jax import metrics as metrics_lib
from deepearth_jax import train as train_lib
from deepearth_jax.config_utils import load_config
from deepearth_jax.tasks import fusion

ROOT = Path(__file__).resolve().parents[1]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    return z - np.logaddexp.reduce(z, axis=-1, keepdims=True)


def test_late_fusion_exponent_is_the_one_that_generated_the_labels():
    """Labels drawn from log p(y|img) + 0.6 (log p(y|geo) - log p(y)): fitting recovers 0.6."""
    rng = np.random.default_rng(test_seed())
    n, c = 6000, 6
    prior = np.log(np.full(c, 1.0 / c))
    out = {
        "vision_log_probs": _log_softmax(rng.normal(0, 1.5, (n, c))),
        "geo_log_probs": _log_softmax(rng.normal(0, 2.0, (n, c))),
    }
    posterior = np.exp(fusion.late_fusion_log_probs(out, prior, 0.6))
    out["labels"] = (posterior.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1).clip(0, c - 1)
    assert fusion.fit(out, prior)["late_fusion/exponent"] == pytest.approx(0.6, abs=0.1)
    # Normalised, and w = 0 is vision alone.
    np.testing.assert_allclose(np.exp(fusion.late_fusion_log_probs(out, prior, 1.3)).sum(axis=1), 1.0)
    np.testing.assert_allclose(
        fusion.late_fusion_log_probs(out, prior, 0.0), out["vision_log_probs"], atol=1e-12
    )
    assert fusion.fit({**out, "labels": np.full(n, -1)}, prior) == {"late_fusion/exponent": 1.0}


def test_gain_interval_is_the_paired_bootstrap_interval():
    rng = np.random.default_rng(test_seed())
    n, c = 500, 5
    out = {
        "labels": rng.integers(-1, c, n),
        "top5": np.argsort(rng.random((n, c)), axis=1).astype(np.int32),
        "loss": rng.random(n),
        "vision_log_probs": _log_softmax(rng.normal(size=(n, c))),
        "geo_log_probs": _log_softmax(rng.normal(size=(n, c))),
    }
    out = fusion.apply_fit(out, {"late_fusion/exponent": 0.5}, np.log(np.full(c, 1.0 / c)))
    scores = fusion.example_scores(out)
    fused, vision = (metrics_lib.topk_correct(out[k], out["labels"], 1) for k in ("top5", "vision_only_top5"))
    np.testing.assert_array_equal(scores["gain/fused_vs_vision/top1"], fused.astype(float) - vision)
    expected = metrics_lib.paired_bootstrap_ci(
        fused, vision, resamples=evaluation.BOOTSTRAP_RESAMPLES, seed=evaluation.BOOTSTRAP_SEED
    )
    assert evaluation._interval(scores["gain/fused_vs_vision/top1"]) == list(expected)
    summary = fusion.summarize(out)
    assert summary["gain/fused_vs_vision/top1"] == pytest.approx(
        summary["top1"] - summary["vision_only/top1"]
    )


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return store_and_split(
        tmp_path_factory.mktemp("fusion_data"),
        observations=500,
        species=10,
        vision_shape=(2, 2, 2, 8),
        language_dim=8,
        seed=4,
    )


def _config(spec: str, store: Path, split: Path, steps: int):
    values = {"store": store, "split_file": split, "num_steps": steps}
    return load_config(f"{ROOT}/configs/{spec}", [f"--config.{k}={v}" for k, v in values.items()])


def test_vision_geo_reports_branches_gains_and_an_exponent_fitted_on_validation(
    tiny_data, tmp_path, monkeypatch
):
    store, split = tiny_data
    train_lib.train_and_evaluate(_config("vision_geo.py:tiny", store, split, 6), tmp_path / "w")
    fitted_on = []
    real_fit = fusion.fit
    monkeypatch.setattr(
        fusion, "fit", lambda out, prior: fitted_on.append(len(out["labels"])) or real_fit(out, prior)
    )
    result = evaluate_lib.evaluate_workdir(tmp_path / "w")
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert result["test/top1"] == pytest.approx(summary["best"]["test/top1"])  # evaluate's default: the best
    for base in baselines.NAMES:
        assert result[f"test/{base}/top5"] == summary["final"][f"test/{base}/top5"]
    assert fitted_on == [
        int(summary["best"]["validation/count"])
    ]  # fitted on validation, not on the test rows
    assert fitted_on[0] != int(result["test/count"])
    assert result["test/late_fusion/exponent"] in set(fusion.EXPONENTS.tolist())
    for name in ("vision_only", "geo_only", "late_fusion"):
        assert 0.0 <= result[f"test/{name}/top1"] <= 1.0
    gain = result["test/gain/fused_vs_vision/top1"]
    assert gain == pytest.approx(result["test/top1"] - result["test/vision_only/top1"])
    low, high = result["test/gain/fused_vs_vision/top1_ci"]
    assert low <= gain <= high
    assert any(
        k.endswith("/gain/late_fusion_vs_vision/top1_ci") and k.count("/") == 4 for k in result
    )  # per reason
    for base in baselines.NAMES:
        low, high = result[f"test/{base}/top5_ci"]
        assert low <= result[f"test/{base}/top5"] <= high


def test_range_map_dates():
    from deepearth_jax import range_map

    assert range_map.month_day(0) == (1, 1) and range_map.month_day(364) == (12, 31)
    # Circular mean: late December and early January average to the turn of the year, not to July.
    peak = range_map.peak_day_of_year(np.array([12, 12, 1, 1]), np.array([28, 30, 2, 4]))
    assert peak in (363, 364, 0)
