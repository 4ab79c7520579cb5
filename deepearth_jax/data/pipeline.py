"""The input pipeline: Grain index pipeline -> one gather per batch from the memmaps -> sharded device arrays.

Training (`train_batches`): a Grain `MapDataset` of global step indices, repeated forever, mapped to one
batch read each; Grain supplies the reading threads, the bounded read-ahead and the checkpointable
iterator state. Step `i` is global batch `j = i % steps_per_epoch` of epoch `e = i // steps_per_epoch`:
the positions `[j * G, (j + 1) * G)` of epoch e's global shuffle of `rows` (a permutation drawn from
`(seed, e)`: every epoch has its own order and the same seed repeats it; the remainder `n % G` is dropped),
sharded per JAX process *after* the shuffle: process `p` of `P` takes every P-th of them from `p`. So
global batch `j` holds the same examples whatever the process count. The permutation is computed once per
epoch with numpy (vectorised): Grain's own `shuffle -> slice -> batch` chain costs ~20 us of Python per
example, 5 ms per batch of 256, which made small-row modes (language, vision_pooled) index-bound.

Reading (`BatchReader`): one gather per key per batch with `np.take(..., out=buffer)` into recycled
preallocated buffers (fresh 200 MB allocations would cost a page fault per 4 KB, a third of the copy time);
rows are read in ascending store order for locality and the batch *keeps* that order (every key follows
it, and `row` says which observation each example is), so no second copy un-permutes them. Indices are
bounds-checked once per batch; there is no per-example Python. The copies release the GIL, so Grain's
threads overlap them; the number of batches prefetched is derived from `buffer_bytes`, never Grain's
default of 500 elements (13 GB of vision at batch 1).

Batch keys (process-local, `B = global_batch_size // process_count`):
    species        (B,) int32            store species_index
    location       (B, 3) float32        latitude, longitude (degrees), elevation (metres; NaN when unknown,
                                         which is every row of the DeepEarth data)
    time           (B, 6) float32        year, month, day, hour, minute, second (NaN where unknown)
    language       (B, L) float32        modes language, multimodal
    vision         (B, T, H, W, D)       store dtype (float16), modes vision, multimodal
    vision_pooled  (B, D) float32        mode vision_pooled: mean over (T, H, W), from the features cache
    mask           (B,) bool             False on evaluation padding
    row            (B,) int64            observation table row, -1 on padding
Padding rows repeat a real example (finite values), so nothing NaN or uninitialised reaches a model.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from deepearth_jax.data import modes
from deepearth_jax.data import store as store_lib
from deepearth_jax.data.background import background_iter

log = logging.getLogger(__name__)

# A pool keeps at most this many spare buffers per key beyond the prefetch depth.
_POOL_SLACK = 4
# Beyond this many batches in flight, reading further ahead only costs memory.
_MAX_PREFETCH = 16
# Splitting a batch's copy across threads pays off only for chunks of at least this many bytes.
_MIN_SPLIT_BYTES = 8 << 20


def _as_store(store: store_lib.Store | str | os.PathLike) -> store_lib.Store:
    return store if isinstance(store, store_lib.Store) else store_lib.open_store(store)


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
    ValueError when the store lacks the array a mode needs, or for rows outside the table.
    """
    modes.check_store(store, mode)
    rows = _check_rows(store, rows)
    if modes.needs_vision(mode):
        rows = rows[store.column("vision_row")[rows] >= 0]
    return rows


def _source(store: store_lib.Store, key: str) -> np.ndarray:
    """The array a batch key is gathered from: a store embedding, or the pooled-vision cache."""
    if key == "vision_pooled":
        from deepearth_jax.data.features import pooled_vision

        return pooled_vision(store)
    return store.language if key == "language" else store.vision


def _free_refcount() -> int:
    """getrefcount of an array held only by a list, seen from a loop over that list (3 on CPython 3.11)."""
    probe = [np.empty(0)]
    for buffer in probe:
        return sys.getrefcount(buffer)
    raise AssertionError("unreachable")


# Measured rather than assumed, since interpreters count borrowed references differently.
_FREE_REFS = _free_refcount()


