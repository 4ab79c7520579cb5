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
    out["loss"] = np.full(n, 10.0)  # a learned head worse than the rule
    fitted = fusion.fit(out, prior)
    assert fitted["late_fusion/exponent"] == pytest.approx(0.6, abs=0.1)
    assert fitted["late_fusion/vision_weight"] == pytest.approx(1.0, abs=0.1)
    assert fitted["late_fusion/temperature"] == 1.0
    assert fitted["fusion/late_rule"] == 1.0
    # Normalised, and w = 0 is vision alone.
    np.testing.assert_allclose(np.exp(fusion.late_fusion_log_probs(out, prior, 1.3)).sum(axis=1), 1.0)
    np.testing.assert_allclose(
        fusion.late_fusion_log_probs(out, prior, 0.0), out["vision_log_probs"], atol=1e-12
    )
    assert fusion.fit({**out, "labels": np.full(n, -1)}, prior) == fusion.DEFAULT_FIT


def test_late_rule_ignores_noise_vision_and_replaces_an_overfitted_learned_head():
    """Labels from place and date alone, vision log-probs pure noise: the fit sets the vision weight to 0 and
    prefers the rule to a learned head whose validation loss is worse; the prediction is then the rule's."""
    rng = np.random.default_rng(test_seed())
    n, c = 4000, 8
    prior = np.log(np.full(c, 1.0 / c))
    geo = _log_softmax(rng.normal(0, 2.0, (n, c)))
    labels = (np.exp(geo).cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1).clip(0, c - 1)
    vision = _log_softmax(rng.normal(0, 3.0, (n, c)))  # confident and uninformative
    out = {
        "labels": labels,
        "vision_log_probs": vision,
        "geo_log_probs": geo,
        "top5": np.argsort(-vision, axis=1)[:, :5].astype(np.int32),
        "top5_prob": np.zeros((n, 5), np.float32),
        "loss": -np.take_along_axis(vision, labels[:, None], 1)[:, 0],  # the "learned head" follows vision
    }
    fitted = fusion.fit(out, prior)
    assert fitted["late_fusion/vision_weight"] == 0.0
    # With a uniform prior and a = 0 the rule is t w log p(y|place, date): only the product is identified.
    assert fitted["late_fusion/exponent"] * fitted["late_fusion/temperature"] == pytest.approx(1.0, abs=0.1)
    assert fitted["fusion/late_rule"] == 1.0
    scored = fusion.apply_fit(out, fitted, prior)
    late = fusion.late_fusion_log_probs(
        out, prior, *(fitted[f"late_fusion/{k}"] for k in ("exponent", "vision_weight", "temperature"))
    )
    np.testing.assert_array_equal(scored["top5"], scored["late_fusion_top5"])
    np.testing.assert_array_equal(scored["learned_top5"], out["top5"])
    np.testing.assert_allclose(scored["loss"], -np.take_along_axis(late, labels[:, None], 1)[:, 0], rtol=1e-6)
    # a = 0, w = 1 ranks by place and date alone, at any temperature.
    for t in fusion.TEMPERATURES:
        ranked = np.argsort(-fusion.late_fusion_log_probs(out, prior, 1.0, 0.0, t), axis=1, kind="stable")
        np.testing.assert_array_equal(ranked, np.argsort(-geo, axis=1, kind="stable"))
    summary = fusion.summarize(scored)
    assert summary["top1"] == summary["late_fusion/top1"] > summary["learned/top1"]
    # Kept learned head: the prediction is the head's.
    kept = fusion.apply_fit(out, {**fitted, "fusion/late_rule": 0.0}, prior)
    np.testing.assert_array_equal(kept["top5"], out["top5"])


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
    out = fusion.apply_fit(out, {"late_fusion/exponent": 0.5}, np.log(np.full(c, 1.0 / c)))  # an old fit
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


def test_selection_metric_is_the_best_head_on_unfitted_outputs():
    """Validation (no fit): `selection/top1` is the best top-1 of the learned head, vision alone and place
    and date alone, so a head that memorised noise images does not choose the checkpoint."""
    labels = np.array([0, 1, 2, 2])
    eye = np.log(np.eye(3) * 0.98 + 0.01)
    out = {
        "labels": labels,
        "top5": np.array([[1, 0, 2], [0, 1, 2], [0, 1, 2], [1, 0, 2]], np.int32),  # learned: 0 of 4
        "loss": np.ones(4),
        "vision_log_probs": eye[[1, 1, 1, 1]],  # 1 of 4
        "geo_log_probs": eye[[0, 1, 2, 0]],  # 3 of 4
    }
    summary = fusion.summarize(out)
    assert summary["top1"] == 0.0
    assert summary["selection/top1"] == 0.75
    assert "selection/top1" not in fusion.summarize(
        fusion.apply_fit(out, fusion.DEFAULT_FIT, np.log(np.full(3, 1 / 3)))
    )
