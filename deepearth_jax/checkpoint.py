"""Orbax checkpoints: model + optimizer + RNG state, the data iterator, the config and the species map.

One `CheckpointManager` under `<workdir>/checkpoints` keeps the latest checkpoint and the best one by a
configured metric, saves asynchronously (orbax writes to a temporary directory and renames it when done, so
a run killed mid-save leaves the previous checkpoint intact), and is closed on every exit path.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as ocm

from deepearth_jax.errors import ConfigError, WorkdirError

log = logging.getLogger(__name__)


class _QuietOrbax(logging.Filter):
    """Checkpoints between evals carry no metrics on purpose; orbax warns about each one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietOrbax())

# Fields a resumed run may change (the length of training and how often things happen); any other change
# means a different run, which must not silently continue this one's checkpoint.
RESUMABLE_CHANGES = {
    "num_epochs",
    "num_steps",
    "log_every_steps",
    "eval_every_steps",
    "eval_batch_size",
    "checkpoint_every_steps",
    "data",
    "distributed",
    "allow_missing",
    "refit",  # the refit phase (refit.py) runs after the main run; turning it on later reuses the run
    "profile_steps",
}


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_saveable(state: Any) -> Any:
    """Typed PRNG keys are stored as their raw uint32 data."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)


def _abstract(state: Any) -> Any:
    def leaf(x):
        if _is_key(x):
            x = jax.random.key_data(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(leaf, state)


def _from_saveable(restored: Any, template: Any) -> Any:
    def leaf(r, t):
        if _is_key(t):
            return jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
        return r

    return jax.tree.map(leaf, restored, template)


@jax.jit
def _finite(leaves: list) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_finite(state: Any) -> bool:
    """Whether every floating-point leaf of `state` (parameters, optimizer moments) is finite.

    One jitted reduction on device; only the resulting bool crosses to the host.
    """
    leaves = [
        x for x in jax.tree.leaves(state) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return True if not leaves else bool(_finite(leaves))


class _Manager(ocp.CheckpointManager):
    """Orbax's manager, except that it leaves JAX's preemption sync point to the loop (`StopOnSigterm`).

    Orbax asks it with the step being saved (from `save`, and later from its finalize thread); the sync
    point compares one counter per process, so those calls would overwrite the loop's (one per loop call)
    and could put the agreed stopping call out of reach (e.g. 2 x the steps when K = 2)."""

    def reached_preemption(self, step: int) -> bool:
        return False


class Checkpointer:
    """Latest + best checkpoints of a training run in `directory`.

    Args:
      directory: where step directories go (created).
      best_metric: the metric ranking checkpoints (e.g. "test/top1"); only checkpoints saved
        with metrics take part.
      best_mode: "max" or "min".
      async_save: save in a background thread (the step loop goes on).
    """

    def __init__(
        self, directory: str | Path, *, best_metric: str, best_mode: str = "max", async_save: bool = True
    ):
        if best_mode not in ("max", "min"):
            raise ConfigError(f"best_mode must be max or min, got {best_mode!r}")
        self.best_metric = best_metric
        self.best_mode = best_mode
        directory = Path(directory).absolute()

        def metric_of(metrics: dict) -> float:
            value = metrics.get(best_metric, float("nan"))
            return float("-inf") if not np.isfinite(value) else float(value)

        policy = ocm.AnyPreservationPolicy(
            [
                ocm.LatestN(n=1),
                ocm.BestN(
                    get_metric_fn=metric_of if best_mode == "max" else (lambda m: -metric_of(m)),
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        # best_fn also makes orbax persist each step's metrics, so the ranking survives a restart.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=metric_of,
            best_mode=best_mode,
            keep_checkpoints_without_metrics=False,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = _Manager(directory, options=options)
        self._best_value: float | None = None  # of the saved checkpoints; read from disk when first needed

    @property
    def directory(self) -> Path:
        return Path(self.manager.directory)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The step whose saved metrics rank best (None when no checkpoint has metrics)."""
        best, best_value = None, None
        for step in self.manager.all_steps():
            metrics = self.manager.metrics(step) or {}
            value = metrics.get(self.best_metric)
            if value is None or not np.isfinite(value):
                continue
            better = best_value is None or (
                value > best_value if self.best_mode == "max" else value < best_value
            )
            if better:
                best, best_value = step, value
        return best

    def _metric(self, metrics: dict | None) -> float | None:
        value = None if metrics is None else metrics.get(self.best_metric)
        return None if value is None or not np.isfinite(value) else float(value)

    def improves(self, metrics: dict | None) -> bool:
        """Whether `metrics` rank at least as well as every saved checkpoint's (a tie too: the newer of equal
        checkpoints is the one kept); False when the metric is missing or not finite."""
        value = self._metric(metrics)
        if value is None:
            return False
        if self._best_value is None:
            best_step = self.best_step()
            if best_step is None:
                return True
            self._best_value = self._metric(self.manager.metrics(best_step))
        if self._best_value is None:
            return True
        return value >= self._best_value if self.best_mode == "max" else value <= self._best_value

    def save(
        self,
        step: int,
        state: Any,
        *,
        data_state: dict,
        meta: dict,
        metrics: dict | None = None,
        force: bool = False,
    ) -> bool:
        """Saves (asynchronously) the train state, the data iterator state and the metadata at `step`."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_to_saveable(state)),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        )
        clean_metrics = None
        if metrics is not None:
            clean_metrics = {k: float(v) for k, v in metrics.items() if np.isscalar(v) or np.ndim(v) == 0}
            if self.improves(clean_metrics):
                self._best_value = self._metric(clean_metrics)
        return self.manager.save(step, args=args, metrics=clean_metrics, force=force)

    def restore(self, step: int, state_template: Any) -> tuple[Any, dict, dict]:
        """Restores `(state, data_state, meta)` of `step`, with the shardings of `state_template`."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(state_template)),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        )
        restored = self.manager.restore(step, args=args)
        return _from_saveable(restored["state"], state_template), restored["data"], restored["meta"]

    def restore_meta(self, step: int) -> dict:
        """Only the metadata (config, species map, step) of `step`."""
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_same_run(
    checkpointer: Checkpointer, state: Any, meta: dict, workdir: Path
) -> tuple[Any, dict, int]:
    """`(state, data_state, step)` of the newest intact, finite checkpoint, or `(state, {}, 0)` when none.

    A damaged or non-finite newer checkpoint is skipped with a warning naming its path and moved to
    `checkpoints.damaged/`; ValueError when every checkpoint is damaged.

    Raises ValueError when the checkpoint belongs to another run: a config differing beyond
    RESUMABLE_CHANGES, or another species map (`meta["class_species"]`).
    """
    steps = sorted(checkpointer.manager.all_steps(), reverse=True)
    if not steps:
        return state, {}, 0
    for step in steps:
        why = _why_unusable(checkpointer, step, state, meta, workdir)
        if isinstance(why, str):
            log.warning("checkpoint %s is damaged: %s", checkpointer.directory / str(step), why)
            continue
        _set_aside(checkpointer, [s for s in steps if s > step])
        restored, data_state = why
        return restored, data_state, step
    raise WorkdirError(
        f"no intact checkpoint in {checkpointer.directory} (tried steps {steps}); "
        "move it away or use another --workdir"
    )