class _BufferPool:
    """Recycles batch-sized arrays once nothing outside the pool references them (thread-safe).

    A buffer handed out stays referenced by whoever holds the batch, including a zero-copy device array on
    the CPU backend or a view of it (numpy views keep their owner alive), so a buffer is reused only when
    the pool's own reference is the last one.
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, capacity: int):
        self.shape, self.dtype, self.capacity = shape, np.dtype(dtype), capacity
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()

    def acquire(self) -> np.ndarray:
        with self._lock:
            for buffer in self._buffers:
                if sys.getrefcount(buffer) == _FREE_REFS:
                    return buffer
            buffer = np.empty(self.shape, self.dtype)
            if len(self._buffers) < self.capacity:
                self._buffers.append(buffer)
            return buffer


class BatchReader:
    """Reads one batch of observation rows from a store into a dict of numpy arrays (see the module doc).

    The small per-observation columns are gathered once at construction (`N_obs * 48` bytes); embeddings
    stay memory-mapped and are gathered per batch.

    Args:
      store: an opened store.
      mode: one of `modes.MODES`.
      batch_size: the number of rows of every batch (process-local).
      pool_capacity: how many recycled buffers per embedding key to keep (at least the batches in flight).
      split: copy one batch's embeddings on this many threads (chunks of at least _MIN_SPLIT_BYTES), so a
        single large batch in flight still uses several cores; `close()` stops them.
    """

    def __init__(
        self, store: store_lib.Store, mode: str, batch_size: int, pool_capacity: int = 8, split: int = 1
    ):
        modes.check_store(store, mode)
        self.store, self.mode, self.batch_size = store, mode, int(batch_size)
        self.split = 1
        self._copiers: concurrent.futures.ThreadPoolExecutor | None = None
        self.set_split(split)
        col = store.column
        self.species = np.ascontiguousarray(col("species_index"), dtype=np.int32)
        self.location = np.stack(
            [col(k).astype(np.float32) for k in ("latitude", "longitude", "elevation")], 1
        )
        self.time = np.stack(
            [col(k).astype(np.float32) for k in ("year", "month", "day", "hour", "minute", "second")], 1
        )
        self.vision_row = np.ascontiguousarray(col("vision_row"), dtype=np.int64)
        self.language_row = np.ascontiguousarray(col("language_row"), dtype=np.int64)
        self.sources: dict[str, np.ndarray] = {key: _source(store, key) for key in modes.input_keys(mode)}
        self.pools = {
            key: _BufferPool((self.batch_size, *source.shape[1:]), source.dtype, pool_capacity)
            for key, source in self.sources.items()
        }

    def set_split(self, split: int) -> None:
        """Copies each batch's embeddings on `split` threads from now on (1: on the calling thread)."""
        self.close()
        self.split = max(1, int(split))
        if self.split > 1:
            self._copiers = concurrent.futures.ThreadPoolExecutor(self.split, thread_name_prefix="batch-copy")

    def set_pool_capacity(self, capacity: int) -> None:
        """Keeps at most `capacity` recycled buffers per embedding key."""
        for pool in self.pools.values():
            pool.capacity = int(capacity)

    @property
    def batch_bytes(self) -> int:
        """Bytes of one batch, all keys."""
        per_row = (
            4 + 12 + 24 + 1 + 8 + sum(int(np.prod(s.shape[1:])) * s.itemsize for s in self.sources.values())
        )
        return per_row * self.batch_size

    def _embedding_rows(self, key: str, rows: np.ndarray) -> np.ndarray:
        if key == "language":
            return self.language_row[rows]
        index = self.vision_row[rows]
        if (index < 0).any():
            bad = self.store.observation_ids[rows[index < 0]][:5].tolist()
            raise ValueError(f"observation(s) without a vision embedding in a {self.mode!r} batch: {bad}")
        return index

    def read(self, rows: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One batch for observation table rows `(B,)`; `mask` (B,) bool marks real rows (default all).

        Rows come back sorted by their embedding row (read locality); `row` and every key follow that order.
        Masked-out rows are read like real ones (pass a real row there) and get `row = -1`.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.shape != (self.batch_size,):
            raise ValueError(f"a batch has {self.batch_size} rows, got shape {rows.shape}")
        if rows.min() < 0 or rows.max() >= len(self.species):
            raise ValueError(f"batch rows outside the observation table [0, {len(self.species)})")
        mask = np.ones(self.batch_size, bool) if mask is None else np.asarray(mask, bool)
        key_rows = {key: self._embedding_rows(key, rows) for key in self.sources}
        sort_key = key_rows.get("vision", key_rows.get("vision_pooled", key_rows.get("language")))
        if sort_key is not None:
            order = np.argsort(sort_key, kind="stable")
            rows, mask = rows[order], mask[order]
            key_rows = {key: index[order] for key, index in key_rows.items()}
        batch = {
            "species": self.species[rows],
            "location": self.location[rows],
            "time": self.time[rows],
            "mask": mask,
            "row": np.where(mask, rows, -1),
        }
        for key, source in self.sources.items():
            index = key_rows[key]
            if index.min() < 0 or index.max() >= source.shape[0]:
                raise ValueError(f"{key} rows outside [0, {source.shape[0]}) in store {self.store.path}")
            out = self.pools[key].acquire()
            self._gather(source, index, out)
            batch[key] = out
        return batch

    def _gather(self, source: np.ndarray, index: np.ndarray, out: np.ndarray) -> None:
        """`out[:] = source[index]` (indices already checked), in up to `split` chunks on the copy threads."""
        row_bytes = out.nbytes // max(1, len(out))
        chunks = min(self.split, len(index), max(1, out.nbytes // _MIN_SPLIT_BYTES))
        copiers = self._copiers
        if chunks > 1 and copiers is not None and row_bytes > 0:
            bounds = np.linspace(0, len(index), chunks + 1).astype(int)
            try:
                futures = [
                    copiers.submit(np.take, source, index[a:b], 0, out[a:b], "clip")
                    for a, b in zip(bounds[:-1], bounds[1:], strict=True)
                ]
            except RuntimeError:  # closed meanwhile: finish on this thread
                futures = None
            if futures is not None:
                for future in futures:
                    future.result()
                return
        # mode="clip" after the explicit check: mode="raise" with out= copies through a temporary.
        np.take(source, index, axis=0, out=out, mode="clip")

    def close(self) -> None:
        """Stops the copy threads (idempotent)."""
        copiers, self._copiers = self._copiers, None
        if copiers is not None:
            copiers.shutdown(wait=True)


def _prefetch_count(buffer_bytes: int, batch_bytes: int) -> int:
    """Batches to read ahead: as many as fit in `buffer_bytes` (at least 1), at most _MAX_PREFETCH."""
    return max(1, min(_MAX_PREFETCH, int(buffer_bytes) // max(1, batch_bytes)))


def _check_batching(num_rows: int, global_batch_size: int, process_index: int, process_count: int) -> int:
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
    if global_batch_size % process_count:
        raise ValueError(
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
            raise ValueError(
                f"{len(self.rows)} training rows make no full global batch of {global_batch_size}"
            )
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
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
                raise ValueError(
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
        raise ValueError("no rows to evaluate")
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


def get_training_batch(
    store: store_lib.Store | str | os.PathLike,
    observation_ids: Sequence[str],
    include_vision: bool = True,
    include_language: bool = True,
) -> dict[str, Any]:
    """The original DeepEarth library call: one batch for the given OBSERVATION_IDs, in their order.

    Returns a dict with `observation_ids` (list), `species` (Latin names, list), `species_index` `(B,)`
    int32, `locations` `(B, 3)` float32 (latitude, longitude in degrees, elevation in metres, NaN when
    unknown), `timestamps` `(B, 6)` float32 (year, month, day, hour, minute, second; NaN where unknown),
    and, when asked, `language_embeddings` `(B, L)` float32 and `vision_embeddings` `(B, T, H, W, D)` in
    the store dtype. Raises KeyError naming unknown ids and ValueError naming ids without a vision
    embedding when vision is asked for; nothing is ever filled with zeros.
    """
    store = _as_store(store)
    ids = [str(i) for i in observation_ids]
    if not ids:
        raise ValueError("no observation ids given")
    rows = store.rows_of(ids)
    if include_vision:
        if not store.has_vision:
            raise ValueError(f"store {store.path} has no vision embeddings")
        missing = [ids[i] for i in np.flatnonzero(store.column("vision_row")[rows] < 0)]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise ValueError(
                f"{len(missing)} observation id(s) have no vision embedding: {', '.join(missing[:5])}{more}"
            )
    if include_language and store.language is None:
        raise ValueError(f"store {store.path} has no language embeddings")
    col = store.column
    names = store.species_names
    species_index = col("species_index")[rows].astype(np.int32)
    batch: dict[str, Any] = {
        "observation_ids": ids,
        "species": [names[i] for i in species_index],
        "species_index": species_index,
        "locations": np.stack([col(k)[rows] for k in ("latitude", "longitude", "elevation")], 1).astype(
            np.float32
        ),
        "timestamps": np.stack(
            [col(k)[rows].astype(np.float64) for k in ("year", "month", "day", "hour", "minute", "second")], 1
        ).astype(np.float32),
    }
    if include_language:
        batch["language_embeddings"] = np.take(store.language, col("language_row")[rows], axis=0)
    if include_vision:
        batch["vision_embeddings"] = np.take(store.vision, col("vision_row")[rows], axis=0)
    return batch
