"""The data of a run from its config, in one call: store, split, label map and the training iterator.

`create_inputs(config, workdir)` is what the trainer (and `evaluate`) asks for, the shape of MaxText's
`create_data_iterator(config, mesh)`: it opens the store (or builds the cached synthetic demo store when none
is configured), loads or writes the split, keeps the rows the mode can read, maps store species to classes,
and opens the Grain training iterator. Bad input fails here, before anything compiles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import jax
import ml_collections
import numpy as np

from deepearth_jax import parallel, region
from deepearth_jax.data import modes, pipeline, reader, synthetic
from deepearth_jax.data import split as split_lib
from deepearth_jax.data import store as store_lib
from deepearth_jax.errors import TrainError  # noqa: F401  (re-exported)
from deepearth_jax.io import default_cache_dir, file_sha256

log = logging.getLogger(__name__)


def demo_cache_key(demo: ml_collections.ConfigDict) -> str:
    """12 hex digits of the demo config and the generator version (a new generator never reuses a cache)."""
    spec = {k: (list(v) if isinstance(v, tuple) else v) for k, v in demo.to_dict().items()}
    spec["generator_version"] = synthetic.GENERATOR_VERSION
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def demo_store(demo: ml_collections.ConfigDict) -> tuple[Path, Path]:
    """Builds (once, cached) the demo store and its default split; returns `(store_dir, split_file)`."""
    key = demo_cache_key(demo)
    root = default_cache_dir()
    store_dir, split_file = root / f"demo-{key}", root / f"demo-{key}.split.json"
    manifest = store_dir / store_lib.MANIFEST_FILE
    if not manifest.exists() or not store_lib.read_manifest(store_dir).get("complete"):
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
    train_rows: np.ndarray  # store table rows, usable in the configured mode (validation rows excluded)
    test_rows: np.ndarray
    validation_rows: np.ndarray  # carved from the holdout's training rows (docs/SPLITS.md); selection only
    label_map: np.ndarray  # (num_store_species,) int32: store species index -> class, -1 = unseen in training
    class_species: np.ndarray  # (C,) store species index of each class
    class_names: list[str]
    input_dims: dict
    store_path: str
    split_path: str


def _locate(config: ml_collections.ConfigDict, workdir: Path) -> tuple[store_lib.Store, Path]:
    """`(opened store, split file)` as configured; the demo store and a default split in `workdir` otherwise.

    A store that lacks the embeddings `config.mode` reads is refused here, in one line, before any split is
    made or read (and so before anything compiles)."""
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
    modes.check_store(store, config.mode)
    if split_path is None:
        split_path = workdir / "split.json"
        if not split_path.exists():
            log.info("no split_file configured: writing the default spatiotemporal split to %s", split_path)
            if jax.process_index() == 0:
                split_lib.write_split(split_lib.make_split(store), split_path)
        if jax.process_count() > 1:  # the others read it only once process 0 has written it
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"default split {split_path}")
    if not Path(split_path).exists():
        raise TrainError(f"split file {split_path} does not exist")
    # Every process logs what it read: with several hosts they must agree (tests/test_parallel.py).
    log.info("split: %s (sha256 %s)", split_path, file_sha256(split_path))
    return store, Path(split_path)


def _input_dims(store: store_lib.Store) -> dict:
    dims = {}
    if store.language is not None:
        dims["language"] = int(store.language.shape[1])
    if store.vision is not None:
        dims["vision"] = int(store.vision.shape[-1])  # token width D (= pooled width)
        dims["vision_shape"] = tuple(int(d) for d in store.vision.shape[1:])
    return dims


def prepare_data(config: ml_collections.ConfigDict, workdir: Path) -> Data:
    """Opens the store and split, selects usable rows, builds the label map; fails early on bad input."""
    modes.check_mode(config.mode)
    store, split_path = _locate(config, Path(workdir))
    store_path = store.path
    # Old split files (v1, cached demo splits) get the validation set make_split would have written.
    split = split_lib.with_validation(split_lib.load_split(split_path), store)
    fold = None if config.fold < 0 else int(config.fold)
    subsets = {
        name: split.rows(store, name, fold=fold, allow_missing=config.allow_missing)
        for name in ("train", "validation", "test")
    }
    dropped = sum(len(r) for r in subsets.values())
    subsets = {name: pipeline.usable_rows(store, r, config.mode) for name, r in subsets.items()}
    dropped -= sum(len(r) for r in subsets.values())
    train_rows, validation_rows, test_rows = subsets["train"], subsets["validation"], subsets["test"]
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
    class_species = np.unique(store.column("species_index")[train_rows])
    label_map = np.full(store.num_species, -1, np.int32)
    label_map[class_species] = np.arange(len(class_species), dtype=np.int32)
    names = store.species_names
    input_dims = _input_dims(store)
    if modes.needs_place_and_date(config.mode):
        input_dims[region.NORMALIZER_KEY] = region.fit_normalizer(store, train_rows)
    return Data(
        store=store,
        split=split,
        train_rows=train_rows,
        test_rows=test_rows,
        validation_rows=validation_rows,
        label_map=label_map,
        class_species=class_species,
        class_names=[names[i] for i in class_species],
        input_dims=input_dims,
        store_path=str(Path(store_path).absolute()),
        split_path=str(Path(split_path).absolute()),
    )


@dataclasses.dataclass
class Inputs:
    """The data of a run and its training iterator; `total_steps` counts optimizer steps."""

    data: Data
    batches: pipeline.TrainBatches
    steps_per_epoch: int
    total_steps: int

    def close(self) -> None:
        self.batches.close()


def training_batches(config: ml_collections.ConfigDict, data: Data) -> tuple[pipeline.TrainBatches, int]:
    """`(Grain iterator over data.train_rows, steps per epoch)` by the config's seed, batch and threads; with
    device epochs an epoch keeps every example (the last batch padded and masked)."""
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
        steps_per_epoch = math.ceil(len(data.train_rows) / config.batch_size)
    return batches, steps_per_epoch


def create_inputs(config: ml_collections.ConfigDict, workdir: Path) -> Inputs:
    """`prepare_data` plus the Grain training iterator and the run's length in steps."""
    data = prepare_data(config, workdir)
    if config.device_epochs and config.mode not in modes.DEVICE_EPOCH_MODES:
        raise TrainError(
            "device_epochs needs inputs that fit on the device: mode "
            f"{' or '.join(modes.DEVICE_EPOCH_MODES)}, not {config.mode} (add --config.device_epochs=false "
            "to stream batches)"
        )
    batches, steps_per_epoch = training_batches(config, data)
    total_steps = config.num_steps if config.num_steps > 0 else config.num_epochs * steps_per_epoch
    if config.device_epochs:
        total_steps = math.ceil(total_steps / steps_per_epoch) * steps_per_epoch
    log.info(
        "data: %d train / %d validation / %d test examples, %d classes, %d steps per epoch, %d steps",
        len(data.train_rows),
        len(data.validation_rows),
        len(data.test_rows),
        len(data.class_names),
        steps_per_epoch,
        total_steps,
    )
    return Inputs(data, batches, steps_per_epoch, total_steps)


