"""Refit after selection (`config.refit`): train again from scratch on train + validation, test that model.

Selection (the checkpoint `best_metric` picks on validation) fixes the number of steps S; the validation rows
then have nothing left to choose, so the refit phase trains a fresh model on train + validation for S steps
and evaluates it on the test rows, reported under `summary.json["refit"]` beside `best` and `final`.

What stays as the selection run had it, so the refit differs only in its rows:
- the config (seed, batch, optimizer) and the learning-rate schedule: the optimizer is built for the run's
  `total_steps`, so step s of the refit uses step s's rate (a cosine schedule is *not* squeezed into S);
- the class map: the classes are the training species; validation rows of species absent from training
  carry no label for any classifier and are left out of the refit rows (counted in the report);
- whatever the task fitted on validation outputs in selection (the fusion task's late-fusion exponent): there
  is no held-out row left to fit it on, so the selected model's value is kept (`fitted_in_selection`).
What is refitted on the refit rows: the Earth4D normaliser (the training rows' box), the frequency prior of
the late fusion rule and the baselines reported beside the refit model.

With `device_epochs` the refit runs whole epochs of its (larger) rows: S rounded up to an epoch.

Files: `<workdir>/refit/checkpoints/` (Orbax, the latest step and the final one), `<workdir>/refit/
metrics.jsonl` (its train curves). Resumable like the main loop: a stopped refit resumes from its latest
checkpoint; a finished one is not retrained (only tested again). A refit of another selection (the main run
was extended and selected another step) is moved to `refit.replaced/` and redone.
`python -m deepearth_jax.evaluate --workdir DIR --checkpoint refit` evaluates the refit model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np

from deepearth_jax import checkpoint as checkpoint_lib
from deepearth_jax import evaluation as evaluation_lib
from deepearth_jax import inputs, parallel, region, steps, tasks, writers
from deepearth_jax.errors import TrainError

log = logging.getLogger(__name__)

REFIT_DIR = "refit"
REPLACED_DIR = "refit.replaced"


@dataclasses.dataclass(frozen=True)
class Phase:
    """The trainer's own loop, handed in by train.py (this module sits below it): `step_calls(config,
    data_in, mesh, graphdef, label_map, state_sharding, step)` and `loop(config, mesh, data_in, state, step,
    calls, evaluator, checkpointer, writer, meta) -> (state, step)`."""

    step_calls: Callable
    loop: Callable


class _NoValidation:
    """The refit loop's evaluator: its validation rows are training rows, so nothing is evaluated."""

    def evaluate(self, state) -> dict:
        return {}


class _SkipEmpty:
    """A metric writer that drops the (empty) evaluations of `_NoValidation`."""

    def __init__(self, writer: writers.MetricWriters):
        self.writer = writer

    def write(self, step: int, epoch: float, values: dict) -> None:
        if values:
            self.writer.write(step, epoch, values)


def refit_data(data: inputs.Data) -> tuple[inputs.Data, int]:
    """`(data whose training rows are train + validation, validation rows left out)`; no validation rows.

    Validation rows of species absent from the training rows (label -1) are left out: no classifier has a
    class for them. The Earth4D normaliser is refitted on the refit rows.
    """
    species = data.store.column("species_index")
    validation = np.asarray(data.validation_rows, np.int64)
    labelled = validation[data.label_map[species[validation]] >= 0]
    rows = np.sort(np.concatenate([np.asarray(data.train_rows, np.int64), labelled]))
    input_dims = dict(data.input_dims)
    if region.NORMALIZER_KEY in input_dims:
        input_dims[region.NORMALIZER_KEY] = region.fit_normalizer(data.store, rows)
    refit = dataclasses.replace(
        data, train_rows=rows, validation_rows=np.zeros(0, np.int64), input_dims=input_dims
    )
    return refit, int(len(validation) - len(labelled))


def selection_fit(config: ml_collections.ConfigDict, tested_best: dict) -> dict:
    """What the task fitted on validation for the selected model (`{"late_fusion/exponent": w}`), read from
    its test metrics; `{}` for a task that fits nothing. The task's defaults where the metrics lack it."""
    task = tasks.from_config(config)
    if not hasattr(task, "fit"):
        return {}
    defaults = task.fit({"labels": np.zeros(0, np.int32)}, np.zeros(1))  # a fit on no rows: its defaults
    return {k: float(tested_best.get(f"test/{k}", v)) for k, v in defaults.items()}


def refit_steps(config: ml_collections.ConfigDict, selected_step: int, steps_per_epoch: int) -> int:
    """S, or with `device_epochs` S rounded up to whole epochs of the refit rows."""
    if config.device_epochs:
        return math.ceil(selected_step / steps_per_epoch) * steps_per_epoch
    return int(selected_step)


def _set_aside_other_refit(directory: Path, info: dict) -> None:
    """Moves a refit of another selection (other selected step, rows or schedule) to `refit.replaced/`."""
    ckpt_dir = directory / "checkpoints"
    if not ckpt_dir.is_dir() or jax.process_index() != 0:
        return
    probe = checkpoint_lib.Checkpointer(ckpt_dir, best_metric="none", async_save=False)
    try:
        latest = probe.latest_step()
        saved = probe.restore_meta(latest).get("refit") if latest is not None else None
    finally:
        probe.close()
    if saved is None or saved == info:
        return
    target = directory.parent / REPLACED_DIR
    shutil.rmtree(target, ignore_errors=True)
    directory.rename(target)
    log.warning(
        "the refit in %s was of another selection (%s, now %s): moved to %s", directory, saved, info, target
    )


def refit_and_test(
    config: ml_collections.ConfigDict,
    workdir: Path,
    mesh,
    data_in: inputs.Inputs,
    selected_step: int,
    tested_best: dict,
    base_meta: dict,
    phase: Phase,
) -> dict:
    """Trains (or resumes, or restores when finished) the refit model and returns the `refit` block:
    `step`, `selected_step`, `selected_by`, `train_rows`, `validation_rows_left_out`, `schedule_steps`,
    `fitted_in_selection`, `complete`, `params_checksum`, and when complete the test metrics (`best`'s
    keys)."""
    data, dropped = refit_data(data_in.data)
    directory = Path(workdir) / REFIT_DIR
    with contextlib.ExitStack() as closing:
        refit_in = _refit_inputs(config, data, selected_step)
        closing.callback(refit_in.close)
        fitted = selection_fit(config, tested_best)
        info = {
            "selected_step": int(selected_step),
            "steps": int(refit_in.total_steps),
            "train_rows": int(len(data.train_rows)),
            "schedule_steps": int(data_in.total_steps),
            "fitted_in_selection": fitted,
        }
        _set_aside_other_refit(directory, info)
        log.info(
            "refit: %d steps on %d train + validation rows (%d validation rows of species unseen in "
            "training left out)",
            refit_in.total_steps,
            len(data.train_rows),
            dropped,
        )
        # The optimizer is built for the selection run's length: step s of the refit has step s's rate.
        graphdef, state = steps.create_train_state(
            config,
            input_dims=data.input_dims,
            num_classes=len(data.class_names),
            total_steps=data_in.total_steps,
            mesh=mesh,
            seed=config.seed,
        )
        state_sharding = steps.state_sharding_of(state)
        label_map = jax.device_put(data.label_map, parallel.replicated(mesh))
        checkpointer = checkpoint_lib.Checkpointer(
            directory / "checkpoints", best_metric=config.best_metric, best_mode=config.best_mode
        )
        closing.callback(checkpointer.close)
        meta = {**base_meta, "refit": info}
        state, data_state, step = checkpoint_lib.restore_same_run(checkpointer, state, meta, directory)
        if 0 < step and not config.device_epochs:
            refit_in.batches.set_state(data_state)
        if step >= refit_in.total_steps and jax.process_index() == 0:
            print(f"refit already trained: step {step} of {refit_in.total_steps} in {directory}", flush=True)
        writer = writers.MetricWriters(directory, jax.process_index() == 0, truncate_after=step)
        closing.callback(writer.close)
        calls = phase.step_calls(config, refit_in, mesh, graphdef, label_map, state_sharding, step)
        loop_args = (calls, _NoValidation(), checkpointer, _SkipEmpty(writer), meta)
        state, step = phase.loop(config, mesh, refit_in, state, step, *loop_args)
        block = {
            "step": int(step),
            "selected_by": config.best_metric,
            "validation_rows_left_out": dropped,
            **{k: info[k] for k in ("selected_step", "train_rows", "schedule_steps", "fitted_in_selection")},
            "complete": step >= refit_in.total_steps,
            "params_checksum": steps.params_checksum(state),
        }
        if block["complete"]:
            eval_step = _eval_step(config, data, graphdef, label_map, mesh, state_sharding)
            tester = evaluation_lib.Evaluator(
                config, data, eval_step, mesh, subset="test", intervals=True, fitted=fitted
            )
            block.update(tester.evaluate(state))
        return block


def _refit_inputs(config: ml_collections.ConfigDict, data: inputs.Data, selected_step: int) -> inputs.Inputs:
    """The training iterator over the refit rows (same seed scheme as the run's) and the refit's length."""
    batches, per_epoch = inputs.training_batches(config, data)  # the run's seed scheme over the refit rows
    return inputs.Inputs(data, batches, per_epoch, refit_steps(config, selected_step, per_epoch))


def _eval_step(config, data: inputs.Data, graphdef, label_map, mesh, state_sharding):
    return steps.make_eval_step(
        config,
        graphdef,
        label_map,
        mesh=mesh,
        state_sharding=state_sharding,
        constants=tasks.from_config(config).eval_constants(data.store),
    )


@dataclasses.dataclass
class RestoredRefit:
    """The refit model of a workdir, for `evaluate --checkpoint refit`."""

    data: inputs.Data
    graphdef: object
    state: object
    step: int
    fitted: dict


def restore_refit(config: ml_collections.ConfigDict, data: inputs.Data, workdir: Path, mesh) -> RestoredRefit:
    """The finished refit model of `workdir` (trained with `config` on `data`'s train + validation rows);
    TrainError naming the fix when there is none."""
    directory = Path(workdir) / REFIT_DIR / "checkpoints"
    if not directory.is_dir():
        raise TrainError(
            f"no refit in {workdir} (expected {directory}); train with --config.refit=true first"
        )
    checkpointer = checkpoint_lib.Checkpointer(directory, best_metric=config.best_metric, async_save=False)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise TrainError(f"no finished refit checkpoint in {directory}; rerun the training command")
        info = checkpointer.restore_meta(step)["refit"]
        if step < info["steps"]:
            raise TrainError(
                f"the refit in {directory} stopped at step {step} of {info['steps']}; rerun the training "
                "command to finish it"
            )
        refit, _ = refit_data(data)
        if len(refit.train_rows) != info["train_rows"]:
            raise TrainError("the store or split changed since the refit: its rows differ")
        graphdef, state = steps.create_train_state(
            config,
            input_dims=refit.input_dims,
            num_classes=len(refit.class_names),
            total_steps=info["schedule_steps"],
            mesh=mesh,
            seed=config.seed,
        )
        state, _, _ = checkpointer.restore(step, state)
    finally:
        checkpointer.close()
    return RestoredRefit(refit, graphdef, state, step, dict(info["fitted_in_selection"]))
