"""Honest numbers: checkpoints chosen on validation (never test), old splits get one, bootstrap intervals."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import test_seed

from deepearth_jax import baselines as baselines_lib
from deepearth_jax import evaluate as evaluate_lib
from deepearth_jax import evaluation as evaluation_lib
from deepearth_jax import inputs, metrics
from deepearth_jax import train as train_lib
from deepearth_jax.config_utils import load_config
from deepearth_jax.data import split as split_lib
from deepearth_jax.data import store as store_lib
from deepearth_jax.data.synthetic import make_synthetic_store

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------
# Bootstrap intervals


def _numpy_reference(values, resamples, seed, level=0.95):
    """The percentile bootstrap written out plainly: one draw of all indices, means, percentiles."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(values), size=(resamples, len(values)))
    means = np.asarray(values, np.float64)[index].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return tuple(np.percentile(means, [tail, 100 - tail]))


def test_bootstrap_ci_equals_the_numpy_reference_and_is_deterministic():
    rng = np.random.default_rng(test_seed())
    hits = rng.random(300) < 0.4
    got = metrics.bootstrap_ci(hits, resamples=500, seed=7)
    assert got == pytest.approx(_numpy_reference(hits, 500, 7), abs=1e-12)
    assert metrics.bootstrap_ci(hits, resamples=500, seed=7) == got
    low, high = got
    assert low <= hits.mean() <= high


def test_bootstrap_ci_matches_the_normal_interval_of_a_proportion_and_shrinks_with_n():
    rng = np.random.default_rng(test_seed())
    widths = []
    for n in (100, 400, 1600, 6400):
        hits = (rng.random(n) < 0.3).astype(float)
        low, high = metrics.bootstrap_ci(hits, resamples=2000, seed=0)
        p = hits.mean()
        half = 1.959964 * np.sqrt(p * (1 - p) / n)  # closed form (Wald) for a proportion
        assert low <= p <= high
        assert (high - low) == pytest.approx(2 * half, rel=0.12)
        widths.append(high - low)
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] < widths[0] / 6  # ~ 1/sqrt(n): 64x the examples, 8x narrower


def test_paired_bootstrap_ci_of_a_difference():
    rng = np.random.default_rng(test_seed())
    a = (rng.random(500) < 0.6).astype(float)
    b = a.copy()
    flip = rng.random(500) < 0.1
    b[flip] = 1 - b[flip]
    low, high = metrics.paired_bootstrap_ci(a, b, resamples=800, seed=1)
    assert (low, high) == pytest.approx(_numpy_reference(a - b, 800, 1), abs=1e-12)
    assert low <= a.mean() - b.mean() <= high
    # Pairing removes what the examples share: narrower than the unpaired spread of the two intervals.
    ua, ub = metrics.bootstrap_ci(a, seed=1), metrics.bootstrap_ci(b, seed=1)
    assert high - low < (ua[1] - ua[0]) + (ub[1] - ub[0])
    assert metrics.paired_bootstrap_ci(a, a) == (0.0, 0.0)
    with pytest.raises(ValueError, match="paired examples differ in number: 3 and 2"):
        metrics.paired_bootstrap_ci([1, 0, 1], [1, 0])
    assert all(np.isnan(metrics.bootstrap_ci([])))


# ----------------------------------------------------------------------------------------------------------
# Training: selection on validation


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("honest")
    store = make_synthetic_store(
        root / "store", observations=600, species=12, vision_shape=(2, 3, 3, 8), language_dim=16, seed=3
    )
    payload = split_lib.make_split(store, seed=0)
    split_lib.write_split(payload, root / "split.json")
    # The same split as an old (v1) file: no validation set, those rows back in training.
    old = copy.deepcopy(payload)
    old["format"]["version"] = 1
    del old["split_strategy"]["validation"]
    del old["validation_regions"]
    for entry in old["observation_mappings"].values():
        if entry["split_reason"].startswith("validation_"):
            entry["split"], entry["split_reason"] = "train", "temporal_train"
    (root / "old_split.json").write_text(json.dumps(old))
    return root


def _config(root: Path, split: str = "split.json", **overrides):
    values = {"store": root / "store", "split_file": root / split, **overrides}
    return load_config(f"{ROOT}/configs/vision.py:tiny", [f"--config.{k}={v}" for k, v in values.items()])


