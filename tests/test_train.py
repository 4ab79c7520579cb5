"""The trainer end to end on tiny stores: every config, SIGKILL resume, SIGTERM, evaluation, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deepearth_jax import evaluate as evaluate_lib
from deepearth_jax import train as train_lib
from deepearth_jax.config_utils import load_config
from deepearth_jax.data import split as split_lib
from deepearth_jax.data import store as store_lib
from deepearth_jax.data import store_writer
from deepearth_jax.data.synthetic import make_synthetic_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A tiny store (600 observations, 12 species, vision (2, 3, 3, 8), language 16) and its default split."""
    root = tmp_path_factory.mktemp("train_data")
    store = make_synthetic_store(
        root / "store", observations=600, species=12, vision_shape=(2, 3, 3, 8), language_dim=16, seed=3
    )
    split_path = root / "split.json"
    split_lib.write_split(split_lib.make_split(store, seed=0), split_path)
    return root / "store", split_path


def tiny_config(name: str, store: Path, split: Path, **overrides):
    values = {"store": store, "split_file": split, **overrides}
    return load_config(f"{ROOT}/configs/{name}.py:tiny", [f"--config.{k}={v}" for k, v in values.items()])


def run_cli(args: list[str], env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deepearth_jax.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("name", ["vision", "language", "mae", "attentive_probe"])
def test_each_config_trains_and_reports(tiny_data, tmp_path, name):
    store, split = tiny_data
    config = tiny_config(name, store, split, num_steps=3, log_every_steps=1)
    summary = train_lib.train_and_evaluate(config, tmp_path / "w")
    assert summary["steps"] == 3 and summary["complete"]
    assert len(summary["params_checksum"]) == 64
    rows = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3]
    assert all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
    assert not any("test/count" in r for r in rows)  # the loop evaluates on validation only
    metric = "retrieval_top1" if name == "mae" else "top1"
    assert 0.0 <= [r for r in rows if "validation/count" in r][-1][f"validation/{metric}"] <= 1.0
    for entry in (summary["best"], summary["final"]):
        low, high = entry[f"test/{metric}_ci"]
        assert low <= entry[f"test/{metric}"] <= high
    assert (tmp_path / "w" / "curves.png").stat().st_size > 10_000
    assert (tmp_path / "w" / "summary.json").exists()
    assert any((tmp_path / "w" / "tensorboard").iterdir())


def test_evaluation_counts_every_test_example_once(tiny_data, tmp_path):
    store, split = tiny_data
    config = tiny_config("vision", store, split, num_steps=2, batch_size=16)
    train_lib.train_and_evaluate(config, tmp_path / "w")
    metrics = evaluate_lib.evaluate_workdir(tmp_path / "w")
    opened = store_lib.open_store(store)
    test_rows = split_lib.load_split(split).rows(opened, "test")
    usable = test_rows[opened.column("vision_row")[test_rows] >= 0]
    assert metrics["test/count"] == len(usable)
    import pyarrow.parquet as pq

    predictions = pq.read_table(tmp_path / "w" / "eval_test" / "predictions.parquet")
    ids = predictions.column("observation_id").to_pylist()
    assert sorted(ids) == sorted(opened.observation_ids[usable].tolist())
    # Hand-computed top-1 from the per-observation predictions equals the reported metric.
    correct = np.asarray(predictions.column("correct").to_pylist())
    assert metrics["test/top1"] == pytest.approx(correct.mean())
    assert (tmp_path / "w" / "eval_test" / "confusion.png").exists()
    assert (tmp_path / "w" / "eval_test" / "per_species.csv").read_text().startswith("species,examples")


def test_k_steps_per_call_gives_the_same_parameters(tiny_data, tmp_path):
    store, split = tiny_data
    sums = []
    for k in (1, 4):
        config = tiny_config("language", store, split, num_steps=10, steps_per_call=k, eval_every_steps=100)
        sums.append(train_lib.train_and_evaluate(config, tmp_path / f"k{k}")["params_checksum"])
    assert sums[0] == sums[1]