DEVICE_EPOCHS_MAX_BYTES = 4 << 30  # the training inputs replicated on every device, float32


def device_training_data(config: ml_collections.ConfigDict, data: Data, mesh) -> dict:
    """The whole training set on device, replicated (for `device_epochs`): species and the mode's input."""
    store, rows = data.store, data.train_rows
    host = {"species": store.column("species_index")[rows].astype(np.int32)}
    for key in modes.embedding_keys(config.mode):
        source = reader.source(store, key)
        nbytes = len(rows) * int(np.prod(source.shape[1:])) * 4
        if nbytes > DEVICE_EPOCHS_MAX_BYTES:
            raise TrainError(
                f"device_epochs: the training {key} inputs take {nbytes / 2**30:.1f} GiB on every device "
                f"(at most {DEVICE_EPOCHS_MAX_BYTES / 2**30:.0f}); add --config.device_epochs=false"
            )
        index = store.column(reader.ROW_COLUMN[key])[rows]
        host[key] = np.asarray(source[index], np.float32)
    if modes.needs_place_and_date(config.mode):
        location, time = region.place_and_date(store, rows)
        host["location"], host["time"] = location.astype(np.float32), time.astype(np.float32)
    return jax.device_put(host, parallel.replicated(mesh))


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


def device_batches(
    config: ml_collections.ConfigDict, inputs: Inputs, mesh, step: int
) -> Iterator[tuple[int, dict, dict]]:
    """`(k, device batch, iterator state after it)` from `step` to the end: K-step stacks, then singles."""
    keys = ("species", "mask", *modes.input_keys(config.mode))
    for k, calls in feed_plan(step, inputs.total_steps, config.steps_per_call):
        feed = StatefulBatches(inputs.batches, keys, k, calls)
        sharding = parallel.batch_sharding(mesh) if k == 1 else parallel.stacked_batch_sharding(mesh)
        for batch in pipeline.device_prefetch(iter(feed), sharding, depth=config.data.device_prefetch):
            yield k, batch, feed.consumed()
