"""Step 3 of a conversion, the parts both layouts share: the plan of source units, checking a vision row,
casting it and writing it into vision.npy, and the progress meter.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepearth_jax.data.background import background_iter
from deepearth_jax.data.store_check import rows_per_chunk
from deepearth_jax.data.store_writer import StoreWriter, write_error
from deepearth_jax.io import progress_bar

# Source bytes per batch of vision rows; three batches are in flight (decoding, queued, converting).
BATCH_BYTES = 64 << 20

# The smallest magnitude that rounds to Inf in float16 (65504 is the largest finite value; round to nearest).
_FLOAT16_OVERFLOW = 65520.0


@dataclass
class VisionPlan:
    """Where each kept observation's vision row lives in the source, split into resumable units."""

    shape: tuple[int, ...] | None
    units: list[tuple[str, object]]  # (unit name, what to read)
    num_rows: int  # upper bound of vision rows (the candidates)
    bad: list[dict]
    stats: dict
    source_files: list[Path]


def new_record(start: int) -> dict:
    """The record of one source unit: its first vision row, the ids copied, bad rows and counts."""
    return {"start": start, "gbif_ids": [], "bad": [], "duplicates": 0, "not_indexed": 0}


class Meter:
    """Counts rows and source bytes; drives a progress bar (rows/s, MB/s) when asked to."""

    def __init__(self, total_rows: int, enabled: bool, desc: str):
        self.rows = 0
        self.bytes = 0
        self.start = time.perf_counter()
        self.bar = progress_bar(total_rows, desc, enabled=enabled)

    def update(self, rows: int, nbytes: int) -> None:
        self.rows += rows
        self.bytes += nbytes
        self.bar.update(rows)
        if self.bytes:
            elapsed = max(1e-9, time.perf_counter() - self.start)
            self.bar.set_postfix_str(f"{self.bytes / elapsed / 1e6:.0f} MB/s", refresh=False)

    def close(self) -> None:
        self.bar.close()


