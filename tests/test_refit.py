"""config.refit: a second model trained from scratch on train + validation for the selected step count."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import store_and_split

from deepearth_jax import checkpoint as checkpoint_lib
from deepearth_jax import evaluate as evaluate_lib
from deepearth_jax import inputs, refit
from deepearth_jax import train as train_lib
from deepearth_jax.config_utils import load_config
from deepearth_jax.errors import TrainError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return store_and_split(tmp_path_factory.mktemp("refit_data"))


def _config(name: str, store: Path, split: Path, **overrides):
    values = {"store": store, "split_file": split, "num_epochs": 3, **overrides}
    return load_config(f"{ROOT}/configs/{name}.py:tiny", [f"--config.{k}={v}" for k, v in values.items()])


def _test_keys(row: dict) -> set[str]:
    return {k for k in row if k.startswith("test/")}


def test_refit_data_is_train_plus_labelled_validation(tiny_data, tmp_path):
    store, split = tiny_data
    data = inputs.prepare_data(_config("geo_prior", store, split), tmp_path)
    fit, dropped = refit.refit_data(data)
    species = data.store.column("species_index")
    labelled = data.validation_rows[data.label_map[species[data.validation_rows]] >= 0]
    expected = np.sort(np.concatenate([data.train_rows, labelled]))
    np.testing.assert_array_equal(fit.train_rows, expected)
    assert len(np.unique(fit.train_rows)) == len(fit.train_rows)
    assert dropped == len(data.validation_rows) - len(labelled)
    assert len(fit.validation_rows) == 0
    np.testing.assert_array_equal(fit.test_rows, data.test_rows)  # the test rows never move
    np.testing.assert_array_equal(fit.label_map, data.label_map)  # same classes: same model, same keys
    # The Earth4D normaliser is the refit rows' box (the validation year is inside it now).
    assert (
        fit.input_dims["earth4d_normalizer"]["day_span"] >= data.input_dims["earth4d_normalizer"]["day_span"]
    )


class _StopAtOnce:
    """StopOnSigterm as if SIGTERM had arrived before the first step."""

    requested = True
    how = "local"

    def __enter__(self):
        return self

    def reached(self, step: int) -> bool:
        return True

    def __exit__(self, *exc):
        return None


def test_refit_block_rows_determinism_resume_and_no_retraining(tiny_data, tmp_path, capsys, monkeypatch):
    store, split = tiny_data
    # A run without refit, then the same command with refit turned on: the finished run is reused (refit is
    # a resumable change) and only the refit phase trains.
    plain = train_lib.train_and_evaluate(_config("vision", store, split), tmp_path / "a")
    assert "refit" not in plain
    # A stop request (SIGTERM) during the refit: saved after its first step, the run is incomplete, no test.
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_lib, "StopOnSigterm", _StopAtOnce)
        stopped = train_lib.train_and_evaluate(_config("vision", store, split, refit=True), tmp_path / "a")
    assert not stopped["complete"] and not stopped["refit"]["complete"]
    assert stopped["refit"]["step"] == 1 and not _test_keys(stopped["refit"])
    assert stopped["params_checksum"] == plain["params_checksum"]  # the selection run is untouched
    first = train_lib.train_and_evaluate(_config("vision", store, split, refit=True), tmp_path / "a")
    assert first["complete"]
    assert first["params_checksum"] == plain["params_checksum"]  # the checksum is the selected run's
    block = first["refit"]
    assert _test_keys(block) == _test_keys(first["best"])
    assert block["complete"] and block["step"] == block["selected_step"] == first["best"]["step"]
    assert block["schedule_steps"] == first["total_steps"]
    data = inputs.prepare_data(_config("vision", store, split), tmp_path / "a")
    species = data.store.column("species_index")
    labelled = int(np.sum(data.label_map[species[data.validation_rows]] >= 0))
    assert block["train_rows"] == len(data.train_rows) + labelled
    assert block["validation_rows_left_out"] == len(data.validation_rows) - labelled
    assert block["params_checksum"] != first["params_checksum"]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["refit"]["test/top1"] == block["test/top1"]
    assert (tmp_path / "a" / "refit" / "checkpoints").is_dir()

    # Deterministic: a fresh run with refit from the start gives the same refit model as the resumed one.
    second = train_lib.train_and_evaluate(_config("vision", store, split, refit=True), tmp_path / "b")
    assert second["refit"]["params_checksum"] == block["params_checksum"]
    assert second["refit"]["test/top1"] == block["test/top1"]

    # Rerunning a finished run does not retrain the refit model: no new curve rows, same checksum.
    curves = (tmp_path / "b" / "refit" / "metrics.jsonl").read_text()
    capsys.readouterr()
    again = train_lib.train_and_evaluate(_config("vision", store, split, refit=True), tmp_path / "b")
    assert "refit already trained" in capsys.readouterr().out
    assert again["refit"]["params_checksum"] == block["params_checksum"]
    assert (tmp_path / "b" / "refit" / "metrics.jsonl").read_text() == curves

    # evaluate --checkpoint refit scores the same model on the test rows; validation is refused.
    result = evaluate_lib.evaluate_workdir(tmp_path / "b", "test", "refit")
    assert result["test/top1"] == pytest.approx(block["test/top1"])
    assert result["test/baseline_knn/top1"] == pytest.approx(block["test/baseline_knn/top1"])
    assert (tmp_path / "b" / "eval_test_refit" / "metrics.json").exists()
    with pytest.raises(TrainError, match="--checkpoint refit trained on the validation rows"):
        evaluate_lib.evaluate_workdir(tmp_path / "b", "validation", "refit")
    with pytest.raises(TrainError, match="no refit in"):
        shutil.rmtree(tmp_path / "a" / "refit")
        evaluate_lib.evaluate_workdir(tmp_path / "a", "test", "refit")


def test_refit_of_a_fusion_keeps_the_exponent_fitted_in_selection(tiny_data, tmp_path):
    store, split = tiny_data
    summary = train_lib.train_and_evaluate(_config("vision_geo", store, split, refit=True), tmp_path / "w")
    block, best = summary["refit"], summary["best"]
    fitted = block["fitted_in_selection"]
    assert set(fitted) >= {"late_fusion/exponent"}
    for key, value in fitted.items():
        assert value == best[f"test/{key}"] == block[f"test/{key}"]
    assert _test_keys(block) == _test_keys(best)


def test_extending_the_run_redoes_the_refit_of_the_new_selection(tiny_data, tmp_path):
    """More epochs change the schedule (and maybe the selected step): the old refit is moved aside and
    redone, not reused."""
    store, split = tiny_data
    short = train_lib.train_and_evaluate(_config("vision", store, split, refit=True, num_epochs=2), tmp_path)
    longer = train_lib.train_and_evaluate(_config("vision", store, split, refit=True, num_epochs=3), tmp_path)
    assert longer["refit"]["schedule_steps"] == longer["total_steps"] > short["refit"]["schedule_steps"]
    assert longer["refit"]["selected_step"] == longer["best"]["step"]
    replaced = tmp_path / refit.REPLACED_DIR
    assert (replaced / "checkpoints").is_dir() and (tmp_path / refit.REFIT_DIR / "checkpoints").is_dir()
