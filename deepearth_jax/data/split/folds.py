"""Spatial block cross-validation: a block grid over the pool, whole blocks balanced into K folds, buffers."""

from __future__ import annotations

import logging
import math

import numpy as np

from deepearth_jax.data import geo
from deepearth_jax.data.split.options import MAX_BLOCKS, MAX_BUFFER_BLOCKS, MAX_FOLDS
from deepearth_jax.errors import SplitError

log = logging.getLogger(__name__)

GRID_KEYS = ("block_km", "origin_lat", "origin_lon", "lat_ref", "dlat_deg", "dlon_deg")


def block_grid(lat: np.ndarray, lon: np.ndarray, block_km: float) -> dict:
    """The block grid of a pool: origin (south-west corner), cell sizes in degrees, reference latitude."""
    lat_ref = 0.5 * (float(lat.min()) + float(lat.max()))
    dlat, dlon = geo.degrees_for_km(block_km, lat_ref)
    return {
        "block_km": float(block_km),
        "origin_lat": float(lat.min()),
        "origin_lon": float(lon.min()),
        "lat_ref": lat_ref,
        "dlat_deg": float(dlat),
        "dlon_deg": float(dlon),
    }


def block_of(lat: np.ndarray, lon: np.ndarray, grid: dict) -> tuple[np.ndarray, np.ndarray]:
    """`(row, col)` int64 block indices of points on a grid from block_grid."""
    row = np.floor((np.asarray(lat) - grid["origin_lat"]) / grid["dlat_deg"]).astype(np.int64)
    col = np.floor((np.asarray(lon) - grid["origin_lon"]) / grid["dlon_deg"]).astype(np.int64)
    return row, col


