"""Frequency and kNN baselines against hand-computed rankings."""

from __future__ import annotations

import numpy as np
from conftest import test_seed

from deepearth_jax import baselines


def test_frequency_ranks_by_count_then_class():
    labels = np.array([2, 2, 1, 0, 0, 3])
    assert baselines.frequency_ranking(labels, 5).tolist() == [0, 2, 1, 3, 4]
    top = baselines.frequency_top(labels, 5, n=3, top=2)
    assert top.tolist() == [[0, 2]] * 3
    acc = baselines.accuracies(top, np.array([0, 2, -1]))
    assert acc == {"top1": 1 / 3, "top5": 2 / 3}


def test_knn_votes_among_nearest_km_with_frequency_tie_break():
    train_km = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0], [11.0, 10.0], [10.0, 11.0]])
    labels = np.array([0, 0, 1, 2, 2, 2])
    query = np.array([[0.1, 0.1], [10.2, 10.1], [5.0, 5.1]])
    top = baselines.knn_top(train_km, labels, query, num_classes=4, neighbors=3, top=3)
    # first: neighbours 0,1,2 -> votes class0=2, class1=1; class 2 (most frequent) next, by frequency
    assert top[0].tolist() == [0, 1, 2]
    # second: neighbours 3,4,5 -> class 2 x3; then classes 0, 1 by frequency (2, 1)
    assert top[1].tolist() == [2, 0, 1]
    # third (5, 5.1): d^2 = 51.01, 42.01, 41.81, 49.01, 60.01, 59.81 -> points 2, 1, 3: one vote each for
    # classes 1, 0, 2, ranked by training frequency (class 2: 3, class 0: 2, class 1: 1)
    assert top[2].tolist() == [2, 0, 1]


def test_km_coordinates_are_kilometre_equal():
    km = baselines.km_coordinates(np.array([0.0, 1.0]), np.array([0.0, 1.0]), lat0=0.0)
    assert np.allclose(km[1] - km[0], [111.195, 111.195])


def test_nearest_by_partition_equals_a_stable_argsort_ties_included():
    from deepearth_jax.baselines import _nearest

    rng = np.random.default_rng(test_seed())
    for trial in range(40):
        q, n = rng.integers(1, 30), rng.integers(1, 50)
        k = int(min(rng.integers(1, 25), n))
        # Odd trials: integer distances, so the k-th distance is often tied.
        d2 = rng.integers(0, 5, (q, n)).astype(float) if trial % 2 else rng.random((q, n))
        np.testing.assert_array_equal(_nearest(d2, k), np.argsort(d2, axis=1, kind="stable")[:, :k])
