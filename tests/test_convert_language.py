"""The vectorised language-vector pass of convert gives what a row-by-row pass gives (issue 11 §2)."""

import hashlib

import numpy as np
import pyarrow as pa
from conftest import test_seed

from deepearth_jax.data.convert.observations import _LanguageVectors


def _row_by_row(batches):
    """The reference: each row checked and hashed alone, candidates numbered in order of first row."""
    index, counts, out = {}, [], []
    for taxa, rows in batches:
        ids, problems = [], []
        for taxon, row in zip(taxa, rows, strict=True):
            if row is None or len(row) == 0:
                ids.append(-1), problems.append(1)
                continue
            vector = np.asarray(row, np.float32)
            if not np.isfinite(vector).all():
                ids.append(-1), problems.append(2)
                continue
            key = (taxon, hashlib.sha1(vector.tobytes()).digest())
            if key not in index:
                index[key] = len(counts)
                counts.append(0)
            counts[index[key]] += 1
            ids.append(index[key]), problems.append(0)
        out.append((ids, problems))
    return out, counts


def test_vectorised_grouping_matches_row_by_row():
    rng = np.random.default_rng(test_seed())
    base = rng.standard_normal((6, 16)).astype(np.float32)
    base[:, :4] = 0.0
    swapped_zeros = base[0].copy()
    swapped_zeros[0], swapped_zeros[1] = -0.0, 0.0  # float-equal to base[0], other bits, ...
    other = base[0].copy()
    other[1] = -0.0  # ... and a vector with the same bit sum as swapped_zeros' partner
    batches = []
    for _ in range(3):
        taxa, rows = [], []
        for _ in range(200):
            kind = rng.integers(0, 10)
            taxon = f"taxon {rng.integers(0, 3)}"
            if kind == 0:
                row = None
            elif kind == 1:
                row = []
            elif kind == 2:
                row = list(base[rng.integers(0, 6)])
                row[3] = float("nan")
            elif kind == 3:
                row = list(swapped_zeros)
            elif kind == 4:
                row = list(other)
            elif kind == 5:
                row = list(base[rng.integers(0, 6)][:8])  # another length
            else:
                row = list(base[rng.integers(0, 6)])
            taxa.append(taxon)
            rows.append(row)
        batches.append((taxa, rows))
    expected, counts = _row_by_row(batches)
    vectors = _LanguageVectors()
    for (taxa, rows), (ids, problems) in zip(batches, expected, strict=True):
        got_ids, got_problems = vectors.add_batch(taxa, pa.array(rows, pa.list_(pa.float32())))
        assert got_problems.tolist() == problems
        assert got_ids.tolist() == ids
    assert vectors.counts == counts
    assert len(vectors.vectors) == len(counts) and all(v.dtype == np.float32 for v in vectors.vectors)


def test_fast_float16_cast_equals_numpy():
    """convert's vectorised float32 -> float16 cast gives numpy's bits for every value below 65520 in
    magnitude: random bit patterns, every exponent with the mantissas around each rounding tie, signs."""
    from deepearth_jax.data.convert.vision import _float32_to_float16

    rng = np.random.default_rng(test_seed())
    random_bits = rng.integers(0, 1 << 32, 2_000_000, dtype=np.uint64).astype(np.uint32)
    mantissas = np.concatenate(
        [np.arange(1 << 12, dtype=np.uint32)]
        + [(np.arange(1 << 10, dtype=np.uint32) << 13) | t for t in (0x0FFF, 0x1000, 0x1001, 0x1FFF)]
        + [np.uint32([0x7FFFFF, 0x7FE000, 0x7FF000])]
    )
    sweep = ((np.arange(256, dtype=np.uint32) << 23)[:, None] | mantissas[None, :]).ravel()
    values = np.concatenate([random_bits, sweep, sweep | 0x80000000]).view(np.float32)
    values = values[np.isfinite(values) & (np.abs(values) < 65520)]
    for start in range(0, len(values), 1 << 16):
        part = values[start : start + (1 << 16)]
        out = np.empty(len(part), np.float16)
        peak = _float32_to_float16(part, out)
        np.testing.assert_array_equal(out.view(np.uint16), part.astype(np.float16).view(np.uint16))
        assert peak == float(np.abs(part).max())
    assert np.isnan(_float32_to_float16(np.float32([1.0, np.nan]), np.empty(2, np.float16)))
    assert _float32_to_float16(np.float32([-np.inf, 2.0]), np.empty(2, np.float16)) == np.inf
