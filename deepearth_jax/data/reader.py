"""Reads one batch of observation rows from a store into recycled numpy buffers (`BatchReader`).

One gather per key per batch with `np.take(..., out=buffer)` into recycled preallocated buffers (fresh
large allocations would page-fault on every 4 KB); rows are read in ascending store order for locality and
the batch *keeps* that order (every key follows it, and `row` says which observation each example is), so
no second copy un-permutes them. Indices are bounds-checked once per batch; there is no per-example Python.
The copies release the GIL, so Grain's threads overlap them.

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
import sys
import threading

import numpy as np

from deepearth_jax.data import modes
from deepearth_jax.data import store as store_lib

# Splitting a batch's copy across threads pays off only for chunks of at least this many bytes.
_MIN_SPLIT_BYTES = 8 << 20


# The observation-table column that indexes each embedding key's source array.
ROW_COLUMN = {"language": "language_row", "vision": "vision_row", "vision_pooled": "vision_row"}


def source(store: store_lib.Store, key: str) -> np.ndarray:
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
        self.sources: dict[str, np.ndarray] = {key: source(store, key) for key in modes.embedding_keys(mode)}
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
