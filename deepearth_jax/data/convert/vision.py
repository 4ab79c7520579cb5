"""Step 3 of a conversion, the parts both layouts share: the plan of source units, checking a vision row,
casting it and writing it into vision.npy, and the progress meter.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepearth_jax.data.background import background_iter
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


def check_values(values: np.ndarray, dtype: str) -> tuple[str, str]:
    """("", "") when a flat vision row converts to `dtype` with finite values, else (bad kind, reason).

    Two SIMD reductions over the source values (NaN propagates through min and max), instead of testing
    the converted row value by value.
    """
    low, high = float(values.min()), float(values.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        count = int(values.size - np.count_nonzero(np.isfinite(values)))
        return "non_finite", f"{count} NaN/Inf/null value(s) in the vision embedding"
    peak = max(-low, high)
    if dtype == "float16" and peak >= _FLOAT16_OVERFLOW:
        return "float16_overflow", f"max |value| {peak:.6g} overflows float16 (largest 65504)"
    if dtype == "float32" and peak > float(np.finfo(np.float32).max):
        return "non_finite", f"max |value| {peak:.6g} overflows float32"
    return "", ""


class VisionSink:
    """Writes rows into the StoreWriter's vision.npy in place, with pwrite from one reusable buffer.

    Casting into a buffer that is already paged in and writing it with pwrite avoids a page fault per page
    of a fresh memmap, and the written rows never count in this process's RSS.
    """

    def __init__(self, writer: StoreWriter):
        self.writer = writer
        array = writer.vision
        self.shape = tuple(array.shape[1:])
        self.offset = int(array.offset)
        self.buffer = np.empty(self.shape, array.dtype)
        self.row_bytes = self.buffer.nbytes
        try:
            self.fd = os.open(array.filename, os.O_WRONLY)
        except OSError as e:
            raise write_error(writer.path, e) from None

    def write(self, row: int, values: np.ndarray) -> None:
        """Casts `values` (any float dtype, T*H*W*D values) into vision row `row`."""
        np.copyto(self.buffer, values.reshape(self.shape), casting="same_kind")
        view = memoryview(self.buffer).cast("B")
        position = self.offset + row * self.row_bytes
        try:
            while view:
                written = os.pwrite(self.fd, view, position)
                view, position = view[written:], position + written
        except OSError as e:
            raise write_error(self.writer.path, e) from None

    def save_progress(self) -> None:
        """The rows written so far reach the disk before the manifest records them."""
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise write_error(self.writer.path, e) from None
        self.writer.save_progress()

    def close(self) -> None:
        os.close(self.fd)


def copy_row(values: np.ndarray, shape, dtype: str, sink: VisionSink, row: int) -> tuple[str, str]:
    """Checks one flat source row and writes it as vision row `row`; returns ("", "") or (kind, reason)."""
    size = math.prod(shape)
    if values.size != size:
        return "shape", f"{values.size} values, expected {size} for {list(shape)}"
    kind, reason = check_values(values, dtype)
    if kind:
        return kind, reason
    sink.write(row, values)
    return "", ""


def prefetched(batches: Iterator, depth: int = 1) -> Iterator:
    """Yields from `batches`, produced by a background thread at most `depth` items ahead.

    pyarrow decodes the next batch (without the GIL) while the caller casts and writes the current one.
    """
    return background_iter(batches, depth, name="convert-prefetch")
