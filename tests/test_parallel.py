"""Data parallelism: 8 CPU devices == 1 device, and a real two-process jax.distributed run on localhost."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from deepearth_jax import parallel, steps
from deepearth_jax.data import split as split_lib
from deepearth_jax.data.synthetic import make_synthetic_store
from deepearth_jax.evaluate import restore_run
from deepearth_jax.io import file_sha256

ROOT = Path(__file__).resolve().parents[1]
NUM_STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    store = make_synthetic_store(
        root / "store", observations=500, species=8, vision_shape=(2, 2, 2, 8), language_dim=16, seed=5
    )
    split_lib.write_split(split_lib.make_split(store, seed=0), root / "split.json")
    return root / "store", root / "split.json"


def _train_args(data, workdir: Path, *extra: str) -> list[str]:
    store, split = data
    return [
        sys.executable, "-m", "deepearth_jax.train", "--config", "configs/vision.py:tiny",
        "--workdir", str(workdir),
        f"--config.store={store}", f"--config.split_file={split}", f"--config.num_steps={NUM_STEPS}",
        "--config.batch_size=16", "--config.eval_every_steps=1000", "--config.model.dropout=0.0", *extra,
    ]  # fmt: skip


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _params(workdir: Path) -> list[np.ndarray]:
    run = restore_run(workdir, "latest")
    assert run.step == NUM_STEPS
    return [np.asarray(jax.device_get(x)) for x in jax.tree.leaves(steps.model_params(run.state))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_device_params(data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one")
    out = _run(_train_args(data, workdir / "w"), {"JAX_NUM_CPU_DEVICES": "1"})
    assert "devices: 1" in out.stdout
    return _params(workdir / "w")


def test_eight_devices_match_one_device(data, tmp_path, one_device_params):
    out = _run(_train_args(data, tmp_path / "w8"), {"JAX_NUM_CPU_DEVICES": "8"})
    assert "devices: 8" in out.stdout
    for a, b in zip(one_device_params, _params(tmp_path / "w8"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_two_processes_match_one_process(data, tmp_path, one_device_params):
    port = _free_port()
    procs = []
    for pid in range(2):
        args = _train_args(
            data,
            tmp_path / "w2",
            "--config.distributed.mode=on",
            f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            "--config.distributed.num_processes=2",
            f"--config.distributed.process_id={pid}",
            "--config.split_file=",  # process 0 writes the default split; process 1 waits at a barrier
        )
        env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}
        procs.append(
            subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "devices: 2" in outs[0][0] and "processes: 2" in outs[0][0]
    assert "devices:" not in outs[1][0]  # only process 0 reports
    # Both processes read the one split process 0 wrote (the default split; its rows are the fixture's,
    # so the parameters below match the one-process run).
    default = tmp_path / "w2" / "split.json"
    seen = {err.split(f"split: {default} (sha256 ")[1][:64] for _out, err in outs}
    assert seen == {file_sha256(default)}
    for a, b in zip(one_device_params, _params(tmp_path / "w2"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_param_sharding_rule_splits_large_kernels_only():
    mesh = parallel.make_mesh(-1)
    rule = parallel.param_sharding_rule(mesh, shard_params=True, min_size=16)
    size = mesh.shape["data"]
    expected = jax.sharding.PartitionSpec("data", None) if size > 1 else jax.sharding.PartitionSpec()
    assert rule((64 * size, 3)).spec == expected
    assert rule((2, 2)).spec == jax.sharding.PartitionSpec()
    assert (
        parallel.param_sharding_rule(mesh, shard_params=False)((1 << 20,)).spec
        == jax.sharding.PartitionSpec()
    )


def test_global_batch_must_divide_over_devices():
    mesh = parallel.make_mesh(-1)
    assert parallel.check_global_batch(8 * mesh.shape["data"], mesh) == 8 * mesh.shape["data"]
    if mesh.shape["data"] > 1:
        with pytest.raises(ValueError, match="not divisible"):
            parallel.check_global_batch(mesh.shape["data"] + 1, mesh)
    with pytest.raises(ValueError, match="device"):
        parallel.make_mesh(len(jax.devices()) + 1)


def _two_processes(data, workdir: Path, logs: Path, *extra: str, env: dict | None = None) -> list:
    """`[(process, its log file)]`: processes 0 and 1 of a two-process run on localhost."""
    port, procs = _free_port(), []
    logs.mkdir(parents=True, exist_ok=True)
    for pid in range(2):
        args = _train_args(
            data,
            workdir,
            "--config.distributed.mode=on",
            f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            "--config.distributed.num_processes=2",
            f"--config.distributed.process_id={pid}",
            *extra,
        )
        with open(logs / f"{pid}.log", "w") as out:
            proc = subprocess.Popen(
                args,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "JAX_NUM_CPU_DEVICES": "1", **(env or {})},
            )
        procs.append((proc, logs / f"{pid}.log"))
    return procs


def _wait_all(procs: list, timeout: float) -> list[tuple[int, str]]:
    """`(exit status, output)` of each process; kills all and fails when any is still running at `timeout`."""
    deadline = time.monotonic() + timeout
    try:
        for p, _ in procs:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for p, _ in procs:
            p.kill()
        for p, _ in procs:
            p.wait()
        tails = "\n".join(log.read_text()[-1500:] for _, log in procs)
        pytest.fail(f"the processes did not all end within {timeout:.0f} s (a hang):\n{tails}")
    return [(p.returncode, log.read_text()) for p, log in procs]


def _checkpoint_steps(workdir: Path) -> list[int]:
    root = workdir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


RUN = ["--config.steps_per_call=2", "--config.checkpoint_every_steps=10", "--config.log_every_steps=1000"]


def _sigterm_one_of_two(data, tmp_path: Path, env: dict | None = None) -> tuple[int, list[str]]:
    """Starts a long two-process run, sends SIGTERM to process 1 only once both are in the loop (a
    scheduler signals hosts one by one) and checks that both save the same step and exit 143 within a
    bounded time; returns `(that step, each process's output)`."""
    procs = _two_processes(
        data, tmp_path / "w", tmp_path / "logs", *RUN, "--config.num_steps=100000", env=env
    )
    deadline = time.monotonic() + 240
    while not _checkpoint_steps(tmp_path / "w"):  # both are in the loop (the first save is collective)
        if any(p.poll() is not None for p, _ in procs) or time.monotonic() > deadline:
            _wait_all(procs, timeout=1)
            pytest.fail("the run ended or stalled before its first checkpoint")
        time.sleep(0.1)
    procs[1][0].send_signal(signal.SIGTERM)
    ended = _wait_all(procs, timeout=120)
    stopped = []
    for pid, (code, out) in enumerate(ended):
        assert code == 143, out[-3000:]
        stopped.append(int(out.split(f"SIGTERM: process {pid} of 2 stops at step ")[1].split()[0]))
    step = stopped[0]
    assert stopped == [step, step] and _checkpoint_steps(tmp_path / "w")[-1] == step
    assert f"SIGTERM: saved step {step} " in ended[0][1]
    return step, [out for _, out in ended]


def test_sigterm_on_one_process_stops_both_at_the_same_step(data, tmp_path):
    """Through JAX's preemption sync point; rerunning both resumes bit-identically to an uninterrupted run."""
    step, outs = _sigterm_one_of_two(data, tmp_path)
    assert all("(agreed: jax)" in out for out in outs)
    # Resume both to step + 4, beside an uninterrupted run of step + 4 (constant learning rate: the run
    # length changes nothing else).
    more = [*RUN, f"--config.num_steps={step + 4}"]
    resumed = _two_processes(data, tmp_path / "w", tmp_path / "logs_resumed", *more)
    reference = _two_processes(data, tmp_path / "ref", tmp_path / "logs_ref", *more)
    for code, out in _wait_all(resumed + reference, timeout=300):
        assert code == 0, out[-3000:]
    assert f"resuming from step {step}" in (tmp_path / "logs_resumed" / "0.log").read_text()
    got = json.loads((tmp_path / "w" / "summary.json").read_text())
    ref = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert got["steps"] == ref["steps"] == step + 4
    assert got["params_checksum"] == ref["params_checksum"]


def test_sigterm_on_one_process_without_jax_preemption_service(data, tmp_path):
    """With JAX's preemption service off, the processes agree by an allgather of their flags per call."""
    _, outs = _sigterm_one_of_two(data, tmp_path, env={"JAX_ENABLE_PREEMPTION_SERVICE": "false"})
    assert all("(agreed: allgather)" in out for out in outs)
