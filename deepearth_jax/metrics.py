"""Evaluation metrics on host numpy arrays of per-example eval-step outputs (see `deepearth_jax.tasks`).

Conventions: `top_predictions` (N, K) int, best first (K >= the k asked for; a (N,) array is top-1 only);
`labels` (N,) int, -1 for a species the model cannot name (absent from training): always a miss. Means over
no examples are NaN (not 0: "no data" must not read as "all wrong").
"""

from __future__ import annotations

import numpy as np


def _as_top(top_predictions: np.ndarray, k: int) -> np.ndarray:
    top = np.asarray(top_predictions)
    if top.ndim == 1:
        top = top[:, None]
    if top.ndim != 2:
        raise ValueError(f"top predictions must be (N,) or (N, K), got shape {top.shape}")
    if k < 1 or k > top.shape[1]:
        raise ValueError(f"top-{k} needs at least {k} ranked predictions per example, got {top.shape[1]}")
    return top[:, :k]


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def topk_correct(top_predictions: np.ndarray, labels: np.ndarray, k: int = 1) -> np.ndarray:
    """(N,) bool: the label is among the first k predictions (never for label -1)."""
    labels = np.asarray(labels)
    top = _as_top(top_predictions, k)
    if len(top) != len(labels):
        raise ValueError(f"{len(top)} predictions but {len(labels)} labels")
    return np.any(top == labels[:, None], axis=1) & (labels >= 0)


def topk_accuracy(top_predictions: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of examples whose label is among the first k predictions; NaN when there are none."""
    return _mean(topk_correct(top_predictions, labels, k))


def balanced_accuracy(
    top_predictions: np.ndarray, labels: np.ndarray, classes: np.ndarray | None = None
) -> float:
    """Mean per-class top-1 recall over the classes present.

    `classes` (N,) names each example's class for the averaging (default: `labels`); pass the store species
    index to count every species, including those absent from training (their recall is 0), as a class.
    """
    correct = topk_correct(top_predictions, labels, 1)
    classes = np.asarray(labels if classes is None else classes)
    if len(classes) != len(correct):
        raise ValueError(f"{len(correct)} predictions but {len(classes)} class entries")
    if not len(classes):
        return float("nan")
    present, inverse = np.unique(classes, return_inverse=True)
    hits = np.bincount(inverse, weights=correct.astype(np.float64), minlength=len(present))
    support = np.bincount(inverse, minlength=len(present))
    return float(np.mean(hits / support))


EXACT_RESAMPLING_MAX = 20_000  # up to this many examples the draws are of example indices, as always
FEW_VALUES = 64  # above it, a column of at most this many distinct values is resampled by their counts


def _resample_means(columns: list[np.ndarray], resamples: int, seed: int, chunk: int = 1 << 22) -> list:
    """Means of each column over the same `resamples` bootstrap draws of example indices (vectorised).

    O(resamples * n) for index draws; a single column of few distinct values (0/1 hits, their
    differences) with more than EXACT_RESAMPLING_MAX examples is resampled instead by drawing how many
    times each distinct value is picked (multinomial with the values' frequencies: the same distribution
    of the resampled mean as index draws, other random numbers), O(resamples * distinct values).
    """
    n = len(columns[0])
    rng = np.random.default_rng(seed)
    if len(columns) == 1 and n > EXACT_RESAMPLING_MAX:
        values, counts = np.unique(columns[0], return_counts=True)
        if len(values) <= FEW_VALUES:
            picks = rng.multinomial(n, counts / n, size=resamples)  # (resamples, distinct)
            return [picks @ values / n]
    means = [np.empty(resamples) for _ in columns]
    per_chunk = max(1, chunk // max(n, 1))
    for start in range(0, resamples, per_chunk):
        stop = min(resamples, start + per_chunk)
        index = rng.integers(0, n, size=(stop - start, n))
        for column, out in zip(columns, means, strict=True):
            out[start:stop] = column[index].mean(axis=1)
    return means


def _percentile_interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_ci(
    values: np.ndarray, *, level: float = 0.95, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-example `values` (e.g. top-1 hits as 0/1).

    Examples are resampled with replacement `resamples` times with a fixed `seed`, so the same outputs give
    the same interval. NaN bounds when there are no examples.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if len(values) == 0:
        return float("nan"), float("nan")
    (draws,) = _resample_means([values], resamples, seed)
    return _percentile_interval(draws, level)


def paired_bootstrap_ci(
    a: np.ndarray, b: np.ndarray, *, level: float = 0.95, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b) for two models scored on the same examples.

    Both are resampled with the same example indices, so what the examples share cancels (the paired test
    of a gain, e.g. fusion over a single modality). NaN bounds when there are no examples.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if len(a) != len(b):
        raise ValueError(f"paired examples differ in number: {len(a)} and {len(b)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if len(a) == 0:
        return float("nan"), float("nan")
    (draws,) = _resample_means([a - b], resamples, seed)
    return _percentile_interval(draws, level)
