"""When the trainer saves: validation best so far, checkpoint_every_steps after the last save, the end."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import store_and_split

from deepearth_jax import checkpoint as checkpoint_lib
from deepearth_jax import evaluation as evaluation_lib
from deepearth_jax import train as train_lib
from deepearth_jax.config_utils import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedule")
    store_and_split(root)
    return root


def _train(
    tiny: Path, workdir: Path, scripted: list[float], monkeypatch, **overrides
) -> tuple[list[int], dict]:
    """Trains with scripted validation top-1 per evaluation; returns the steps saved."""
    values, saved = iter(scripted), []
    real_evaluate, real_save = evaluation_lib.Evaluator.evaluate, checkpoint_lib.Checkpointer.save

    def evaluate(self, state):
        if self.subset == "validation":
            return {"validation/top1": next(values), "validation/count": 5.0}
        return real_evaluate(self, state)

    def save(self, step, *args, **kwargs):
        saved.append(step)
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(evaluation_lib.Evaluator, "evaluate", evaluate)
    monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", save)
    values_of = {"store": tiny / "store", "split_file": tiny / "split.json", "batch_size": 16, **overrides}
    config = load_config(
        f"{ROOT}/configs/vision.py:tiny", [f"--config.{k}={v}" for k, v in values_of.items()]
    )
    summary = train_lib.train_and_evaluate(config, workdir)
    monkeypatch.undo()
    return saved, summary


def test_saves_when_validation_ranks_best_an_interval_after_the_last_save_and_at_the_end(
    tiny, tmp_path, monkeypatch
):
    scripted = [0.1, 0.9, 0.2, 0.3, 0.9, 0.5, 0.4, 0.6]
    saved, summary = _train(
        tiny, tmp_path / "w", scripted, monkeypatch, num_steps=8, eval_every_steps=1, checkpoint_every_steps=3
    )
    # 1, 2: best so far; 5: ties the best (the newer is kept), 3 steps after the last save; 8: the end.
    assert saved == [1, 2, 5, 8]
    assert summary["best"]["step"] == 5 and summary["best"]["validation/top1"] == 0.9


def test_resumed_run_knows_the_best_saved_before(tiny, tmp_path, monkeypatch):
    """A rerun going on from step 4 saves at 6 only for the interval (2 steps after the save at 4): 0.5 and
    0.4 do not beat the saved 0.9."""
    first, _ = _train(
        tiny, tmp_path / "w", [0.1, 0.9, 0.2, 0.3], monkeypatch, num_steps=4, eval_every_steps=1,
        checkpoint_every_steps=100,
    )  # fmt: skip
    assert first == [1, 2, 4]
    saved, summary = _train(
        tiny, tmp_path / "w", [0.5, 0.4, 0.95], monkeypatch, num_steps=7, eval_every_steps=1,
        checkpoint_every_steps=2,
    )  # fmt: skip
    assert saved == [6, 7]
    assert summary["best"]["step"] == 7 and summary["best"]["validation/top1"] == 0.95


def test_improves_follows_the_mode_and_ignores_missing_or_non_finite(tmp_path):
    ckpt = checkpoint_lib.Checkpointer(tmp_path / "c", best_metric="validation/loss", best_mode="min")
    try:
        assert ckpt.improves({"validation/loss": 2.0})
        assert not ckpt.improves({"validation/loss": float("nan")}) and not ckpt.improves({})
        assert not ckpt.improves(None)
        ckpt._best_value = 1.5
        assert ckpt.improves({"validation/loss": 1.5}) and not ckpt.improves({"validation/loss": 1.6})
    finally:
        ckpt.close()
