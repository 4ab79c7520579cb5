"""Trains a DeepEarth model from a config file; rerun the same command with the same workdir to resume.

    python -m deepearth_jax.train --config configs/vision.py [--workdir DIR] [--config.FIELD=VALUE ...]

With no store configured the trainer builds (once, cached) a deterministic synthetic demo store and trains on
it. The run reads in the order it happens: hosts and mesh, data, model and optimizer, restore, the loop (train
steps, logs, evals, checkpoints), the final evaluation and the reports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from deepearth_jax import checkpoint as checkpoint_lib
from deepearth_jax import config_utils, honesty, inputs, parallel, profiling, steps, tasks, writers
from deepearth_jax import evaluation as evaluation_lib
from deepearth_jax import refit as refit_lib
from deepearth_jax import workdir as workdir_lib
from deepearth_jax.cli import run_command, setup_logging
from deepearth_jax.inputs import TrainError
from deepearth_jax.io import progress_bar, read_json_lines, write_json_atomic
from deepearth_jax.models import precision

log = logging.getLogger("deepearth_jax.train")


def itstime(step: int, every: int, total: int, *, advanced: int = 1, last: bool = True) -> bool:
    """Whether a periodic action is due after the steps `(step - advanced, step]` (big_vision's `itstime`).

    Due when those steps hold a multiple of `every` (> 0; <= 0 means never), or, with `last`, at the end.
    """
    crossed = every > 0 and step // every != (step - advanced) // every
    return crossed or (last and step >= total)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Trains and evaluates as `config` says, writing everything into `workdir`; returns the summary."""
    start_time = time.time()
    workdir = Path(workdir)
    workdir_lib.prepare(workdir)
    dist = config.distributed
    parallel.initialize_distributed(dist.coordinator_address, dist.num_processes, dist.process_id, dist.mode)
    mesh = parallel.make_mesh(config.mesh.data)
    if jax.process_index() == 0:
        print(parallel.describe(mesh), flush=True)
    # The mesh is the context of every jit, sharding and collective of the run; process 0 holds the lock.
    with workdir_lib.locked(workdir, enabled=jax.process_index() == 0), jax.set_mesh(mesh):
        return _run(config, workdir, mesh, start_time)


def _run(config: ml_collections.ConfigDict, workdir: Path, mesh, start_time: float) -> dict:
    """Data, model and steps, restore, the loop, the reports."""
    parallel.check_global_batch(config.batch_size, mesh)
    if config.steps_per_call < 1:
        raise TrainError(f"steps_per_call must be >= 1, got {config.steps_per_call}")
    check_best_metric(config.best_metric)
    _check_precision_and_profile(config)
    with contextlib.ExitStack() as closing:
        painter = writers.CurvesPainter(enabled=jax.process_index() == 0)
        closing.callback(painter.close)
        data_in = inputs.create_inputs(config, workdir)
        closing.callback(data_in.close)
        data = data_in.data
        if data_in.total_steps < 1:
            raise TrainError(
                f"nothing to train: num_epochs={config.num_epochs}, num_steps={config.num_steps} give 0 steps"
            )
        # Model and optimizer, parameters created sharded; then the jitted steps.
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
        eval_step = steps.make_eval_step(
            config,
            graphdef,
            label_map,
            mesh=mesh,
            state_sharding=state_sharding,
            constants=tasks.from_config(config).eval_constants(data.store),
        )
        evaluator = evaluation_lib.Evaluator(config, data, eval_step, mesh)
        checkpointer = checkpoint_lib.Checkpointer(
            workdir / "checkpoints", best_metric=config.best_metric, best_mode=config.best_mode
        )
        closing.callback(checkpointer.close)
        meta = _meta(config, data)
        # Restore: rerunning the same command with the same workdir resumes.
        state, step = _restore(config, workdir, checkpointer, state, meta, data_in)
        calls = _step_calls(config, data_in, mesh, graphdef, label_map, state_sharding, step)
        writer = writers.MetricWriters(workdir, jax.process_index() == 0, truncate_after=step)
        closing.callback(writer.close)
        state, step = _loop(config, mesh, data_in, state, step, calls, evaluator, checkpointer, writer, meta)
        if jax.process_index() == 0:  # metrics.jsonl is complete: drawn while the test set is evaluated
            title = f"{config.model.name} ({config.mode})"
            painter.start(workdir / "metrics.jsonl", workdir / "curves.png", title)
        tested = {"best": {}, "final": {}}  # a stopped run is tested when it completes
        if step >= data_in.total_steps:
            tested = _test_selected_and_final(config, data, eval_step, mesh, state, step, checkpointer)
        if config.get("refit", False) and step >= data_in.total_steps:  # train + validation, refit.py
            selected, phase = checkpointer.best_step() or step, refit_lib.Phase(_step_calls, _loop)
            tested["refit"] = refit_lib.refit_and_test(
                config, workdir, mesh, data_in, selected, tested["best"], meta, phase
            )
        return _finish(
            config, workdir, data, state, checkpointer, step, data_in.total_steps, start_time, tested, painter
        )


def _check_precision_and_profile(config) -> None:
    """config.dtype names a compute dtype and config.profile_steps is "" or START,COUNT (one line if not)."""
    try:
        precision.compute_dtype(config.dtype)
        profiling.parse_profile_steps(config.profile_steps)
    except ValueError as e:
        raise TrainError(f"config: {e}") from None


def check_best_metric(name: str) -> None:
    """Refuses choosing checkpoints by a test metric: the test set would then no longer be held out."""
    if name.split("/")[0] == "test":
        raise TrainError(
            f"best_metric {name!r} would select checkpoints on the test set and make its test numbers "
            f"optimistic; use --config.best_metric=validation/{name.split('/', 1)[-1]}"
        )


def _test_selected_and_final(config, data, eval_step, mesh, state, step: int, checkpointer) -> dict:
    """`{"best": test metrics, "final": test metrics}` with bootstrap intervals; the only test evaluations.

    The selected checkpoint is the best by `config.best_metric` (validation); the final one is `state`.
    """
    tester = evaluation_lib.Evaluator(config, data, eval_step, mesh, subset="test", intervals=True)
    final = tester.evaluate(state)
    best_step = checkpointer.best_step()
    if best_step is None or best_step == step:
        return {"best": final, "final": final}
    best_state, _, _ = checkpointer.restore(best_step, state)
    return {"best": tester.evaluate(best_state), "final": final}


def _meta(config: ml_collections.ConfigDict, data: inputs.Data) -> dict:
    """What a checkpoint records beside the state, to refuse resuming a different run."""
    return {
        "config": json.loads(config.to_json()),
        "class_species": data.class_species.tolist(),
        "class_names": data.class_names,
        "store": data.store_path,
        "split": data.split_path,
        "fold": int(config.fold),
    }


def _restore(config, workdir: Path, checkpointer, state, meta: dict, data_in: inputs.Inputs):
    """`(state, step)`: the latest checkpoint of this same run in `workdir`, else the fresh state at 0."""
    state, data_state, step = checkpoint_lib.restore_same_run(checkpointer, state, meta, workdir)
    if step == 0:
        return state, 0
    if not config.device_epochs:
        data_in.batches.set_state(data_state)
    if jax.process_index() == 0:
        done = f"already trained: step {step} of {data_in.total_steps} in {workdir}; rewriting the report"
        print(done if step >= data_in.total_steps else f"resuming from step {step} in {workdir}", flush=True)
    return state, step


def _step_calls(config, data_in: inputs.Inputs, mesh, graphdef, label_map, state_sharding, step: int):
    """`(steps advanced, call(state, metrics) -> (state, metrics), data state after it)` until the end."""
    if config.device_epochs:
        epoch_fn = steps.make_device_epoch(
            config, graphdef, label_map, mesh=mesh, state_sharding=state_sharding
        )
        train_data = inputs.device_training_data(config, data_in.data, mesh)
        key, per_epoch = jax.random.key(config.seed), data_in.steps_per_epoch
        for epoch in range(step // per_epoch, math.ceil(data_in.total_steps / per_epoch)):
            epoch_key = jax.random.fold_in(key, epoch)
            yield (
                per_epoch,
                lambda s, m, k=epoch_key: epoch_fn(s, m, train_data, k),
                {"device_epoch": epoch + 1},
            )
        return
    step_fns = {
        k: steps.make_train_step(
            config, graphdef, label_map, mesh=mesh, state_sharding=state_sharding, steps_per_call=k
        )
        for k in sorted({1, config.steps_per_call})
    }
    for k, batch, data_state in inputs.device_batches(config, data_in, mesh, step):
        yield k, lambda s, m, k=k, b=batch: step_fns[k](s, m, b), data_state


def _loop(config, mesh, data_in, state, step, calls, evaluator, checkpointer, writer, meta):
    """Train steps; after each call, log / evaluate / checkpoint when `itstime`; stops on SIGTERM.

    Checkpoints are saved after an evaluation that ranks at least as well as the best saved one (the
    checkpoint `best_step` selects), when `checkpoint_every_steps` steps have passed since the last save (so
    a crash loses at most that many), at the end and on SIGTERM (on any process: all stop at the same call);
    a resumed run saves the same best ones.
    """
    total, per_epoch = data_in.total_steps, data_in.steps_per_epoch
    is_main = jax.process_index() == 0
    bar = progress_bar(total, "train", enabled=is_main, unit="step", initial=step, mininterval=1.0)
    metrics = steps.init_metrics(config, mesh)
    state = steps.FlatState.of(state)  # carried flat: no nnx.State flatten/rebuild per step call
    last_saved = step if step > 0 else None  # restore_same_run resumed only a finite one
    clock = {"time": time.time(), "step": step, "paused": 0.0}  # samples/s leaves out evals and saves
    # Traces go beside the checkpoints: <workdir>/profile (a refit phase's into <workdir>/refit/profile).
    profiler = profiling.StepProfiler(config.profile_steps, checkpointer.directory.parent)
    try:
        with checkpoint_lib.StopOnSigterm() as stopper:
            for advance, call, data_state in calls:
                with profiler.step(step):
                    state, metrics = call(state, metrics)
                step += advance
                stop = stopper.reached(step)  # the same answer on every process (SIGTERM on any of them)
                profiler.after(step, state.leaves)
                epoch = step / per_epoch
                if itstime(step, per_epoch, total, advanced=advance) or itstime(
                    step, config.log_every_steps, total, advanced=advance
                ):
                    _log(config, writer, bar, metrics, step, epoch, clock, last_saved, checkpointer)
                    metrics = steps.init_metrics(config, mesh)
                pause_start = time.time()
                every_eval = config.eval_every_steps if config.eval_every_steps > 0 else per_epoch
                eval_metrics = None
                if itstime(step, every_eval, total, advanced=advance):
                    eval_metrics = evaluator.evaluate(state.state)
                    writer.write(step, epoch, eval_metrics)
                since = step - (last_saved if last_saved is not None else 0)
                due = 0 < config.checkpoint_every_steps <= since or step >= total
                improved = eval_metrics is not None and checkpointer.improves(eval_metrics)
                if due or improved or stop:
                    if not checkpoint_lib.all_finite(state.state):
                        raise TrainError(
                            f"non-finite parameters at step {step}, not saved; last good checkpoint: "
                            f"step {last_saved if last_saved is not None else 'none'} in "
                            f"{checkpointer.directory}"
                        )
                    meta["step"], meta["epoch"] = step, epoch
                    checkpointer.save(
                        step, state.state, data_state=data_state, meta=meta, metrics=eval_metrics, force=True
                    )
                    last_saved = step
                clock["paused"] += time.time() - pause_start
                bar.update(advance)
                if stop:
                    break
        checkpointer.wait()
    finally:
        profiler.stop()
        bar.close()
    if stopper.requested and is_main:
        print(f"SIGTERM: saved step {step} in {checkpointer.directory}; rerun to resume", flush=True)
    return state.state, step


def _log(config, writer, bar, metrics, step: int, epoch: float, clock: dict, last_saved, checkpointer):
    """Writes the train metrics since the last log (host sync) and fails on a non-finite one."""
    train = steps.summarize_metrics(jax.device_get(metrics))
    if not all(math.isfinite(v) for v in train.values()):
        raise TrainError(
            f"non-finite training metrics at step {step} ({train}); last good checkpoint: step "
            f"{last_saved if last_saved is not None else 'none'} in {checkpointer.directory}"
        )
    now = time.time()
    busy = now - clock["time"] - clock["paused"]
    rate = (step - clock["step"]) * config.batch_size / max(busy, 1e-9)
    clock.update(time=now, step=step, paused=0.0)
    writer.write(step, epoch, {f"train/{k}": v for k, v in train.items()} | {"train/samples_per_s": rate})
    loss = train.get("loss", float("nan"))
    bar.set_postfix_str(f"epoch={epoch:.2f}, loss={loss:.4f}, samples_s={rate:,.0f}")


def _finish(
    config,
    workdir: Path,
    data,
    state,
    checkpointer,
    step: int,
    total_steps: int,
    start_time,
    tested: dict,
    painter: writers.CurvesPainter,
) -> dict:
    """summary.json and curves.png (process 0): "best" is the checkpoint selected on validation with its test
    metrics, "final" the last step's, "refit" (`config.refit`) the model retrained on train + validation
    (refit.py); test metrics carry 95% bootstrap intervals (`test/top1_ci`)."""
    path = workdir / "metrics.jsonl"
    rows = read_json_lines(path) if path.exists() else []  # without importing matplotlib (plots)
    final = {}
    for row in rows:
        final.update({k: v for k, v in row.items() if k not in ("step", "epoch")})
    final.update(tested["final"])
    best_step = checkpointer.best_step()
    best = {"step": int(step) if best_step is None else best_step, "selected_by": config.best_metric}
    if best_step is not None:
        best.update(checkpointer.manager.metrics(best_step) or {})
    best.update(tested["best"])
    train_rates = [r["train/samples_per_s"] for r in rows if "train/samples_per_s" in r]
    summary = {
        "config": json.loads(config.to_json()),
        "store": data.store_path,
        "split": data.split_path,
        "steps": int(step),
        "total_steps": int(total_steps),
        # a refit stopped by SIGTERM leaves the run incomplete (exit 143): the rerun finishes it
        "complete": step >= total_steps and (tested.get("refit") or {}).get("complete", True),
        "final": final,
        "best": best,
        "wall_time_s": round(time.time() - start_time, 2),
        "samples_per_s": float(np.median(train_rates)) if train_rates else None,
        "num_classes": len(data.class_names),
        "params_checksum": steps.params_checksum(state),
        # Does the selected checkpoint beat always predicting the most frequent species (None: no baseline)?
        "baseline_check": honesty.versus_frequency(best),
    }
    if tested.get("refit") is not None:
        summary["refit"] = tested["refit"]
    if jax.process_index() == 0:
        write_json_atomic(workdir / "summary.json", summary)
        if rows:
            painter.wait()
        log.info("summary: %s", {k: summary[k] for k in ("steps", "wall_time_s", "params_checksum")})
        for name, row in (("best", best), ("final", final), ("refit", tested.get("refit"))):
            if row is not None:
                print(f"{name} (step {row.get('step', step)}): {evaluation_lib.headline(row)}", flush=True)
        unseen = honesty.unseen_line(best)
        if unseen is not None:
            print(unseen, flush=True)
        warning = honesty.baseline_warning(summary["baseline_check"])
        if warning is not None:
            log.warning(warning)
    return summary


# ----------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str]) -> tuple[ml_collections.ConfigDict, Path]:
    parser = argparse.ArgumentParser(
        prog="python -m deepearth_jax.train",
        description="Train a DeepEarth model. Rerun the same command with the same --workdir to resume.",
        epilog="Any config field can be overridden: --config.optimizer.lr=3e-4 --config.batch_size=64 "
        "--config.store=/data/store --config.split_file=/data/split.json. With no store configured, a "
        "synthetic demo store is built once (cached in $DEEPEARTH_CACHE or ~/.cache/deepearth_jax).",
    )
    parser.add_argument(
        "--config", required=True, help="config file, optionally with an argument: configs/vision.py:tiny"
    )
    parser.add_argument("--workdir", default=None, help="run directory (default: checkpoints/<config name>)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    args, overrides = parser.parse_known_args(argv)
    setup_logging(args.verbose, timestamps=True)
    config = config_utils.load_config(args.config, overrides)
    workdir = (
        Path(args.workdir) if args.workdir else Path("checkpoints") / Path(args.config.split(":")[0]).stem
    )
    return config, workdir


def compilation_cache_dir() -> Path:
    """Where the train CLI keeps JAX's persistent compilation cache unless JAX is told otherwise."""
    return inputs.default_cache_dir() / "jax_compile"


def _enable_compilation_cache() -> None:
    """JAX's persistent compilation cache in the demo cache dir: a rerun skips compiling (same programs)."""
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(compilation_cache_dir()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def command() -> int:
        _enable_compilation_cache()
        summary = train_and_evaluate(*parse_args(argv))
        # Only SIGTERM ends the loop early: exit 128 + 15 after saving, so a scheduler requeues the job.
        return 0 if summary["complete"] else 143

    return run_command(command, "interrupted (the last checkpoint is kept; rerun to resume)")


if __name__ == "__main__":
    sys.exit(main())
