"""Evaluation metrics on host numpy arrays of per-example eval-step outputs (see `steps.make_eval_step`).

Conventions: `top_predictions` (N, K) int, best first (K >= the k asked for; a (N,) array is top-1 only);
`labels` (N,) int, -1 for a species the model cannot name (absent from training): always a miss. Means over
no examples are NaN (not 0: "no data" must not read as "all wrong").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

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


def retrieval_topk(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries whose true item ranks in the first k (rank 0 = first); NaN for no queries."""
    ranks = np.asarray(ranks)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return _mean(ranks < k)


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, row = true class, column = top-1 prediction; label -1 rows are left out."""
    predictions = _as_top(predictions, 1)[:, 0]
    labels = np.asarray(labels)
    keep = labels >= 0
    flat = labels[keep].astype(np.int64) * num_classes + predictions[keep].astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(
    top_predictions: np.ndarray,
    labels: np.ndarray,
    *,
    loss: np.ndarray | None = None,
    classes: np.ndarray | None = None,
) -> dict[str, float]:
    """`top1`, `top5` (when 5 predictions are given), `balanced_accuracy`, `loss` (mean over labelled
    examples, when given) and `count` for one set of examples."""
    labels = np.asarray(labels)
    out = {
        "count": float(len(labels)),
        "top1": topk_accuracy(top_predictions, labels, 1),
        "balanced_accuracy": balanced_accuracy(top_predictions, labels, classes),
    }
    if np.ndim(top_predictions) == 2 and np.shape(top_predictions)[1] >= 5:
        out["top5"] = topk_accuracy(top_predictions, labels, 5)
    if loss is not None:
        out["loss"] = _mean(np.asarray(loss)[labels >= 0])
    return out


def retrieval_metrics(ranks: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """`retrieval_top{k}` for each k, and `count`."""
    out = {"count": float(len(ranks))}
    out.update({f"retrieval_top{k}": retrieval_topk(ranks, k) for k in ks})
    return out


def breakdown(
    compute: Callable[..., dict[str, float]], per_example: Mapping[str, np.ndarray], groups: np.ndarray
) -> dict[str, dict[str, float]]:
    """`{group: compute(**rows of that group)}` for each distinct value of `groups` (N,) (e.g. split reason).

    Example: `breakdown(lambda top, labels: classification_metrics(top, labels), {"top": t, "labels": y},
    reasons)` -> `{"temporal": {...}, "spatial": {...}}`.
    """
    groups = np.asarray(groups)
    for name, values in per_example.items():
        if len(values) != len(groups):
            raise ValueError(f"{name} has {len(values)} rows but groups has {len(groups)}")
    return {
        str(g): compute(**{name: np.asarray(v)[groups == g] for name, v in per_example.items()})
        for g in np.unique(groups)
    }
