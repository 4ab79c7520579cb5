"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepearth_jax import metrics

# Six examples, ranked predictions (top-5) per row; labels with one species absent from training (-1).
TOP = np.array(
    [
        [0, 1, 2, 3, 4],  # label 0: top-1 hit
        [2, 1, 0, 3, 4],  # label 1: top-2
        [3, 4, 0, 1, 2],  # label 2: top-5 only
        [1, 0, 2, 3, 4],  # label 1: top-1 hit
        [4, 3, 2, 1, 0],  # label 5: never (not among the predictions)
        [0, 1, 2, 3, 4],  # label -1: cannot be right
    ]
)
LABELS = np.array([0, 1, 2, 1, 5, -1])


def test_topk_accuracy_by_hand():
    assert metrics.topk_accuracy(TOP, LABELS, 1) == pytest.approx(2 / 6)
    assert metrics.topk_accuracy(TOP, LABELS, 2) == pytest.approx(3 / 6)
    assert metrics.topk_accuracy(TOP, LABELS, 5) == pytest.approx(4 / 6)
    np.testing.assert_array_equal(metrics.topk_correct(TOP, LABELS, 2), [1, 1, 0, 1, 0, 0])
    assert metrics.topk_accuracy(TOP[:, 0], LABELS, 1) == pytest.approx(2 / 6)  # (N,) = top-1 only
    assert math.isnan(metrics.topk_accuracy(TOP[:0], LABELS[:0], 1))
    with pytest.raises(ValueError, match="top-5 needs at least 5 ranked predictions per example, got 2"):
        metrics.topk_accuracy(TOP[:, :2], LABELS, 5)
    with pytest.raises(ValueError, match="6 predictions but 5 labels"):
        metrics.topk_accuracy(TOP, LABELS[:5], 1)


def test_balanced_accuracy_by_hand():
    # Per-class recall over labels present: 0 -> 1/1, 1 -> 1/2, 2 -> 0/1, 5 -> 0/1, -1 -> 0/1.
    assert metrics.balanced_accuracy(TOP, LABELS) == pytest.approx((1 + 0.5 + 0 + 0 + 0) / 5)
    # Grouped by store species instead: rows 4 and 5 are two different species, both with recall 0.
    species = np.array([10, 11, 12, 11, 13, 14])
    assert metrics.balanced_accuracy(TOP, LABELS, species) == pytest.approx((1 + 0.5 + 0 + 0 + 0) / 5)
    # Skewed support: 3 right of class 7, 0 of 1 of class 8 -> plain 0.75, balanced 0.5.
    top, labels = np.array([7, 7, 7, 7]), np.array([7, 7, 7, 8])
    assert metrics.topk_accuracy(top, labels) == 0.75
    assert metrics.balanced_accuracy(top, labels) == 0.5