class VisionSink:
    """Checks, casts and writes vision rows into the StoreWriter's vision.npy, on a pool of threads.

    A batch of rows is cut into pieces of about PIECE_VALUES values; each piece is checked (its largest
    magnitude, or min and max: NaN propagates) and cast into a staging buffer on a worker thread (numpy
    releases the GIL), so the cast runs on every core while the next batch is decoded. Good rows then get
    consecutive row numbers in source order and are written with pwrite (no page faults of a fresh memmap,
    nothing in this process's RSS) on the pool, and hashed in row order on one more thread (the manifest's
    checksum chunks), while the caller moves on. `commit_progress` records a unit once its rows are
    durable; `settle` waits for everything.
    """

    def __init__(self, writer: StoreWriter, start: int, workers: int | None = None):
        self.writer = writer
        array = writer.vision
        self.shape = tuple(array.shape[1:])
        self.size = math.prod(self.shape)
        self.dtype = array.dtype
        self.offset = int(array.offset)
        self.row_bytes = self.size * self.dtype.itemsize
        try:
            self.fd = os.open(array.filename, os.O_WRONLY)
        except OSError as e:
            raise write_error(writer.path, e) from None
        workers = workers or min(8, os.cpu_count() or 1)
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="convert-cast")
        self.slots: list[tuple[np.ndarray, list[concurrent.futures.Future]]] = []  # staging, its writes
        self.turn = 0
        self.committer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="convert-commit")
        self.commit: concurrent.futures.Future | None = None
        self.hasher = _ChunkHasher(rows_per_chunk(self.row_bytes), self.row_bytes, start)
        self.hashing = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="convert-hash")

    def copy_rows(self, rows: list[np.ndarray], start: int) -> list[tuple[str, str]]:
        """Checks flat source rows and writes the good ones as vision rows start, start + 1, ... (in order).

        Returns `(kind, reason)` per row, `("", "")` for a row written. Writes may still be in flight.
        """
        results = [("", "")] * len(rows)
        candidates = []
        for i, values in enumerate(rows):
            if values.size != self.size:
                results[i] = ("shape", f"{values.size} values, expected {self.size} for {list(self.shape)}")
            else:
                candidates.append(i)
        if not candidates:
            return results
        staging = self._staging(len(candidates))
        tasks = _pieces([(rows[i], staging[j]) for j, i in enumerate(candidates)], self.size)
        low = np.full((len(candidates), -(-self.size // _STEP_VALUES)), np.nan)
        high = low.copy()
        for future in [self.pool.submit(_check_and_cast, task, low, high) for task in tasks]:
            future.result()
        good = []
        for j, i in enumerate(candidates):
            results[i] = _judge(float(np.min(low[j])), float(np.max(high[j])), rows[i], self.dtype)
            if not results[i][0]:
                good.append(j)
        self._write(staging, good, start)
        return results

    def _staging(self, rows: int) -> np.ndarray:
        """A staging buffer of `rows` rows: two alternate, each reused once its writes are done."""
        if len(self.slots) < 2:
            self.slots.append((np.empty((0, self.size), self.dtype), []))
        self.turn = (self.turn + 1) % len(self.slots)
        buffer, writes = self.slots[self.turn]
        self._wait(writes)
        if buffer.shape[0] < rows:
            buffer = np.empty((rows, self.size), self.dtype)
        self.slots[self.turn] = (buffer, [])
        return buffer[:rows]

    def _write(self, staging: np.ndarray, good: list[int], start: int) -> None:
        """Queues pwrites of the good staging rows: runs of neighbours as one range, cut into pieces."""
        writes = self.slots[self.turn][1]
        piece = max(1, PIECE_VALUES * self.dtype.itemsize)
        k = 0
        while k < len(good):
            end = k + 1
            while end < len(good) and good[end] == good[end - 1] + 1:
                end += 1
            data = memoryview(staging[good[k] : good[end - 1] + 1]).cast("B")
            position = self.offset + (start + k) * self.row_bytes
            for lo in range(0, len(data), piece):
                writes.append(self.pool.submit(_pwrite, self.fd, data[lo : lo + piece], position + lo))
            writes.append(self.hashing.submit(self.hasher.feed, data, start + k, end - k))
            k = end

    def _wait(self, writes: list[concurrent.futures.Future]) -> None:
        try:
            for future in writes:
                future.result()
        except OSError as e:
            raise write_error(self.writer.path, e) from None
        finally:
            writes.clear()

    def commit_progress(self, progress: dict) -> None:
        """Records `progress` once the rows written so far are on disk: their fsync and the manifest update
        run on a background thread while the caller goes on (the previous commit is finished first, so the
        manifest never runs ahead of the data). `progress` must not change afterwards."""
        self._wait_writes()
        self._wait_commit()
        self.commit = self.committer.submit(self._commit, progress)

    def _commit(self, progress: dict) -> None:
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise write_error(self.writer.path, e) from None
        self.writer.record_progress(progress)

    def settle(self) -> dict[int, str]:
        """Waits for every write and commit, raising the first error; returns the digests of the checksum
        chunks of vision.npy hashed as they were written (`array_checksums(known=...)`), valid once the
        array is cut to the rows written."""
        self._wait_writes()
        self._wait_commit()
        return self.hashing.submit(self.hasher.finish).result()

    def _wait_writes(self) -> None:
        for _, writes in self.slots:
            self._wait(writes)

    def _wait_commit(self) -> None:
        commit, self.commit = self.commit, None
        if commit is not None:
            commit.result()

    def close(self) -> None:
        """Waits for writes and commits in flight (errors dropped: close follows settle, or a failure)."""
        self.pool.shutdown(wait=True)
        self.committer.shutdown(wait=True)
        self.hashing.shutdown(wait=True)
        self.slots.clear()
        os.close(self.fd)


class _ChunkHasher:
    """SHA-256 of vision.npy's checksum chunks (`rows_per_chunk` rows each), fed rows in row order as they
    are written, on one thread. A chunk begun before `start` (resumed conversions) is read back later."""

    def __init__(self, rows_per_chunk: int, row_bytes: int, start: int):
        self.per_chunk, self.row_bytes, self.row = rows_per_chunk, row_bytes, start
        self.whole = start % rows_per_chunk == 0  # whether this chunk is hashed from its first row
        self.sha = hashlib.sha256()
        self.digests: dict[int, str] = {}

    def feed(self, data: memoryview, row: int, rows: int) -> None:
        if row != self.row:
            raise RuntimeError(f"vision rows hashed out of order: row {row}, expected {self.row}")
        offset = 0
        while rows:
            take = min(rows, self.per_chunk - self.row % self.per_chunk)
            if self.whole:
                self.sha.update(data[offset : offset + take * self.row_bytes])
            offset, self.row, rows = offset + take * self.row_bytes, self.row + take, rows - take
            if self.row % self.per_chunk == 0:
                if self.whole:
                    self.digests[self.row // self.per_chunk - 1] = self.sha.hexdigest()
                self.sha, self.whole = hashlib.sha256(), True

    def finish(self) -> dict[int, str]:
        """The digests, with the last chunk's if it is partial (the array ends at the last row fed)."""
        if self.row % self.per_chunk and self.whole:
            self.digests[self.row // self.per_chunk] = self.sha.hexdigest()
        return dict(self.digests)


# Values per pool task, and per step inside a task (a cache-sized part checked, then cast while still hot).
PIECE_VALUES = 1 << 20
_STEP_VALUES = 1 << 16


def _pieces(pairs: list[tuple[np.ndarray, np.ndarray]], size: int) -> list[list[tuple]]:
    """Pool tasks of about PIECE_VALUES values: `[(source, staging row, row index, lo, hi), ...]` each, cut at
    _STEP_VALUES boundaries so that every step's min and max has its own slot."""
    tasks, task, filled = [], [], 0
    step_piece = max(_STEP_VALUES, PIECE_VALUES // _STEP_VALUES * _STEP_VALUES)
    for j, (source, target) in enumerate(pairs):
        for lo in range(0, size, step_piece):
            hi = min(size, lo + step_piece)
            task.append((source, target, j, lo, hi))
            filled += hi - lo
            if filled >= PIECE_VALUES:
                tasks.append(task)
                task, filled = [], 0
    if task:
        tasks.append(task)
    return tasks


def _check_and_cast(task: list[tuple], low: np.ndarray, high: np.ndarray) -> None:
    """Records min and max of each step of the task's pieces and casts them into staging (bad rows too:
    they are never written). float32 -> float16, the common case, takes `_float32_to_float16`, which yields
    the largest magnitude on the way (low = -high then; the verdict only needs the magnitude)."""
    with np.errstate(over="ignore", invalid="ignore"):
        for source, target, j, lo, hi in task:
            fast = source.dtype == np.float32 and target.dtype == np.float16
            for s in range(lo, hi, _STEP_VALUES):
                e = min(hi, s + _STEP_VALUES)
                part = source[s:e]
                if fast:
                    peak = _float32_to_float16(part, target[s:e])
                    low[j, s // _STEP_VALUES], high[j, s // _STEP_VALUES] = -peak, peak
                else:
                    low[j, s // _STEP_VALUES] = part.min()
                    high[j, s // _STEP_VALUES] = part.max()
                    np.copyto(target[s:e], part, casting="same_kind")


_SCRATCH = threading.local()


def _float32_to_float16(source: np.ndarray, target: np.ndarray) -> float:
    """Casts float32 to float16 exactly as numpy does (round to nearest even) for values below 65520 in
    magnitude, with integer operations that vectorise (numpy's own cast goes value by value); returns the
    largest magnitude (NaN if any NaN). Values at or beyond 65520 make the row bad, so theirs are not used."""
    n = len(source)
    if getattr(_SCRATCH, "size", 0) < n:
        _SCRATCH.size = n
        _SCRATCH.a, _SCRATCH.b, _SCRATCH.c = (np.empty(n, np.uint32) for _ in range(3))
    bits = source.view(np.uint32)
    a, b, c = _SCRATCH.a[:n], _SCRATCH.b[:n], _SCRATCH.c[:n]
    np.bitwise_and(bits, 0x7FFFFFFF, out=a)  # |x|
    peak_bits = int(a.max())
    # Normal halves: drop 13 mantissa bits rounding to nearest even, and rebias the exponent (127 -> 15).
    np.right_shift(a, 13, out=b)
    np.bitwise_and(b, 1, out=b)
    np.add(b, a, out=b)
    np.add(b, np.uint32(0xFFF - 0x38000000 + (1 << 32)), out=b, casting="unsafe")  # modulo 2**32
    np.right_shift(b, 13, out=b)
    # Below 2**-14 (subnormal halves): |x| + 0.5 rounds |x| to a multiple of 2**-24, to nearest even.
    np.add(a.view(np.float32), np.float32(0.5), out=c.view(np.float32))
    np.subtract(c, np.uint32(0x3F000000), out=c)
    np.copyto(b, c, where=a < 0x38800000)
    np.right_shift(bits, 16, out=c)
    np.bitwise_and(c, 0x8000, out=c)  # the sign
    np.bitwise_or(b, c, out=b)
    np.copyto(target.view(np.uint16), b, casting="unsafe")
    if peak_bits > 0x7F800000:
        return math.nan
    return float(np.uint32(peak_bits).view(np.float32))


def _judge(low: float, high: float, values: np.ndarray, dtype: np.dtype) -> tuple[str, str]:
    """check_values' verdict from a row's min and max (NaN propagates through both)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        count = int(values.size - np.count_nonzero(np.isfinite(values)))
        return "non_finite", f"{count} NaN/Inf/null value(s) in the vision embedding"
    peak = max(-low, high)
    if dtype == np.float16 and peak >= _FLOAT16_OVERFLOW:
        return "float16_overflow", f"max |value| {peak:.6g} overflows float16 (largest 65504)"
    if dtype == np.float32 and peak > float(np.finfo(np.float32).max):
        return "non_finite", f"max |value| {peak:.6g} overflows float32"
    return "", ""


def _pwrite(fd: int, data: memoryview, position: int) -> None:
    while data:
        written = os.pwrite(fd, data, position)
        data, position = data[written:], position + written


def prefetched(batches: Iterator, depth: int = 2, transform: Callable | None = None) -> Iterator:
    """Yields `transform(batch)` for each batch, computed by a background thread at most `depth` ahead.

    pyarrow decodes the next batches (without the GIL) while the pool checks, casts and writes this one.
    """
    return background_iter(batches, depth, transform, name="convert-prefetch")
