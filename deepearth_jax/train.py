"""Trains a DeepEarth model from a config file; rerun the same command with the same workdir to resume.

    python -m deepearth_jax.train --config configs/vision.py [--workdir DIR] [--config.FIELD=VALUE ...]

With no store configured the trainer builds (once, cached) a deterministic synthetic demo store and trains on
it. The run reads in the order it happens: hosts and mesh, data, model and optimizer, restore, the loop (train
steps, logs, evals, checkpoints), the final evaluation and the reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx

from deepearth_jax import checkpoint as checkpoint_lib
from deepearth_jax import config_utils, parallel, steps
from deepearth_jax import evaluation as evaluation_lib
from deepearth_jax.cli import run_command, setup_logging
from deepearth_jax.data import pipeline, synthetic
from deepearth_jax.data import split as split_lib
from deepearth_jax.data import store as store_lib
from deepearth_jax.tensorboard import ScalarWriter

log = logging.getLogger("deepearth_jax.train")


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
    "checkpoint_every_steps",
    "data",
    "distributed",
    "allow_missing",
}


class TrainError(Exception):
    """A run that cannot start or go on; the message is one line for the user."""


# ----------------------------------------------------------------------------------------------------------
# Data


def default_cache_dir() -> Path:
    return Path(os.environ.get("DEEPEARTH_CACHE", Path.home() / ".cache" / "deepearth_jax"))


def demo_store(demo: ml_collections.ConfigDict) -> tuple[Path, Path]:
    """Builds (once, cached) the demo store and its default split; returns `(store_dir, split_file)`."""
    spec = {k: (list(v) if isinstance(v, tuple) else v) for k, v in demo.to_dict().items()}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    root = default_cache_dir()
    store_dir, split_file = root / f"demo-{key}", root / f"demo-{key}.split.json"
    if not (store_dir / store_lib.MANIFEST_FILE).exists() or not store_lib.read_manifest(store_dir).get(
        "complete"
    ):
        root.mkdir(parents=True, exist_ok=True)
        # Build beside the final path and rename, so concurrent runs never see half a store.
        tmp = root / f".demo-{key}.{os.getpid()}"
        synthetic.make_synthetic_store(
            tmp,
            observations=demo.observations,
            species=demo.species,
            vision_shape=tuple(demo.vision_shape),
            language_dim=demo.language_dim,
            seed=demo.seed,
        )
        try:
            os.rename(tmp, store_dir)
        except OSError:  # another process won the race
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    if not split_file.exists():
        payload = split_lib.make_split(
            store_lib.open_store(store_dir), num_regions=demo.regions, seed=demo.seed
        )
        tmp_split = split_file.with_suffix(f".{os.getpid()}.tmp")
        split_lib.write_split(payload, tmp_split)
        os.replace(tmp_split, split_file)
    return store_dir, split_file


@dataclasses.dataclass
class Data:
    """Everything the loop needs to know about the data of a run."""

    store: store_lib.Store
    split: split_lib.Split
    train_rows: np.ndarray  # store table rows, usable in the configured mode
    test_rows: np.ndarray
    label_map: np.ndarray  # (num_store_species,) int32: store species index -> class, -1 = unseen in training
    class_species: np.ndarray  # (C,) store species index of each class
    class_names: list[str]
    input_dims: dict
    store_path: str
    split_path: str


def prepare_data(config: ml_collections.ConfigDict, workdir: Path) -> Data:
    """Opens the store and split, selects usable rows, builds the label map; fails early on bad input."""
    if config.mode not in pipeline.MODES:
        raise TrainError(f"unknown mode {config.mode!r}; choose one of {', '.join(pipeline.MODES)}")
    if config.store:
        store_path = Path(config.store)
        split_path = Path(config.split_file) if config.split_file else None
    else:
        store_path, split_path = demo_store(config.demo)
        log.info(
            "no store configured: training on the built-in synthetic demo store %s "
            "(for real data: --config.store=STORE --config.split_file=SPLIT.json)",
            store_path,
        )
    store = store_lib.open_store(store_path)
    if split_path is None:
        split_path = workdir / "split.json"
        if not split_path.exists():
            log.info("no split_file configured: writing the default spatiotemporal split to %s", split_path)
            if jax.process_index() == 0:
                split_lib.write_split(split_lib.make_split(store), split_path)
    if not Path(split_path).exists():
        raise TrainError(f"split file {split_path} does not exist")
    split = split_lib.load_split(split_path)
    fold = None if config.fold < 0 else int(config.fold)
    train_rows = split.rows(store, "train", fold=fold, allow_missing=config.allow_missing)
    test_rows = split.rows(store, "test", fold=fold, allow_missing=config.allow_missing)
    if config.mode in ("vision", "vision_pooled", "multimodal") and not store.has_vision:
        raise TrainError(f"mode {config.mode!r} needs vision embeddings but store {store_path} has none")
    if config.mode in ("language", "multimodal") and store.language is None:
        raise TrainError(f"mode {config.mode!r} needs language embeddings but store {store_path} has none")
    dropped = len(train_rows) + len(test_rows)
    train_rows = pipeline.usable_rows(store, train_rows, config.mode)
    test_rows = pipeline.usable_rows(store, test_rows, config.mode)
    dropped -= len(train_rows) + len(test_rows)
    if dropped:
        log.info(
            "%d split observations lack the embeddings mode %r needs and are left out", dropped, config.mode
        )
    if len(train_rows) == 0:
        raise TrainError(f"the training set is empty (split {split_path}, mode {config.mode})")
    if config.batch_size > len(train_rows):
        raise TrainError(
            f"batch_size {config.batch_size} is larger than the {len(train_rows)} training examples"
        )
    species = store.column("species_index")
    class_species = np.unique(species[train_rows])
    label_map = np.full(store.num_species, -1, np.int32)
    label_map[class_species] = np.arange(len(class_species), dtype=np.int32)
    names = store.species_names
    input_dims = {}
    if store.language is not None:
        input_dims["language"] = int(store.language.shape[1])
    if store.vision is not None:
        input_dims["vision"] = int(store.vision.shape[-1])  # token width D (= pooled width)
        input_dims["vision_shape"] = tuple(int(d) for d in store.vision.shape[1:])
    return Data(
        store=store,
        split=split,
        train_rows=train_rows,
        test_rows=test_rows,
        label_map=label_map,
        class_species=class_species,
        class_names=[names[i] for i in class_species],
        input_dims=input_dims,
        store_path=str(Path(store_path).absolute()),
        split_path=str(Path(split_path).absolute()),
    )


DEVICE_EPOCH_MODES = ("language", "vision_pooled")


def device_training_data(config: ml_collections.ConfigDict, data: Data, mesh) -> dict:
    """The whole training set on device, replicated (for `device_epochs`): species and the mode's input."""
    store, rows = data.store, data.train_rows
    host = {"species": store.column("species_index")[rows].astype(np.int32)}
    if config.mode == "language":
        host["language"] = np.asarray(store.language[store.column("language_row")[rows]], np.float32)
    else:
        from deepearth_jax.data import features

        host["vision_pooled"] = np.asarray(features.pooled_vision(store)[store.column("vision_row")[rows]])
    return jax.device_put(host, parallel.replicated(mesh))