def _why_unusable(checkpointer: Checkpointer, step: int, state: Any, meta: dict, workdir: Path):
    """`(state, data_state)` of `step`, or why it cannot be resumed (damaged files, non-finite values)."""
    try:
        saved = checkpointer.restore_meta(step)
    except Exception as e:  # noqa: BLE001 - any damage (truncated JSON, missing files) means "skip it"
        return f"unreadable metadata ({type(e).__name__})"
    _check_same_run(saved, meta, workdir)
    try:
        restored, data_state, _ = checkpointer.restore(step, state)
    except Exception as e:  # noqa: BLE001
        return f"unreadable state ({type(e).__name__}: {str(e)[:200]})"
    if not all_finite(restored):
        return "non-finite parameters"
    return restored, data_state


def _set_aside(checkpointer: Checkpointer, steps: list[int]) -> None:
    """Moves unusable checkpoints to `checkpoints.damaged/` (kept for inspection), so their steps can be
    saved again; process 0 moves, every process then rereads the directory."""
    if not steps:
        return
    if jax.process_index() == 0:
        aside = checkpointer.directory.with_name(checkpointer.directory.name + ".damaged")
        aside.mkdir(exist_ok=True)
        for step in steps:
            target = aside / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
            (checkpointer.directory / str(step)).rename(target)
            log.warning("moved the damaged checkpoint of step %d to %s", step, target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("damaged checkpoints set aside")
    checkpointer.manager.reload()


def _check_same_run(saved: dict, meta: dict, workdir: Path) -> None:
    """ValueError when `saved` belongs to another run (config beyond RESUMABLE_CHANGES or species map)."""
    changed = sorted(
        k
        for k in set(saved["config"]) | set(meta["config"])
        if k not in RESUMABLE_CHANGES and saved["config"].get(k) != meta["config"].get(k)
    )
    if changed:
        raise WorkdirError(
            f"workdir {workdir} holds a run with a different config ({', '.join(changed)} differ); "
            "use another --workdir or the same config"
        )
    if saved["class_species"] != meta["class_species"]:
        raise WorkdirError(f"workdir {workdir} was trained with another species map (another store or split)")


class StopOnSigterm:
    """SIGTERM -> save and stop at a loop call that every process agrees on, so all save the same step.

    Every process asks `reached(step)` once per loop call, in the same order (the loop is the same program
    on every host); it answers True, from then on, on the call at which the run saves and stops. How the
    processes agree (`how`):

    - "local" (one process): this handler's flag; the call the signal arrived in is the last.
    - "jax" (several processes, JAX's preemption service, on by default in `jax.distributed.initialize`):
      JAX's own SIGTERM handler tells the coordination service, which tells every process; they agree in
      the background on the call after the furthest one (`multihost_utils.reached_preemption_sync_point`,
      what Orbax's `CheckpointManager.reached_preemption` and MaxText ask). No Python handler is installed:
      it would replace JAX's. The counter passed is the number of calls, not the step (a call advances K
      steps; the protocol's sync point is "furthest counter + 1"); so that the loop alone sets that counter,
      the Checkpointer's Orbax manager does not ask the sync point itself (`_Manager`).
    - "allgather" (several processes without that service: `jax_enable_preemption_service=False`, or its
      handler replaced by someone's Python one): this handler's flag, OR-ed over processes by one tiny
      allgather per call (a host sync per call).
    """

    def __init__(self) -> None:
        self.requested = False  # agreed: this process saves and stops at the current call
        self._signalled = False  # this process received SIGTERM (modes "local" and "allgather")
        self._previous = None
        self._calls = 0
        self.how = _agreement()

    def __enter__(self) -> StopOnSigterm:
        if self.how != "jax" and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self._signalled = True  # a second SIGTERM changes nothing: the first's save is one call away

    def reached(self, step: int) -> bool:
        """Whether the run saves and stops after this call (`step`: the step reached, for the log)."""
        if self.requested:
            return True
        self._calls += 1
        if self.how == "jax":
            agreed = multihost_utils.reached_preemption_sync_point(self._calls)
        elif self.how == "allgather":
            flags = multihost_utils.process_allgather(np.asarray(self._signalled, np.int32))
            agreed = bool(np.any(flags))
        else:
            agreed = self._signalled
        if agreed:
            self.requested = True
            log.warning(
                "SIGTERM: process %d of %d stops at step %d (agreed: %s)",
                jax.process_index(),
                jax.process_count(),
                step,
                self.how,
            )
        return self.requested

    def __exit__(self, *exc) -> None:
        # A stopping run keeps ignoring SIGTERM until it exits (143): the save it waits for and its summary
        # are not cut short by a second one (the scheduler's SIGKILL stays the hard stop).
        if self._previous is not None and not self.requested:
            signal.signal(signal.SIGTERM, self._previous)


def _agreement() -> str:
    """How the processes agree on the stopping call: "local", "jax" or "allgather" (see StopOnSigterm)."""
    if jax.process_count() == 1:
        return "local"
    try:
        multihost_utils.reached_preemption_sync_point(0)  # raises when the service is off
    except RuntimeError:
        return "allgather"
    # Python's record of the handler misses JAX's (installed in C by `jax.distributed.initialize`); a Python
    # handler there may have replaced JAX's, so then this process's own flag is shared instead.
    if callable(signal.getsignal(signal.SIGTERM)):
        log.warning("SIGTERM's handler is not JAX's preemption notifier; agreeing by an allgather per call")
        return "allgather"
    return "jax"
