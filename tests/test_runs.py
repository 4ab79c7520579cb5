"""Runs and checkpoints under failure: divergence, two trainers on one workdir, torn files, exit codes."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import run_cli, tiny_config

from deepearth_jax import checkpoint as checkpoint_lib
from deepearth_jax import train as train_lib
from deepearth_jax import workdir as workdir_lib
from deepearth_jax.data import split as split_lib
from deepearth_jax.data.synthetic import make_synthetic_store

STEPS = 3


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs_data")
    store = make_synthetic_store(
        root / "store", observations=600, species=12, vision_shape=(2, 3, 3, 8), language_dim=16, seed=3
    )
    split_lib.write_split(split_lib.make_split(store, seed=0), root / "split.json")
    return root / "store", root / "split.json"


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A finished run of STEPS steps (one checkpoint, at STEPS); tests copy it and rerun it (no training)."""
    workdir = tmp_path_factory.mktemp("runs_base") / "w"
    config = tiny_config("vision", *tiny_data, num_steps=STEPS, eval_every_steps=2)
    summary = train_lib.train_and_evaluate(config, workdir)
    assert summary["complete"]
    return workdir, summary["params_checksum"]


def _copy(trained, tmp_path: Path) -> Path:
    workdir = tmp_path / "w"
    shutil.copytree(trained[0], workdir)
    return workdir


def _rerun(tiny_data, workdir: Path) -> dict:
    return train_lib.train_and_evaluate(tiny_config("vision", *tiny_data, num_steps=STEPS), workdir)


def _checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_second_trainer_on_a_workdir_refuses_naming_the_holder(tiny_data, trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    with workdir_lib.locked(workdir):
        held = rf"in use by another trainer \(pid {os.getpid()} on"
        with pytest.raises(workdir_lib.WorkdirError, match=held):
            _rerun(tiny_data, workdir)
        result = run_cli(["--config", "configs/vision.py:tiny", "--workdir", str(workdir)])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: workdir")
    assert f"pid {os.getpid()}" in result.stderr.strip().splitlines()[-1]
    # A lock file left by a dead process (a crash) holds no lock: the next run goes on.
    (workdir / "run.lock").write_text("pid 999999 on crashed-host\n")
    assert _rerun(tiny_data, workdir)["params_checksum"] == trained[1]


def test_unusable_workdirs_fail_in_one_line(tiny_data, tmp_path):
    as_file = tmp_path / "file"
    as_file.write_text("x")
    with pytest.raises(workdir_lib.WorkdirError, match=r"workdir .*file is a regular file"):
        train_lib.train_and_evaluate(tiny_config("vision", *tiny_data, num_steps=1), as_file)
    with pytest.raises(workdir_lib.WorkdirError, match=r"cannot create workdir .*file/sub"):
        train_lib.train_and_evaluate(tiny_config("vision", *tiny_data, num_steps=1), as_file / "sub")
    if os.geteuid() != 0:  # root reads and writes everything
        locked_out = tmp_path / "ro"
        locked_out.mkdir(mode=0o500)
        with pytest.raises(workdir_lib.WorkdirError, match="not readable and writable"):
            train_lib.train_and_evaluate(tiny_config("vision", *tiny_data, num_steps=1), locked_out)


def test_zero_steps_is_an_error_not_a_completed_run(tiny_data, tmp_path):
    config = tiny_config("vision", *tiny_data, num_steps=0, num_epochs=0)
    with pytest.raises(train_lib.TrainError, match=r"nothing to train: num_epochs=0, num_steps=0"):
        train_lib.train_and_evaluate(config, tmp_path / "w")
    assert not (tmp_path / "w" / "summary.json").exists()


def test_torn_metrics_line_is_dropped_with_a_warning(tiny_data, trained, tmp_path, caplog):
    workdir = _copy(trained, tmp_path)
    metrics = workdir / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + '{"step": 3, "epoch": 0.5, "train/lo')
    with caplog.at_level(logging.WARNING):
        assert _rerun(tiny_data, workdir)["params_checksum"] == trained[1]
    assert f"{metrics}: dropping a torn last line" in caplog.text
    assert metrics.read_text() == good
    # Damage before the last line is not a torn write: the error names the file and the line.
    metrics.write_text("not json\n" + good)
    with pytest.raises(ValueError, match=rf"{metrics}: line 1 is not a metrics record"):
        _rerun(tiny_data, workdir)


def _damage(step_dir: Path) -> None:
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and "commit_success" not in path.name:
            path.write_bytes(b"\0garbage")


def test_damaged_latest_checkpoint_falls_back_or_names_the_path(tiny_data, trained, tmp_path, caplog):
    workdir = _copy(trained, tmp_path)
    newer = workdir / "checkpoints" / "7"
    shutil.copytree(workdir / "checkpoints" / str(STEPS), newer)
    _damage(newer)
    with caplog.at_level(logging.WARNING):
        summary = _rerun(tiny_data, workdir)
    assert f"checkpoint {newer} is damaged" in caplog.text
    assert summary["steps"] == STEPS and summary["params_checksum"] == trained[1]
    # ... and set aside (kept for inspection), so step 7 can be saved again.
    assert not newer.exists() and _checkpoint_steps(workdir) == [STEPS]
    assert [p.name.split("-")[0] for p in (workdir / "checkpoints.damaged").iterdir()] == ["7"]
    _damage(workdir / "checkpoints" / str(STEPS))
    with pytest.raises(ValueError, match=rf"no intact checkpoint in {workdir / 'checkpoints'}"):
        _rerun(tiny_data, workdir)


def test_non_finite_checkpoint_on_disk_is_never_resumed(tiny_data, trained, tmp_path, caplog):
    workdir = _copy(trained, tmp_path)
    from deepearth_jax.evaluate import restore_run

    run = restore_run(workdir, "latest")
    ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints", best_metric="test/top1")
    _, data_state, meta = ckpt.restore(STEPS, run.state)
    poisoned = jax.tree.map(lambda x: x * jnp.nan if jnp.issubdtype(x.dtype, jnp.floating) else x, run.state)
    assert not checkpoint_lib.all_finite(poisoned) and checkpoint_lib.all_finite(run.state)
    ckpt.save(STEPS + 1, poisoned, data_state=data_state, meta=meta, force=True)
    ckpt.close()
    with caplog.at_level(logging.WARNING):
        summary = train_lib.train_and_evaluate(
            tiny_config("vision", *tiny_data, num_steps=STEPS + 1), workdir
        )
    assert f"checkpoint {workdir / 'checkpoints' / str(STEPS + 1)} is damaged: non-finite" in caplog.text
    assert summary["steps"] == STEPS + 1 and np.isfinite(summary["final"]["test/loss"])


def test_divergence_never_saves_non_finite_state(tiny_data, tmp_path):
    config = tiny_config("vision", *tiny_data, num_steps=20, log_every_steps=1000, checkpoint_every_steps=1)
    config.optimizer.lr = 1e30
    with pytest.raises(train_lib.TrainError, match=r"non-finite parameters at step \d+, not saved") as e:
        train_lib.train_and_evaluate(config, tmp_path / "w")
    good = str(e.value).split("last good checkpoint: step ")[1].split()[0]
    saved = _checkpoint_steps(tmp_path / "w")
    assert good == (str(saved[-1]) if saved else "none")
    from deepearth_jax.evaluate import restore_run

    for step in saved:
        assert checkpoint_lib.all_finite(restore_run(tmp_path / "w", str(step)).state)