def species_language(store: store_lib.Store) -> np.ndarray | None:
    """`(num_store_species, L)` float32: row s is the language vector of store species s (for retrieval)."""
    if store.language is None:
        return None
    rows = store.species.column("language_row").to_numpy()
    return np.asarray(store.language[rows], np.float32)


def device_keys(mode: str) -> tuple[str, ...]:
    """The batch entries that go to the device (the rest stay on the host)."""
    return ("species", "mask", *evaluation_lib.MODE_KEYS[mode])


class StatefulBatches:
    """`count` host elements (K batches stacked per element when K > 1), each paired with the iterator state.

    The device prefetcher runs ahead of the step loop, so the state to checkpoint is the one recorded when
    the last *consumed* element was produced, not the iterator's current state. Yielding an exact count lets
    the prefetch thread finish by itself before anyone else reads the iterator.
    """

    def __init__(
        self, batches: pipeline.TrainBatches, keys: tuple[str, ...], steps_per_element: int, count: int
    ):
        self.batches, self.keys, self.k, self.count = batches, keys, steps_per_element, count
        self.states: deque = deque()

    def __iter__(self) -> Iterator[dict]:
        for _ in range(self.count):
            group = [next(self.batches) for _ in range(self.k)]
            if self.k == 1:
                element = {key: group[0][key] for key in self.keys}
            else:
                element = {key: np.stack([b[key] for b in group]) for key in self.keys}
            self.states.append(self.batches.get_state())
            yield element

    def consumed(self) -> dict:
        """Call once per consumed element; returns the iterator state after it."""
        return self.states.popleft()


