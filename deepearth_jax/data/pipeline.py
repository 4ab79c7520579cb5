"""The input pipeline: Grain index pipeline -> one gather per batch from the memmaps -> sharded device arrays.

Training (`train_batches`): a Grain `MapDataset` of global step indices, repeated forever, mapped to one
batch read each; Grain supplies the reading threads, the bounded read-ahead and the checkpointable
iterator state. Step `i` is global batch `j = i % steps_per_epoch` of epoch `e = i // steps_per_epoch`:
the positions `[j * G, (j + 1) * G)` of epoch e's global shuffle of `rows` (a permutation drawn from
`(seed, e)`: every epoch has its own order and the same seed repeats it; the remainder `n % G` is dropped),
sharded per JAX process *after* the shuffle: process `p` of `P` takes every P-th of them from `p`. So
global batch `j` holds the same examples whatever the process count. The permutation is computed once per
epoch with numpy (vectorised), not by Grain's per-example `shuffle -> slice -> batch` chain, whose Python
cost made small-row modes (language, vision_pooled) index-bound.

Each batch is one `deepearth_jax.data.reader.BatchReader` read (its docstring lists the batch keys). The
number of batches read ahead is derived from `buffer_bytes`, never Grain's default of 500 elements (13 GB
of vision at batch 1).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import grain
import numpy as np

from deepearth_jax.data import modes
from deepearth_jax.data import store as store_lib
from deepearth_jax.data.background import background_iter
from deepearth_jax.data.reader import BatchReader
from deepearth_jax.errors import ConfigError, TrainError

log = logging.getLogger(__name__)

# A pool keeps at most this many spare buffers per key beyond the prefetch depth.
_POOL_SLACK = 4
# Beyond this many batches in flight, reading further ahead only costs memory.
_MAX_PREFETCH = 16


def _check_rows(store: store_lib.Store, rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
        raise ValueError(
            f"rows must be a 1-D integer array of observation table rows, got {rows.dtype} {rows.shape}"
        )
    rows = rows.astype(np.int64, copy=False)
    n = store.num_observations
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"rows outside the observation table [0, {n}) of store {store.path}")
    return rows


def usable_rows(store: store_lib.Store, rows: np.ndarray, mode: str) -> np.ndarray:
    """The rows that have the embeddings `mode` needs, in their given order, `(M,)` int64.

    Vision modes (`vision`, `vision_pooled`, `multimodal`) drop observations without a vision embedding
    (`vision_row < 0`); language modes keep every row (each observation has a language row). Raises
    ValueError when the store lacks the array a mode needs, or for rows outside the table. Geo modes drop
    rows without a finite latitude, longitude, year, month and day.
    """
    modes.check_store(store, mode)
    rows = _check_rows(store, rows)
    if modes.needs_vision(mode):
        rows = rows[store.column("vision_row")[rows] >= 0]
    if modes.needs_place_and_date(mode):
        known = np.ones(len(rows), bool)
        for name in ("latitude", "longitude", "year", "month", "day"):
            known &= np.isfinite(np.asarray(store.column(name)[rows], np.float64))
        rows = rows[known]
    return rows


def _prefetch_count(buffer_bytes: int, batch_bytes: int) -> int:
    """Batches to read ahead: as many as fit in `buffer_bytes` (at least 1), at most _MAX_PREFETCH."""
    return max(1, min(_MAX_PREFETCH, int(buffer_bytes) // max(1, batch_bytes)))


def _check_batching(num_rows: int, global_batch_size: int, process_index: int, process_count: int) -> int:
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
    if global_batch_size % process_count:
        raise ConfigError(
            f"global_batch_size {global_batch_size} is not divisible by the process count {process_count}"
        )
    return global_batch_size // process_count


def _threaded_reader(
    store: store_lib.Store, mode: str, local_batch: int, num_threads: int, buffer_bytes: int
) -> tuple[BatchReader, int, int]:
    """A BatchReader with its buffer pool sized for the read-ahead: `(reader, grain_threads, prefetch)`.

    More Grain threads than batches in flight would idle (and Grain warns); the rest split each batch's copy.
    """
    reader = BatchReader(store, mode, local_batch)
    prefetch = _prefetch_count(buffer_bytes, reader.batch_bytes)
    reader.set_pool_capacity(prefetch + _POOL_SLACK)
    grain_threads = max(1, min(num_threads, prefetch))
    reader.set_split(max(1, num_threads // grain_threads))
    return reader, grain_threads, prefetch


def _rows_fingerprint(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


class TrainBatches:
    """Infinite, shuffled, process-sharded training batches of observation table `rows` (see the module doc).

    Args:
      store: an opened store.
      rows: `(N,)` observation table rows to train on; pass them through `usable_rows` first.
      mode: one of `modes.MODES` (decides the embedding keys).
      global_batch_size: examples per step over all processes (divisible by process_count).
      seed: shuffle seed in [0, 2**32); epoch e is the permutation of numpy's Generator seeded `[seed, e]`.
      process_index, process_count: this JAX process and how many there are.
      num_threads: reading threads (memmap copies release the GIL).
      buffer_bytes: bytes of batches read ahead (at least one batch); the consumer's own batches come on top.
      start_epoch: begin at this epoch's first batch.

    Attributes:
      steps_per_epoch: global batches per epoch, `len(rows) // global_batch_size` (the remainder is dropped;
        a different remainder each epoch, since each epoch is shuffled anew).
      prefetch: batches read ahead (derived from `buffer_bytes`).
      num_threads: reading threads actually used, `min(num_threads, prefetch)`.
      reader: the BatchReader.
    """

    def __init__(
        self,
        store: store_lib.Store,
        rows: np.ndarray,
        *,
        mode: str,
        global_batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        num_threads: int = 4,
        buffer_bytes: int = 512 << 20,
        start_epoch: int = 0,
    ):
        modes.check_mode(mode)
        self.rows = _check_rows(store, rows)
        local = _check_batching(len(self.rows), global_batch_size, process_index, process_count)
        self.steps_per_epoch = len(self.rows) // global_batch_size
        if self.steps_per_epoch == 0:
            raise TrainError(
                f"{len(self.rows)} training rows make no full global batch of {global_batch_size}"
            )
        if not 0 <= seed < 2**32:
            raise ConfigError(f"seed must be in [0, 2**32), got {seed}")
        self.mode, self.global_batch_size, self.seed = mode, int(global_batch_size), int(seed)
        self.reader, self.num_threads, self.prefetch = _threaded_reader(
            store, mode, local, num_threads, buffer_bytes
        )
        self._process_index, self._process_count = process_index, process_count
        self._orders: dict[int, np.ndarray] = {}
        self._orders_lock = threading.Lock()
        dataset = (
            grain.MapDataset.range(self.steps_per_epoch)
            .repeat(None)
            .map_with_index(lambda step, _: self.reader.read(self.rows[self.positions(step)]))
        )
        options = grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=self.prefetch)
        self._iterator = dataset.to_iter_dataset(options).__iter__()
        self._identity = {
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "num_rows": len(self.rows),
            "rows_sha256": _rows_fingerprint(self.rows),
            "mode": mode,
        }
        if start_epoch:
            self._iterator.set_state({"next_index": int(start_epoch) * self.steps_per_epoch})

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The shuffled positions `(n,)` into `rows` of one epoch (cached for the two latest epochs)."""
        with self._orders_lock:
            order = self._orders.get(epoch)
            if order is None:
                order = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
                self._orders[epoch] = order
                for old in sorted(self._orders)[:-2]:  # reads in flight may straddle an epoch boundary
                    del self._orders[old]
            return order

    def positions(self, step: int) -> np.ndarray:
        """This process's positions `(B,)` into `rows` for global step `step` (over all epochs)."""
        epoch, j = divmod(int(step), self.steps_per_epoch)
        g = self.global_batch_size
        return self.epoch_order(epoch)[j * g + self._process_index : (j + 1) * g : self._process_count]

    @property
    def step(self) -> int:
        """Global batches delivered so far (over all epochs), i.e. the index of the next one."""
        return int(self._iterator.get_state()["next_index"])

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to."""
        return self.step // self.steps_per_epoch

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict:
        """JSON-serialisable state: the next global batch index plus what must match on resume."""
        return {"next_index": self.step, **self._identity}

    def set_state(self, state: dict) -> None:
        """Resumes at `state` (from `get_state`): the following batches are exactly those that came next.

        Raises ValueError when the state belongs to another seed, batch size, mode or set of rows. The
        process count may differ: global batch `j` holds the same examples whatever the number of processes.
        """
        for key, value in self._identity.items():
            if key in state and state[key] != value:
                raise TrainError(
                    f"cannot resume: the saved iterator state has {key}={state[key]!r}, this one {value!r}"
                )
        self._iterator.set_state({"next_index": int(state["next_index"])})

    def close(self) -> None:
        """Stops the reading and copy threads and drops pending batches."""
        self._iterator.close()
        self.reader.close()

    def __enter__(self) -> TrainBatches:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# `train_batches(store, rows, *, mode, global_batch_size, seed, ...)`: the name the trainer calls.
train_batches = TrainBatches


def eval_batches(
    store: store_lib.Store,
    rows: np.ndarray,
    *,
    mode: str,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 4,
    buffer_bytes: int = 512 << 20,
) -> Iterator[dict[str, np.ndarray]]:
    """Every row exactly once, in `ceil(len(rows) / global_batch_size)` batches of one fixed shape.

    The last global batch is padded with copies of `rows[0]` and `mask=False`, `row=-1` there, so a jitted
    step never recompiles and padding never counts. Process `p` gets positions `p::process_count` of each
    global batch. Closing the generator (or leaving its loop) stops the reading threads.
    """
    modes.check_mode(mode)
    rows = _check_rows(store, rows)
    local = _check_batching(len(rows), global_batch_size, process_index, process_count)
    if len(rows) == 0:
        raise TrainError("no rows to evaluate")
    steps = -(-len(rows) // global_batch_size)
    reader, grain_threads, prefetch = _threaded_reader(store, mode, local, num_threads, buffer_bytes)
    n = len(rows)

    def read(step: int) -> dict[str, np.ndarray]:
        positions = np.arange(
            step * global_batch_size + process_index, (step + 1) * global_batch_size, process_count
        )
        mask = positions < n
        return reader.read(rows[np.where(mask, positions, 0)], mask)

    dataset = grain.MapDataset.range(steps).map(read)
    options = grain.ReadOptions(num_threads=grain_threads, prefetch_buffer_size=prefetch)
    return _closing(dataset.to_iter_dataset(options).__iter__(), reader)


def _closing(iterator: grain.DatasetIterator, reader: BatchReader) -> Iterator[dict[str, np.ndarray]]:
    try:
        yield from iterator
    finally:
        iterator.close()
        reader.close()


def device_prefetch(
    batches: Iterable[dict[str, np.ndarray]], sharding: Any, depth: int = 2
) -> Iterator[dict[str, Any]]:
    """Global `jax.Array` batches placed with `sharding`, `depth` of them in flight on a background thread.

    Each process-local batch becomes one global array per key via `jax.make_array_from_process_local_data`
    (the batch axis sharded as `sharding` says, e.g. `NamedSharding(mesh, P("data"))`); dtypes are kept, so
    vision stays float16 on the device until the jitted step casts it. Closing the generator stops the
    thread; an error in the source or the transfer is raised here.
    """
    import jax

    def place(batch: dict[str, np.ndarray]) -> dict[str, Any]:
        # One call for the whole dict (the sharding as a pytree prefix): half the host time of one per key.
        return jax.make_array_from_process_local_data(sharding, dict(batch))

    return background_iter(batches, depth, transform=place, name="device-prefetch")
