"""StopOnSigterm in one process: how the processes agree, the counter JAX's sync point gets, the handlers.

The real two-process runs (SIGTERM on one process only) are in test_parallel.py.
"""

from __future__ import annotations

import os
import signal

import jax
import orbax.checkpoint as ocp
import pytest
from jax.experimental import multihost_utils

from deepearth_jax import checkpoint as checkpoint_lib


@pytest.fixture
def keep_sigterm_handler():
    """A stopping StopOnSigterm keeps its handler on purpose; the test process gets its own back."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_one_process_stops_after_the_call_that_sigterm_interrupted(keep_sigterm_handler):
    with checkpoint_lib.StopOnSigterm() as stopper:
        assert stopper.how == "local"
        assert not stopper.reached(2)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a second one: still one stop, no exit
        assert stopper.reached(4) and stopper.reached(6) and stopper.requested
    assert signal.getsignal(signal.SIGTERM) == stopper._handle  # ignored until the process exits


def test_an_uninterrupted_loop_gives_the_handler_back():
    previous = signal.getsignal(signal.SIGTERM)
    with checkpoint_lib.StopOnSigterm() as stopper:
        assert signal.getsignal(signal.SIGTERM) == stopper._handle
        assert not stopper.reached(1)
    assert signal.getsignal(signal.SIGTERM) == previous


def test_several_processes_ask_jax_once_per_call_with_the_call_count(monkeypatch):
    asked = []

    def sync_point(counter: int) -> bool:
        asked.append(counter)
        return counter == 3  # JAX's agreed call: the furthest process's counter + 1

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", sync_point)
    previous = signal.getsignal(signal.SIGTERM)
    with checkpoint_lib.StopOnSigterm() as stopper:
        assert stopper.how == "jax"
        assert signal.getsignal(signal.SIGTERM) == previous  # JAX's own handler is left in place
        # K = 100 steps per call: the counter is the call's number (the sync point is "counter + 1").
        assert [stopper.reached(step) for step in (100, 200, 300, 400)] == [False, False, True, True]
    assert asked == [0, 1, 2, 3]  # 0: the probe that the service is on; none after the stop


def test_several_processes_without_the_service_allgather_their_flags(monkeypatch, keep_sigterm_handler):
    def service_off(counter: int) -> bool:
        raise RuntimeError("Preemption sync manager has not been initialized.")

    gathered = []

    def allgather(flag):
        gathered.append(int(flag))
        return [int(flag), 1 if len(gathered) >= 2 else 0]  # the other process is signalled at call 2

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", service_off)
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    with checkpoint_lib.StopOnSigterm() as stopper:
        assert stopper.how == "allgather"
        assert [stopper.reached(step) for step in (1, 2, 3)] == [False, True, True]
    assert gathered == [0, 0]  # this process was never signalled; it stops with the other


def test_a_python_sigterm_handler_means_jax_never_hears_the_signal(monkeypatch, keep_sigterm_handler):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda counter: False)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # someone's, installed after JAX's
    assert checkpoint_lib.StopOnSigterm().how == "allgather"


def test_orbax_leaves_the_sync_point_to_the_loop(tmp_path):
    # Orbax asks the sync point with the saved step (its save and its finalize thread); the override keeps
    # the loop's call counter the only one. It must override a method Orbax still has.
    assert callable(getattr(ocp.CheckpointManager, "reached_preemption", None))
    checkpointer = checkpoint_lib.Checkpointer(tmp_path / "c", best_metric="validation/top1")
    try:
        assert checkpointer.manager.reached_preemption(7) is False
    finally:
        checkpointer.close()
