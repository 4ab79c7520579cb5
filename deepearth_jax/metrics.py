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
