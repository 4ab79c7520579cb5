"""Arrow columns of the source files as numpy: list columns flattened, numbers with NaN for nulls."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from deepearth_jax.data.convert.errors import ConvertError


class ColumnTypeError(ConvertError, ValueError):
    """A source column of another type than its layout says; a ValueError too, so that callers that add the
    file and column name (`observations._column_errors`) still catch it."""


def flatten_list_column(column: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (nested) list column -> `(values, offsets (N+1,), valid (N,))`: row i is values[o[i]:o[i+1]].

    Null numbers inside a list come back as NaN (so they are caught as non-finite, never as zeros).
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    offsets = None
    array = column
    while True:
        if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            level = array.offsets.to_numpy().astype(np.int64)
            child = array.values
        elif pa.types.is_fixed_size_list(array.type):
            size = array.type.list_size
            level = (np.arange(len(array) + 1, dtype=np.int64) + array.offset) * size
            child = array.values
        else:
            break
        offsets = level if offsets is None else level[offsets]
        array = child
    if offsets is None:
        raise ColumnTypeError(f"expected a list column, got {column.type}")
    if not (pa.types.is_floating(array.type) or pa.types.is_integer(array.type)):
        raise ColumnTypeError(f"expected lists of numbers, got {column.type}")
    values = array.to_numpy(zero_copy_only=False)
    if array.null_count and not np.issubdtype(values.dtype, np.floating):
        values = array.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return values, offsets, valid


def inner_lists_ok(column: pa.Array, size: int) -> np.ndarray | None:
    """For a nested list column, `(N,)` bool: every innermost list of the row holds `size` values.

    None for a flat list column (it states no inner size). Lets a row of tokens x D with the right total
    but another D be caught, instead of being read as a reshaped row.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    levels = []
    array = column
    while (
        pa.types.is_list(array.type)
        or pa.types.is_large_list(array.type)
        or pa.types.is_fixed_size_list(array.type)
    ):
        if pa.types.is_fixed_size_list(array.type):
            n = len(array)
            offsets = (np.arange(n + 1, dtype=np.int64) + array.offset) * array.type.list_size
        else:
            offsets = array.offsets.to_numpy().astype(np.int64)
        levels.append(offsets)
        array = array.values
    if len(levels) < 2:
        return None
    bad = np.diff(levels[-1]) != size  # per innermost list
    for offsets in reversed(levels[:-1]):
        # A list is bad when any of its children is; offsets index into the children.
        cumulative = np.concatenate([[0], np.cumsum(bad, dtype=np.int64)])
        bad = cumulative[offsets[1:]] - cumulative[offsets[:-1]] > 0
    return ~bad


def numbers(column: pa.Array) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls."""
    return column.cast(pa.float64()).to_numpy(zero_copy_only=False)


def strings(column: pa.Array) -> list:
    """A column as Python strings (None for nulls)."""
    return column.cast(pa.string()).to_pylist()


def first_urls(column: pa.Array) -> list:
    """The first image url of each row, from a list<string> or a `;`-joined string column."""
    out = []
    for value in column.to_pylist():
        if isinstance(value, list):
            value = next((u for u in value if u), None)
        elif isinstance(value, str):
            value = next((u.strip() for u in value.split(";") if u.strip()), None)
        out.append(value)
    return out