def test_device_epochs_train_whole_epochs_on_device(tiny_data, tmp_path):
    store, split = tiny_data
    config = tiny_config("language", store, split, device_epochs="true", num_epochs=3)
    summary = train_lib.train_and_evaluate(config, tmp_path / "w")
    rows = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["epoch"] for r in train_rows] == [1.0, 2.0, 3.0]
    # Every training example once per epoch: the padded last batch is masked, not dropped.
    opened = store_lib.open_store(store)
    n_train = len(split_lib.load_split(split).rows(opened, "train"))
    assert all(r["train/count"] == n_train for r in train_rows)
    assert train_rows[-1]["train/loss"] < train_rows[0]["train/loss"]
    assert summary["complete"]
    with pytest.raises(train_lib.TrainError, match="device_epochs needs"):
        train_lib.train_and_evaluate(
            tiny_config("attentive_probe", store, split, device_epochs="true"), tmp_path / "x"
        )


def _wait_for_checkpoint(workdir: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ckpts = workdir / "checkpoints"
        if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


def test_sigkill_then_rerun_ends_bit_identical(tiny_data, tmp_path):
    store, split = tiny_data
    args = [
        "--config", "configs/vision.py:tiny",
        f"--config.store={store}", f"--config.split_file={split}",
        "--config.num_steps=60", "--config.checkpoint_every_steps=7", "--config.eval_every_steps=25",
    ]  # fmt: skip
    reference = run_cli([*args, "--workdir", str(tmp_path / "ref")])
    assert reference.returncode == 0, reference.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepearth_jax.train", *args, "--workdir", str(tmp_path / "killed")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for_checkpoint(tmp_path / "killed", proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli([*args, "--workdir", str(tmp_path / "killed")])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step" in resumed.stdout
    ref = json.loads((tmp_path / "ref" / "summary.json").read_text())
    got = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert got["steps"] == ref["steps"] == 60
    assert got["params_checksum"] == ref["params_checksum"]


def test_sigterm_saves_and_stops_cleanly(tiny_data, tmp_path):
    store, split = tiny_data
    args = [
        "--config", "configs/vision.py:tiny", "--workdir", str(tmp_path / "w"),
        f"--config.store={store}", f"--config.split_file={split}",
        "--config.num_steps=100000", "--config.checkpoint_every_steps=50", "--config.eval_every_steps=100000",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepearth_jax.train", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for_checkpoint(tmp_path / "w", proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # a second one (an impatient scheduler) changes nothing
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err  # 128 + SIGTERM: the scheduler requeues the job
    assert "SIGTERM: saved step" in out
    saved = int(out.split("SIGTERM: saved step ")[1].split()[0])
    steps = sorted(int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == saved


def test_bad_input_gives_one_line_errors(tiny_data, tmp_path, capsys):
    store, split = tiny_data
    cases = [
        ([f"--config.store={tmp_path / 'nowhere'}", f"--config.split_file={split}"], "no store at"),
        ([f"--config.store={store}", f"--config.split_file={tmp_path / 'none.json'}"], "does not exist"),
        (
            [f"--config.store={store}", f"--config.split_file={split}", "--config.batch_size=100000"],
            "larger than",
        ),
        ([f"--config.store={store}", f"--config.split_file={split}", "--config.model.name=resnet"], "resnet"),
        ([f"--config.store={store}", f"--config.split_file={split}", "--config.mode=audio"], "unknown mode"),
        (["--config.optimizr.lr=1"], "did you mean optimizer"),
        (["--config.batch_size=1.5"], "--config.batch_size=1.5: invalid literal for int()"),
        (["--config.store"], "overrides look like --config.FIELD=VALUE"),
    ]
    for extra, message in cases:
        code = train_lib.main(
            ["--config", f"{ROOT}/configs/vision.py:tiny", "--workdir", str(tmp_path / "w"), *extra]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (extra, err)
        assert err[-1].startswith("error: ") and message in err[-1], (extra, err[-1])


def test_bad_data_fails_before_compiling(tiny_data, tmp_path):
    store, split = tiny_data
    opened = store_lib.open_store(store)
    # A split naming ids the store lacks.
    other = make_synthetic_store(
        tmp_path / "other", observations=300, species=6, vision_shape=(1, 1, 1, 4), language_dim=4, seed=11
    )
    foreign = tmp_path / "foreign.json"
    split_lib.write_split(split_lib.make_split(other, num_regions=1, seed=0), foreign)
    with pytest.raises(ValueError, match=r"names \d+ observation id\(s\) that store .* lacks"):
        train_lib.train_and_evaluate(tiny_config("vision", store, foreign), tmp_path / "w1")

    # An empty training set.
    payload = json.loads(split.read_text())
    for mapping in payload["observation_mappings"].values():
        mapping["split"], mapping["split_reason"] = "test", "temporal_test"
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(payload))
    with pytest.raises(train_lib.TrainError, match="training set is empty"):
        train_lib.train_and_evaluate(tiny_config("vision", store, empty), tmp_path / "w2")

    # A vision mode on a store without vision embeddings.
    writer = store_writer.StoreWriter(
        tmp_path / "novision",
        num_vision_rows=0,
        vision_shape=None,
        num_language_rows=opened.language.shape[0],
        language_dim=opened.language.shape[1],
        provenance={"source_layout": "test"},
    )
    writer.language[:] = opened.language
    import pyarrow as pa

    table = opened.observations.set_column(
        opened.observations.schema.get_field_index("vision_row"),
        "vision_row",
        pa.array(np.full(opened.num_observations, -1, np.int64)),
    )
    writer.finalize(table, opened.species)
    with pytest.raises(ValueError, match="needs vision embeddings"):
        train_lib.train_and_evaluate(tiny_config("vision", tmp_path / "novision", split), tmp_path / "w3")
    # ... while the language model trains on it.
    config = tiny_config("language", tmp_path / "novision", split, num_steps=1)
    assert train_lib.train_and_evaluate(config, tmp_path / "w4")["steps"] == 1


def test_non_finite_loss_stops_with_the_step(tiny_data, tmp_path):
    store, split = tiny_data
    config = tiny_config("vision", store, split, num_steps=20, log_every_steps=2)
    config.optimizer.lr = 1e30
    with pytest.raises(
        train_lib.TrainError, match=r"non-finite training metrics at step \d+.*last good checkpoint"
    ):
        train_lib.train_and_evaluate(config, tmp_path / "w")


def test_block_cv_fold_is_the_test_set(tiny_data, tmp_path):
    store, _ = tiny_data
    opened = store_lib.open_store(store)
    folds_path = tmp_path / "folds.json"
    payload = split_lib.make_split(opened, num_regions=1, folds=3, block_km=15.0, buffer_km=2.0, seed=0)
    split_lib.write_split(payload, folds_path)
    split = split_lib.load_split(folds_path)
    for fold in (0, 2):
        config = tiny_config("vision", store, folds_path, num_steps=2, fold=fold)
        final = train_lib.train_and_evaluate(config, tmp_path / f"w{fold}")["final"]
        test_rows = split.rows(opened, "test", fold=fold)
        train_rows = split.rows(opened, "train", fold=fold)
        assert not set(test_rows.tolist()) & set(train_rows.tolist())
        usable = test_rows[opened.column("vision_row")[test_rows] >= 0]
        assert final["test/count"] == len(usable)
        assert final["test/fold/count"] == len(usable)  # every test row is reported under its fold reason


def test_itstime_fires_once_per_crossed_multiple_and_at_the_end():
    due = [s for s in range(1, 11) if train_lib.itstime(s, 3, 10)]
    assert due == [3, 6, 9, 10]
    # Calls of K=4 steps: (0, 4] holds 3, (4, 8] holds 6, (8, 12] holds 9 and the end.
    assert [train_lib.itstime(s, 3, 12, advanced=4) for s in (4, 8, 12)] == [True, True, True]
    assert not train_lib.itstime(5, 0, 10) and not train_lib.itstime(5, -1, 10)
    assert not train_lib.itstime(10, 3, 10, last=False)


def test_unknown_task_names_the_known_ones(tiny_data):
    from deepearth_jax import tasks

    store, split = tiny_data
    with pytest.raises(
        ValueError,
        match="unknown task 'ranking'; known: classification, fusion, geo_presence, masked_autoencoding",
    ):
        tasks.from_config(tiny_config("vision", store, split, task="ranking"))