def _best_swap(big: np.ndarray, small: np.ndarray, half_gap: float, cells: int = 1 << 22) -> tuple[int, int]:
    """`(a, c)` minimising |big[a] - small[c] - half_gap| (first in row-major order), in bounded memory."""
    rows = max(1, cells // len(small))
    best, where = math.inf, (0, 0)
    for start in range(0, len(big), rows):
        cost = np.abs(big[start : start + rows, None] - small[None, :] - half_gap)
        k = int(np.argmin(cost))
        if cost.flat[k] < best:
            best, where = float(cost.flat[k]), (start + k // len(small), k % len(small))
    return where


def balance_blocks(counts: np.ndarray, num_folds: int, seed: int) -> np.ndarray:
    """Assigns blocks with `counts` observations to `num_folds` folds; returns `(B,)` int64 folds.

    Greedy in seeded random order (each block to the currently smallest fold), then moves and swaps between
    the largest and smallest folds while they shrink the gap. Guarantee: max - min fold count <= max(counts).
    """
    counts = np.asarray(counts, np.int64)
    rng = np.random.default_rng([seed, 11])
    fold = np.empty(len(counts), np.int64)
    load = np.zeros(num_folds, np.int64)
    for b in rng.permutation(len(counts)):
        f = int(np.argmin(load))
        fold[b] = f
        load[f] += counts[b]
    for _ in range(10 * len(counts) + 100):
        big, small = int(np.argmax(load)), int(np.argmin(load))
        gap = load[big] - load[small]
        if gap <= 0:
            break
        in_big, in_small = np.flatnonzero(fold == big), np.flatnonzero(fold == small)
        # Best move (delta = block size) or swap (delta = size difference): 0 < delta < gap, closest to gap/2.
        options = [(counts[b], b, -1) for b in in_big]
        if len(in_small):
            a, c = _best_swap(counts[in_big], counts[in_small], gap / 2)
            options.append((counts[in_big[a]] - counts[in_small[c]], in_big[a], in_small[c]))
        options = [o for o in options if 0 < o[0] < gap]
        if not options:
            break
        delta, b, c = min(options, key=lambda o: (abs(o[0] - gap / 2), o[1], o[2]))
        fold[b] = small
        if c >= 0:
            fold[c] = big
        load[big] -= delta
        load[small] += delta
    return fold


def _reused_block_folds(reuse: dict, keys: np.ndarray, counts: np.ndarray, num_folds: int) -> np.ndarray:
    """Folds of blocks from another file's block table; blocks it lacks are balanced in after its own."""
    table = {(int(b["row"]), int(b["col"])): int(b["fold"]) for b in reuse["blocks"]}
    block_fold = np.full(len(keys), -1, np.int64)
    for k, (r, c) in enumerate(keys):
        block_fold[k] = table.get((int(r), int(c)), -1)
    new = np.flatnonzero(block_fold < 0)
    if len(new):
        log.warning("%d block(s) hold observations the reused split had none in; balancing them in", len(new))
        load = np.bincount(block_fold[block_fold >= 0], weights=counts[block_fold >= 0], minlength=num_folds)
        for k in new[np.argsort(-counts[new], kind="stable")]:
            f = int(np.argmin(load))
            block_fold[k] = f
            load[f] += counts[k]
    return block_fold


def _buffer_bits(lat, lon, row, col, fold, keys, block_fold, grid: dict, buffer_km: float) -> np.ndarray:
    """Bit f set when an observation (not in fold f) lies within buffer_km of a fold-f block, `(N,)` int64."""
    bits = np.zeros(len(lat), np.int64)
    if buffer_km <= 0:
        return bits
    # Blocks further than `reach` cells away are more than buffer_km away.
    side_min = min(
        grid["dlat_deg"] * 110.5,
        grid["dlon_deg"] * 111.2 * math.cos(math.radians(min(89.0, float(np.abs(lat).max()) + 1))),
    )
    reach = int(math.ceil(buffer_km / side_min))
    if reach > MAX_BUFFER_BLOCKS:
        raise SplitError(
            f"--buffer-km {buffer_km:g} reaches {reach} blocks of {grid['block_km']:g} km (at most "
            f"{MAX_BUFFER_BLOCKS}); use a larger --block-km or a smaller --buffer-km"
        )
    ncols = int(keys[:, 1].max() - keys[:, 1].min() + 2 * reach + 3)
    base_r, base_c = int(keys[:, 0].min()) - reach - 1, int(keys[:, 1].min()) - reach - 1
    flat_keys = (keys[:, 0] - base_r) * ncols + (keys[:, 1] - base_c)
    sort = np.argsort(flat_keys)
    sorted_keys = flat_keys[sort]
    for dr in range(-reach, reach + 1):
        for dc in range(-reach, reach + 1):
            if dr == 0 and dc == 0:
                continue
            nr, nc = row + dr, col + dc
            flat = (nr - base_r) * ncols + (nc - base_c)
            pos = np.clip(np.searchsorted(sorted_keys, flat), 0, len(sorted_keys) - 1)
            exists = sorted_keys[pos] == flat
            other = np.where(exists, block_fold[sort[pos]], -1)
            cand = np.flatnonzero(exists & (other != fold))
            if len(cand) == 0:
                continue
            south = grid["origin_lat"] + nr[cand] * grid["dlat_deg"]
            west = grid["origin_lon"] + nc[cand] * grid["dlon_deg"]
            d = geo.geodesic_km(
                lat[cand],
                lon[cand],
                np.clip(lat[cand], south, south + grid["dlat_deg"]),
                np.clip(lon[cand], west, west + grid["dlon_deg"]),
            )
            near = cand[d <= buffer_km]
            bits[near] |= np.left_shift(np.int64(1), other[near])
    return bits


def make_folds(
    lat: np.ndarray,
    lon: np.ndarray,
    *,
    num_folds: int,
    block_km: float,
    buffer_km: float,
    seed: int,
    reuse: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Block-CV folds: `(fold (N,) int64, buffer_bits (N,) int64, block_cv record)`.

    Bit f of buffer_bits[i] is set when observation i (not in fold f) lies within buffer_km of a fold-f block.
    `reuse` is a block_cv record from another file: its grid and block table are applied again (blocks it
    lacks are balanced into the folds after its own).
    """
    if reuse is not None:
        grid = {k: reuse[k] for k in GRID_KEYS}
        num_folds, buffer_km, seed = int(reuse["num_folds"]), float(reuse["buffer_km"]), int(reuse["seed"])
    else:
        if not 2 <= num_folds <= MAX_FOLDS:
            raise SplitError(f"--folds must be in 2..{MAX_FOLDS}, got {num_folds}")
        if block_km <= 0:
            raise SplitError(f"--block-km must be > 0, got {block_km}")
        grid = block_grid(lat, lon, block_km)
    row, col = block_of(lat, lon, grid)
    keys, inverse, counts = np.unique(
        np.stack([row, col], 1), axis=0, return_inverse=True, return_counts=True
    )
    inverse = inverse.ravel()
    if reuse is not None:
        block_fold = _reused_block_folds(reuse, keys, counts, num_folds)
    else:
        if len(keys) < num_folds:
            raise SplitError(
                f"only {len(keys)} block(s) of {block_km:g} km hold observations: "
                f"cannot make {num_folds} folds; use a smaller --block-km or fewer --folds"
            )
        if len(keys) > MAX_BLOCKS:
            raise SplitError(
                f"{len(keys)} blocks of {block_km:g} km hold observations (at most {MAX_BLOCKS}); "
                "use a larger --block-km"
            )
        block_fold = balance_blocks(counts, num_folds, seed)
    fold = block_fold[inverse]
    bits = _buffer_bits(lat, lon, row, col, fold, keys, block_fold, grid, buffer_km)
    record = {
        **grid,
        "num_folds": int(num_folds),
        "buffer_km": float(buffer_km),
        "seed": int(seed),
        "fold_numbering": "0..num_folds-1",
        "assignment": (
            "whole blocks to folds, balanced by observation count (greedy in seeded random order, then moves "
            "and swaps); max - min fold count <= the largest block's count"
        ),
        "blocks": [
            {"row": int(r), "col": int(c), "fold": int(f), "count": int(n)}
            for (r, c), f, n in zip(keys, block_fold, counts, strict=True)
        ],
    }
    return fold, bits, record


def check_block_cv(record, where) -> None:
    """Checks another file's block_cv record before it is applied again: one line naming file and field."""

    def fail(field: str, expected: str, value) -> SplitError:
        return SplitError(f"{where}: split_strategy.block_cv.{field} must be {expected}, got {value!r}")

    if not isinstance(record, dict):
        raise SplitError(f"{where}: split_strategy.block_cv must be an object")
    for key in (*GRID_KEYS, "buffer_km"):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise fail(key, "a finite number", value)
    for key in ("block_km", "dlat_deg", "dlon_deg"):
        if record[key] <= 0:
            raise fail(key, "> 0", record[key])
    num_folds = record.get("num_folds")
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or not 2 <= num_folds <= MAX_FOLDS:
        raise fail("num_folds", f"an integer in 2..{MAX_FOLDS}", num_folds)
    if isinstance(record.get("seed"), bool) or not isinstance(record.get("seed"), int) or record["seed"] < 0:
        raise fail("seed", "an integer >= 0", record.get("seed"))
    blocks = record.get("blocks")
    if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
        raise fail("blocks", f"a list of at most {MAX_BLOCKS} blocks", type(blocks).__name__)
    for n, block in enumerate(blocks):
        ok = isinstance(block, dict) and all(
            isinstance(block.get(k), int) and not isinstance(block.get(k), bool)
            for k in ("row", "col", "fold")
        )
        if not ok or not 0 <= block["fold"] < num_folds:
            raise fail(f"blocks[{n}]", f"{{row, col, fold in 0..{num_folds - 1}}} integers", block)


def fold_masks(
    test: np.ndarray, buffered: np.ndarray, holdout: np.ndarray, validation_buffer: np.ndarray
) -> dict:
    """The subsets when one fold is the test set, bool `(N,)` each.

    `test`: in the fold; `buffered`: within buffer_km of its blocks; `holdout`: the holdout split names;
    `validation_buffer`: excluded by a validation region's buffer. Validation = the holdout's validation
    rows outside the fold and its buffer; excluded = the fold's buffer and the validation buffers; train =
    the rest.
    """
    excluded = ~test & (buffered | validation_buffer)
    validation = ~test & ~excluded & (holdout == "validation")
    return {
        "test": test,
        "excluded": excluded,
        "validation": validation,
        "train": ~test & ~excluded & ~validation,
    }