def feed_plan(step: int, total_steps: int, steps_per_call: int) -> list[tuple[int, int]]:
    """`[(k, calls), ...]`: K-step calls while K steps remain, then single steps for the remainder."""
    remaining = total_steps - step
    plan = []
    if steps_per_call > 1 and remaining >= steps_per_call:
        plan.append((steps_per_call, remaining // steps_per_call))
        remaining %= steps_per_call
    if remaining > 0:
        plan.append((1, remaining))
    return plan


# ----------------------------------------------------------------------------------------------------------
# The run


def _config_json(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json())


def _check_resumable(saved: dict, current: dict, workdir: Path) -> None:
    changed = sorted(
        k for k in set(saved) | set(current) if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)
    )
    if changed:
        raise TrainError(
            f"workdir {workdir} holds a run with a different config ({', '.join(changed)} differ); "
            "use another --workdir or the same config"
        )


def model_params(state) -> nnx.State:
    """The model's parameters (nnx.Param) out of the train state."""
    return nnx.filter_state(state["model"], nnx.Param)


def params_checksum(state) -> str:
    """SHA-256 over the bytes of every parameter, in tree order (identical runs give identical sums)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(model_params(state)):
        digest.update(np.ascontiguousarray(evaluation_lib.to_host(leaf)).tobytes())
    return digest.hexdigest()


class _Stopper:
    """Turns SIGTERM into a flag the loop checks, so it saves and stops cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Trains and evaluates as `config` says, writing everything into `workdir`; returns the summary."""
    start_time = time.time()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    # Hosts and devices.
    parallel.initialize_distributed(
        config.distributed.coordinator_address,
        config.distributed.num_processes,
        config.distributed.process_id,
        config.distributed.mode,
    )
    is_main = jax.process_index() == 0
    mesh = parallel.make_mesh(config.mesh.data)
    if is_main:
        print(parallel.describe(mesh), flush=True)
    # The mesh is the context of every jit, sharding and collective of the run.
    with jax.set_mesh(mesh):
        return _run(config, workdir, mesh, start_time)


def _run(config: ml_collections.ConfigDict, workdir: Path, mesh, start_time: float) -> dict:
    """The run inside `jax.set_mesh(mesh)`: data, model, restore, loop, reports."""
    is_main = jax.process_index() == 0
    parallel.check_global_batch(config.batch_size, mesh)
    if config.steps_per_call < 1:
        raise TrainError(f"steps_per_call must be >= 1, got {config.steps_per_call}")

    # Data.
    data = prepare_data(config, workdir)
    batches = pipeline.train_batches(
        data.store,
        data.train_rows,
        mode=config.mode,
        global_batch_size=config.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_threads=config.data.num_threads,
        buffer_bytes=config.data.buffer_mb << 20,
    )
    steps_per_epoch = batches.steps_per_epoch
    if config.device_epochs:
        if config.mode not in DEVICE_EPOCH_MODES:
            raise TrainError(
                f"device_epochs needs inputs that fit on the device: mode {' or '.join(DEVICE_EPOCH_MODES)}, "
                f"not {config.mode}"
            )
        # Whole epochs on device keep every example (the last batch padded and masked).
        steps_per_epoch = math.ceil(len(data.train_rows) / config.batch_size)
    total_steps = config.num_steps if config.num_steps > 0 else config.num_epochs * steps_per_epoch
    if config.device_epochs:
        total_steps = math.ceil(total_steps / steps_per_epoch) * steps_per_epoch
    log.info(
        "data: %d train / %d test examples, %d classes, %d steps per epoch, %d steps",
        len(data.train_rows),
        len(data.test_rows),
        len(data.class_names),
        steps_per_epoch,
        total_steps,
    )

    # Model, optimizer and the jitted steps (parameters created sharded).
    graphdef, state = steps.create_train_state(
        config,
        input_dims=data.input_dims,
        num_classes=len(data.class_names),
        total_steps=total_steps,
        mesh=mesh,
        seed=config.seed,
    )
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    label_map = jax.device_put(data.label_map, parallel.replicated(mesh))
    step_fns = {
        k: steps.make_train_step(
            config, graphdef, label_map, mesh=mesh, state_sharding=state_sharding, steps_per_call=k
        )
        for k in sorted({1, config.steps_per_call})
    }
    eval_step = steps.make_eval_step(
        config,
        graphdef,
        label_map,
        mesh=mesh,
        state_sharding=state_sharding,
        retrieval_language=species_language(data.store),
    )
    evaluator = evaluation_lib.Evaluator(config, data, eval_step, mesh)

    # Restore: rerunning the same command with the same workdir resumes.
    meta = {
        "config": _config_json(config),
        "class_species": data.class_species.tolist(),
        "class_names": data.class_names,
        "store": data.store_path,
        "split": data.split_path,
        "fold": int(config.fold),
    }
    checkpointer = checkpoint_lib.Checkpointer(
        workdir / "checkpoints", best_metric=config.best_metric, best_mode=config.best_mode
    )
    step = 0
    latest = checkpointer.latest_step()
    if latest is not None:
        saved_meta = checkpointer.restore_meta(latest)
        _check_resumable(saved_meta["config"], meta["config"], workdir)
        if saved_meta["class_species"] != meta["class_species"]:
            raise TrainError(
                f"workdir {workdir} was trained with another species map (another store or split)"
            )
        state, data_state, _ = checkpointer.restore(latest, state)
        if not config.device_epochs:
            batches.set_state(data_state)
        step = latest
        if is_main and step >= total_steps:
            print(
                f"already trained: step {step} of {total_steps} in {workdir}; rewriting the report",
                flush=True,
            )
        elif is_main:
            print(f"resuming from step {step} in {workdir}", flush=True)

    writer = _Writers(workdir, is_main, truncate_after=step)
    bar = _progress_bar(is_main, total_steps, step)
    try:
        with _Stopper() as stopper:
            book = _Bookkeeper(
                config=config,
                mesh=mesh,
                steps_per_epoch=steps_per_epoch,
                total_steps=total_steps,
                evaluator=evaluator,
                checkpointer=checkpointer,
                writer=writer,
                meta=meta,
                bar=bar,
                stopper=stopper,
                step=step,
            )
            metrics = steps.init_metrics(config, mesh)
            if config.device_epochs:
                train_data = device_training_data(config, data, mesh)
                epoch_fn = steps.make_device_epoch(
                    config, graphdef, label_map, mesh=mesh, state_sharding=state_sharding
                )
                epoch_key = jax.random.key(config.seed)
                while step < total_steps:
                    epoch_index = step // steps_per_epoch
                    state, metrics = epoch_fn(
                        state, metrics, train_data, jax.random.fold_in(epoch_key, epoch_index)
                    )
                    previous, step = step, step + steps_per_epoch
                    metrics, stop = book.after(
                        state, metrics, previous, step, {"device_epoch": epoch_index + 1}
                    )
                    if stop:
                        break
            else:
                stop = False
                for k, calls in feed_plan(step, total_steps, config.steps_per_call):
                    feed = StatefulBatches(batches, device_keys(config.mode), k, calls)
                    sharding = (
                        parallel.batch_sharding(mesh) if k == 1 else parallel.stacked_batch_sharding(mesh)
                    )
                    for batch in pipeline.device_prefetch(
                        iter(feed), sharding, depth=config.data.device_prefetch
                    ):
                        state, metrics = step_fns[k](state, metrics, batch)
                        previous, step = step, step + k
                        metrics, stop = book.after(state, metrics, previous, step, feed.consumed())
                        if stop:
                            break
                    if stop:
                        break
        checkpointer.wait()
        if stopper.requested and is_main:
            print(f"SIGTERM: saved step {step} in {checkpointer.directory}; rerun to resume", flush=True)
        summary = _finish(config, workdir, data, state, checkpointer, writer, step, total_steps, start_time)
    finally:
        if bar is not None:
            bar.close()
        batches.close()
        checkpointer.close()
        writer.close()
    return summary


@dataclasses.dataclass
class _Bookkeeper:
    """After each call of the step function: logs train metrics, evaluates and checkpoints when due."""

    config: ml_collections.ConfigDict
    mesh: object
    steps_per_epoch: int
    total_steps: int
    evaluator: evaluation_lib.Evaluator
    checkpointer: checkpoint_lib.Checkpointer
    writer: _Writers
    meta: dict
    bar: object
    stopper: _Stopper
    step: int  # where this run starts

    def __post_init__(self):
        self.last_saved = self.checkpointer.latest_step()
        self.last_log_time, self.last_log_step, self.paused = time.time(), self.step, 0.0

    def after(self, state, metrics, previous: int, step: int, data_state: dict) -> tuple[dict, bool]:
        """Returns the (possibly reset) metric sums and whether to stop (SIGTERM)."""
        config = self.config
        epoch = step / self.steps_per_epoch
        crossed = _crossing(previous, step)
        at_epoch_end = step // self.steps_per_epoch != previous // self.steps_per_epoch
        final_step = step >= self.total_steps
        if crossed(config.log_every_steps) or at_epoch_end or final_step:
            metrics = self._log(metrics, step, epoch)
        pause_start = time.time()
        eval_now = crossed(config.eval_every_steps) if config.eval_every_steps > 0 else at_epoch_end
        eval_metrics = self.evaluator.evaluate(state) if (eval_now or final_step) else None
        if eval_metrics is not None:
            self.writer.write(step, epoch, eval_metrics)
        stop = self.stopper.requested
        if crossed(config.checkpoint_every_steps) or eval_metrics is not None or stop or final_step:
            self.meta["step"], self.meta["epoch"] = step, epoch
            self.checkpointer.save(
                step, state, data_state=data_state, meta=self.meta, metrics=eval_metrics, force=True
            )
            self.last_saved = step
        self.paused += time.time() - pause_start
        if self.bar is not None:
            self.bar.update(step - previous)
        return metrics, stop

    def _log(self, metrics, step: int, epoch: float):
        train = steps.summarize_metrics(jax.device_get(metrics))
        if not all(math.isfinite(v) for v in train.values()):
            raise TrainError(
                f"non-finite training metrics at step {step} ({train}); last good checkpoint: step "
                f"{self.last_saved if self.last_saved is not None else 'none'} "
                f"in {self.checkpointer.directory}"
            )
        now = time.time()
        busy = now - self.last_log_time - self.paused  # evals and checkpoint saves are not training
        rate = (step - self.last_log_step) * self.config.batch_size / max(busy, 1e-9)
        self.last_log_time, self.last_log_step, self.paused = now, step, 0.0
        self.writer.write(
            step, epoch, {f"train/{k}": v for k, v in train.items()} | {"train/samples_per_s": rate}
        )
        if self.bar is not None:
            loss = train.get("loss", float("nan"))
            self.bar.set_postfix(epoch=f"{epoch:.2f}", loss=f"{loss:.4f}", samples_s=f"{rate:,.0f}")
        return steps.init_metrics(self.config, self.mesh)


def _crossing(previous: int, step: int):
    """`crossed(every)`: whether the steps (previous, step] contain a multiple of `every` (> 0)."""
    return lambda every: every > 0 and step // every != previous // every


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)


class _Writers:
    """metrics.jsonl and TensorBoard events, on process 0 only."""

    def __init__(self, workdir: Path, enabled: bool, truncate_after: int):
        self.enabled = enabled
        self.path = workdir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            # A resumed run rewrites what came after its checkpoint.
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line and json.loads(line)["step"] <= truncate_after
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.tb = ScalarWriter(workdir / "tensorboard")

    def write(self, step: int, epoch: float, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "epoch": round(float(epoch), 4)} | {
            k: float(v) for k, v in values.items()
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.tb.add_scalars(step, {k: float(v) for k, v in values.items()})

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _finish(config, workdir, data, state, checkpointer, writer, step, total_steps, start_time) -> dict:
    """summary.json and curves.png (process 0)."""
    rows = []
    if (workdir / "metrics.jsonl").exists():
        from deepearth_jax import plots

        rows = plots.read_metrics(workdir / "metrics.jsonl")
    final = {}
    for row in rows:
        final.update({k: v for k, v in row.items() if k not in ("step", "epoch")})
    best_step = checkpointer.best_step()
    best = {}
    if best_step is not None:
        best = {"step": best_step, **(checkpointer.manager.metrics(best_step) or {})}
    wall = time.time() - start_time
    train_rates = [r["train/samples_per_s"] for r in rows if "train/samples_per_s" in r]
    summary = {
        "config": _config_json(config),
        "store": data.store_path,
        "split": data.split_path,
        "steps": int(step),
        "total_steps": int(total_steps),
        "complete": step >= total_steps,
        "final": final,
        "best": best,
        "wall_time_s": round(wall, 2),
        "samples_per_s": float(np.median(train_rates)) if train_rates else None,
        "num_classes": len(data.class_names),
        "params_checksum": params_checksum(state),
    }
    if jax.process_index() == 0:
        store_lib.write_json_atomic(workdir / "summary.json", summary)
        if rows:
            from deepearth_jax import plots

            plots.plot_curves(rows, workdir / "curves.png", title=f"{config.model.name} ({config.mode})")
        log.info("summary: %s", {k: summary[k] for k in ("steps", "wall_time_s", "params_checksum")})
        if final:
            shown = {k: round(v, 4) for k, v in final.items() if k.startswith("test/") and k.count("/") == 1}
            print(f"final: {shown}", flush=True)
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
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for item in rest:
        if not item.startswith("--config.") or "=" not in item:
            parser.error(f"unrecognised argument {item!r} (overrides look like --config.FIELD=VALUE)")
        key, _, value = item[len("--config.") :].partition("=")
        overrides[key] = value
    setup_logging(args.verbose, timestamps=True)
    config = config_utils.load_config(args.config)
    config_utils.apply_overrides(config, overrides)
    workdir = (
        Path(args.workdir) if args.workdir else Path("checkpoints") / Path(args.config.split(":")[0]).stem
    )
    return config, workdir


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def command() -> int:
        train_and_evaluate(*parse_args(argv))
        return 0

    return run_command(command, (TrainError,), "interrupted (the last checkpoint is kept; rerun to resume)")


if __name__ == "__main__":
    sys.exit(main())