def test_best_checkpoint_is_chosen_on_validation_and_test_is_scored_only_for_it_and_the_final(
    tiny, tmp_path, monkeypatch
):
    """Validation peaks at step 2 (scripted): step 2 is selected whatever test says, and test is evaluated
    exactly twice (selected and final), never during training."""
    scripted = iter([0.1, 0.9, 0.2, 0.3])
    subsets_seen = []
    real_evaluate = evaluation_lib.Evaluator.evaluate

    def evaluate(self, state):
        subsets_seen.append(self.subset)
        if self.subset == "validation":
            return {"validation/top1": next(scripted), "validation/count": 5.0}
        return real_evaluate(self, state)

    monkeypatch.setattr(evaluation_lib.Evaluator, "evaluate", evaluate)
    config = _config(tiny, num_steps=4, eval_every_steps=1, batch_size=16)
    summary = train_lib.train_and_evaluate(config, tmp_path / "w")
    assert subsets_seen == ["validation"] * 4 + ["test"] * 2
    best, final = summary["best"], summary["final"]
    assert best["step"] == 2 and best["validation/top1"] == 0.9
    assert best["selected_by"] == "validation/top1"
    assert final["validation/top1"] == 0.3
    rows = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert not any(k.startswith("test/") for r in rows for k in r)
    monkeypatch.setattr(evaluation_lib.Evaluator, "evaluate", real_evaluate)
    # The summary's test numbers are those of step 2's checkpoint; evaluate's default picks it too.
    at_2 = evaluate_lib.evaluate_workdir(tmp_path / "w", "test", "2")
    assert best["test/top1"] == at_2["test/top1"] and best["test/top1_ci"] == at_2["test/top1_ci"]
    assert evaluate_lib.evaluate_workdir(tmp_path / "w")["test/top1"] == at_2["test/top1"]
    latest = evaluate_lib.evaluate_workdir(tmp_path / "w", "test", "latest")
    assert final["test/top1"] == latest["test/top1"]
    for entry in (best, final):
        for key in ("top1", "top5"):
            low, high = entry[f"test/{key}_ci"]
            assert low <= entry[f"test/{key}"] <= high
        groups = {k.split("/")[1] for k in entry if k.startswith("test/") and k.count("/") == 2}
        baselines = set(baselines_lib.NAMES)  # reported beside the model (intervals too)
        assert groups - {"unseen_species", "seen_species", "top1_ci", "top5_ci"} - baselines
        for group in groups - {"unseen_species"} - baselines:
            if f"test/{group}/top1" in entry:
                low, high = entry[f"test/{group}/top1_ci"]
                assert low <= entry[f"test/{group}/top1"] <= high


def test_best_metric_on_test_is_refused(tiny, tmp_path):
    config = _config(tiny, num_steps=1, best_metric="test/top1")
    with pytest.raises(
        train_lib.TrainError,
        match=r"best_metric 'test/top1' would select checkpoints on "
        r"the test set.*--config.best_metric=validation/top1",
    ):
        train_lib.train_and_evaluate(config, tmp_path / "w")
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_old_v1_split_gets_validation_rows_out_of_training_and_still_trains(tiny, tmp_path):
    config = _config(tiny, "old_split.json", num_steps=2, batch_size=16)
    data = inputs.prepare_data(config, tmp_path)
    store = store_lib.open_store(tiny / "store")
    old_train = split_lib.load_split(tiny / "old_split.json").rows(store, "train")
    usable = old_train[store.column("vision_row")[old_train] >= 0]
    assert len(data.validation_rows) > 0
    assert not set(data.validation_rows.tolist()) & set(data.train_rows.tolist())
    assert not set(data.validation_rows.tolist()) & set(data.test_rows.tolist())
    assert sorted([*data.train_rows.tolist(), *data.validation_rows.tolist()]) == sorted(usable.tolist())
    summary = train_lib.train_and_evaluate(config, tmp_path / "w")
    assert summary["complete"] and summary["final"]["validation/count"] == len(data.validation_rows)
    metrics_ = evaluate_lib.evaluate_workdir(tmp_path / "w", "validation")
    assert metrics_["validation/count"] == len(data.validation_rows)
    low, high = metrics_["validation/top1_ci"]
    assert low <= metrics_["validation/top1"] <= high
    written = json.loads((tmp_path / "w" / "eval_validation" / "metrics.json").read_text())
    assert written["validation/top5_ci"] == metrics_["validation/top5_ci"]


def test_bootstrap_of_many_hits_draws_value_counts_with_the_index_draws_distribution():
    rng = np.random.default_rng(test_seed())
    n = metrics.EXACT_RESAMPLING_MAX + 5000
    hits = (rng.random(n) < 0.3).astype(float)
    low, high = metrics.bootstrap_ci(hits, resamples=4000, seed=3)
    ref_low, ref_high = _numpy_reference(hits, 400, 3)  # index draws (fewer: they cost n each)
    p = hits.mean()
    half = 1.959964 * np.sqrt(p * (1 - p) / n)
    assert low < p < high and (high - low) == pytest.approx(2 * half, rel=0.05)
    assert (low, high) == pytest.approx((ref_low, ref_high), abs=0.3 * half)  # 400 draws: noisy quantiles
    assert metrics.bootstrap_ci(hits, resamples=4000, seed=3) == (low, high)
