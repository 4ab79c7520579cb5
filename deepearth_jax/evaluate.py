"""Evaluates a trained run's best (or latest) checkpoint and writes a report beside it.

    python -m deepearth_jax.evaluate --workdir DIR [--split SUBSET] [--checkpoint best|latest|N|refit]

`best` (the default) is the checkpoint selected on validation by the run's best_metric, never by test;
`refit` the model a `config.refit` run trained again on train + validation (deepearth_jax/refit.py).
Writes into `DIR/eval_<split>/` (`DIR/eval_<split>_refit/` for the refit model): `metrics.json` (overall,
per split reason, unseen species; 95% bootstrap intervals `<metric>_ci: [lo, hi]` beside top-1 and top-5),
`per_species.csv`, `confusion.png` (the most frequent species), and `predictions.parquet` (one row per
observation).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from flax import nnx

from deepearth_jax import checkpoint as checkpoint_lib
from deepearth_jax import evaluation as evaluation_lib
from deepearth_jax import honesty, parallel, refit, steps, tasks
from deepearth_jax.cli import run_command, setup_logging
from deepearth_jax.errors import CliError
from deepearth_jax.inputs import TrainError, prepare_data
from deepearth_jax.io import write_json_atomic

log = logging.getLogger("deepearth_jax.evaluate")


def _checkpointer_for(workdir: Path) -> tuple[checkpoint_lib.Checkpointer, dict]:
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        raise TrainError(f"no checkpoints in {workdir} (expected {directory}); train first")
    probe = checkpoint_lib.Checkpointer(directory, best_metric="validation/top1", async_save=False)
    latest = probe.latest_step()
    if latest is None:
        probe.close()
        raise TrainError(f"no finished checkpoint in {directory}")
    meta = probe.restore_meta(latest)
    probe.close()
    config = meta["config"]
    # Runs from before validation existed named a test metric: select on its validation counterpart (they
    # have none, so `best` falls back to the latest checkpoint) rather than on the test set.
    best_metric = config["best_metric"]
    if best_metric.startswith("test/"):
        best_metric = "validation/" + best_metric.split("/", 1)[1]
    return (
        checkpoint_lib.Checkpointer(
            directory, best_metric=best_metric, best_mode=config["best_mode"], async_save=False
        ),
        meta,
    )


@dataclasses.dataclass
class RestoredRun:
    """A trained run brought back from its workdir."""

    config: ml_collections.ConfigDict
    data: object  # train.Data
    mesh: object
    graphdef: object
    state: object
    step: int
    fitted: dict | None = None  # the refit model's: what the task fitted on validation in selection


def restore_run(workdir: str | Path, which: str = "best") -> RestoredRun:
    """Restores the `best` (by the run's best_metric), `latest`, or a numbered checkpoint of `workdir`, or
    with `refit` the refit model (its `data` then trains on train + validation)."""
    workdir = Path(workdir)
    checkpointer, meta = _checkpointer_for(workdir)
    try:
        if which in ("best", "refit"):
            step = checkpointer.best_step()
            if step is None:
                step = checkpointer.latest_step()
                log.info("no checkpoint with metrics: using the latest, step %d", step)
        elif which == "latest":
            step = checkpointer.latest_step()
        else:
            step = int(which)
            if step not in checkpointer.manager.all_steps():
                raise TrainError(
                    f"no checkpoint at step {step}; kept: {list(checkpointer.manager.all_steps())}"
                )
        config = ml_collections.ConfigDict(meta["config"])
        config.store, config.split_file = meta["store"], meta["split"]
        mesh = parallel.make_mesh(-1)
        data = prepare_data(config, workdir)
        if data.class_species.tolist() != meta["class_species"]:
            raise TrainError("the store or split changed since training: the species map differs")
        if which == "refit":
            fit = refit.restore_refit(config, data, workdir, mesh)
            return RestoredRun(config, fit.data, mesh, fit.graphdef, fit.state, fit.step, fit.fitted)
        graphdef, state = steps.create_train_state(
            config,
            input_dims=data.input_dims,
            num_classes=len(data.class_names),
            total_steps=max(1, int(meta.get("step", 1))),
            mesh=mesh,
            seed=config.seed,
        )
        state, _, _ = checkpointer.restore(step, state)
    finally:
        checkpointer.close()
    return RestoredRun(config, data, mesh, graphdef, state, step)


def evaluate_workdir(
    workdir: str | Path, split: str = "test", which: str = "best", range_species: list[str] | None = None
) -> dict:
    """Restores a checkpoint of `workdir`, evaluates it on `split`, writes the report (with range maps of
    `range_species`, default the most frequent, for a geo prior); returns the metrics."""
    workdir = Path(workdir)
    if which == "refit" and split != "test":
        raise TrainError(f"--checkpoint refit trained on the {split} rows; evaluate it on --split test")
    run = restore_run(workdir, which)
    config, data, mesh, state, step = run.config, run.data, run.mesh, run.state, run.step
    unknown = sorted(set(range_species or ()) - set(data.class_names))
    if unknown:
        raise CliError(f"--range-species: not a training species of this run: {', '.join(unknown)}")
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    label_map = jax.device_put(data.label_map, parallel.replicated(mesh))
    eval_step = steps.make_eval_step(
        config,
        run.graphdef,
        label_map,
        mesh=mesh,
        state_sharding=state_sharding,
        constants=tasks.from_config(config).eval_constants(data.store),
    )
    evaluator = evaluation_lib.Evaluator(
        config, data, eval_step, mesh, subset=split, intervals=True, fitted=run.fitted
    )
    result = evaluator.run(state)
    out_dir = workdir / (f"eval_{split}_refit" if which == "refit" else f"eval_{split}")
    if jax.process_index() == 0:
        out_dir.mkdir(exist_ok=True)
        _write_report(out_dir, data, evaluator, result, step)
        if config.model.name == "geo_prior":
            from deepearth_jax import range_map

            model = nnx.merge(run.graphdef, state).model
            model.eval()
            sigmoid = config.task == "geo_presence"  # SINR's loss: each species' own presence probability
            range_map.plot_range_map(model, data, out_dir / "range_map.png", range_species, sigmoid=sigmoid)
        print(f"step {step}: {evaluation_lib.headline(result.metrics)}")
        for group in sorted(
            {k.split("/")[1] for k in result.metrics if k.count("/") == 2 and k.endswith("/count")}
        ):
            line = evaluation_lib.headline(result.metrics, group)
            if line:
                print(f"  {group}: {line}")
        unseen = honesty.unseen_line(result.metrics, split)
        if unseen is not None:
            print(unseen)
        warning = honesty.baseline_warning(honesty.versus_frequency(result.metrics, split), f"step {step}")
        if warning is not None:
            log.warning(warning)
        print(f"wrote {out_dir}")
    return result.metrics


def _write_report(out_dir: Path, data, evaluator, result, step: int) -> None:
    """metrics.json, predictions.parquet, per_species.csv and the task's figures."""
    write_json_atomic(out_dir / "metrics.json", {"step": step, **result.metrics})
    out = result.outputs
    if not out:
        return
    task, store, rows = evaluator.task, data.store, out["row"]
    names = np.asarray(store.species_names, dtype=object)
    columns = {
        "observation_id": store.observation_ids[rows].tolist(),
        "gbif_id": store.column("gbif_id")[rows],
        "species": names[out["species"]].tolist(),
        "split_reason": [evaluator.reason_of_row.get(int(r), "unknown") for r in rows],
    }
    columns.update(task.prediction_columns(out, names, np.asarray(data.class_names, dtype=object)))
    pq.write_table(pa.table(columns), out_dir / "predictions.parquet")

    # Per-species scores, most frequent species first.
    species = out["species"]
    with open(out_dir / "per_species.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["species", "examples", "seen_in_training", *task.SPECIES_COLUMNS])
        counts = np.bincount(species, minlength=store.num_species)
        # Each species' rows as one slice of a sort by species: O(N log N), not a mask over N per species.
        by_species = np.argsort(species, kind="stable")
        ends = np.cumsum(counts)
        for s in np.argsort(-counts, kind="stable"):
            if counts[s] == 0:
                continue
            scores = task.species_scores(out, by_species[ends[s] - counts[s] : ends[s]], int(s))
            writer.writerow([names[s], int(counts[s]), bool(data.label_map[s] >= 0), *scores])
    task.write_figures(out, data.class_names, out_dir, step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deepearth_jax.evaluate",
        description="Evaluate a trained run's checkpoint: metrics with intervals beside the frequency and "
        "kNN baselines, per-species CSV, confusion matrix, predictions; range maps for geo priors; fusion "
        "gains over vision alone for vision_geo.",
    )
    parser.add_argument("--workdir", required=True, type=Path, help="the run directory given to train")
    parser.add_argument(
        "--split",
        default="test",
        choices=evaluation_lib.SUBSETS,
        help="which subset (default test; validation is what selected the checkpoint)",
    )
    parser.add_argument(
        "--checkpoint",
        default="best",
        help="best (by the config's validation best_metric, default), latest, a step number, or refit "
        "(the model a --config.refit=true run trained again on train + validation; test only)",
    )
    parser.add_argument(
        "--range-species",
        default="",
        help="geo prior runs: comma-separated species for range_map.png (default: the 4 most frequent)",
    )
    args = parser.parse_args(argv)
    setup_logging(timestamps=True)

    def command() -> int:
        species = [name.strip() for name in args.range_species.split(",") if name.strip()]
        evaluate_workdir(args.workdir, args.split, args.checkpoint, species or None)
        return 0

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
