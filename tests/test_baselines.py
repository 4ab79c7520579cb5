"""Frequency, kNN, inverse-distance kNN and kernel-density baselines against brute-force float64 sums."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import test_seed

from deepearth_jax import baselines
from deepearth_jax import neighbors as nb


def test_frequency_ranks_by_count_then_class():
    labels = np.array([2, 2, 1, 0, 0, 3])
    assert baselines.frequency_ranking(labels, 5).tolist() == [0, 2, 1, 3, 4]
    top = baselines.frequency_top(labels, 5, n=3, top=2)
    assert top.tolist() == [[0, 2]] * 3
    acc = baselines.accuracies(top, np.array([0, 2, -1]))
    assert acc == {"top1": 1 / 3, "top5": 2 / 3}


def test_knn_votes_among_nearest_with_frequency_tie_break():
    train = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0], [11.0, 10.0], [10.0, 11.0]])
    labels = np.array([0, 0, 1, 2, 2, 2])
    query = np.array([[0.1, 0.1], [10.2, 10.1], [5.0, 5.1]])
    top = baselines.knn_top(train, labels, query, num_classes=4, neighbors=3, top=3)
    # first: neighbours 0,1,2 -> votes class0=2, class1=1; class 2 (most frequent) next, by frequency
    assert top[0].tolist() == [0, 1, 2]
    # second: neighbours 3,4,5 -> class 2 x3; then classes 0, 1 by frequency (2, 1)
    assert top[1].tolist() == [2, 0, 1]
    # third (5, 5.1): d^2 = 51.01, 42.01, 41.81, 49.01, 60.01, 59.81 -> points 2, 1, 3: one vote each for
    # classes 1, 0, 2, ranked by training frequency (class 2: 3, class 0: 2, class 1: 1)
    assert top[2].tolist() == [2, 0, 1]


def test_unit_xyz_chords_give_great_circle_km():
    xyz = nb.unit_xyz([0.0, 0.0, 45.0], [0.0, 1.0, 10.0])
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=1), 1.0)
    km = nb.chord_km(np.linalg.norm(xyz[1] - xyz[0]))
    np.testing.assert_allclose(km, nb.EARTH_RADIUS_KM * np.radians(1.0), rtol=1e-12)


def _fixture(seed: int, n: int = 300, q: int = 80, classes: int = 12, duplicates: bool = True):
    """Places in a 30 km patch (a few repeated exactly, as revisited sites are), classes clustered."""
    rng = np.random.default_rng(seed)
    lat = 28.0 + rng.random(n) * 0.3
    lon = -81.0 + rng.random(n) * 0.3
    if duplicates:
        lat[n // 2 : n // 2 + 40], lon[n // 2 : n // 2 + 40] = lat[0], lon[0]  # one spot, 41 observations
    labels = np.minimum((lat - 28.0) / 0.3 * classes, classes - 1).astype(np.int64)
    labels = np.where(rng.random(n) < 0.3, rng.integers(0, classes, n), labels)
    q_lat = 28.0 + rng.random(q) * 0.3
    q_lon = -81.0 + rng.random(q) * 0.3
    q_lat[:5], q_lon[:5] = lat[0], lon[0]  # queries on the repeated spot: ties at the k-th distance
    q_labels = rng.integers(-1, classes, q)
    return nb.unit_xyz(lat, lon), labels, nb.unit_xyz(q_lat, q_lon), q_labels, classes


def _reference(train, labels, query, classes, weight_of_km, k):
    """Brute force in float64: every distance, a stable argsort, per-class sums, ranking by a full sort."""
    chord = np.sqrt(((query[:, None, :] - train[None, :, :]) ** 2).sum(-1))
    nearest = np.argsort(chord, axis=1, kind="stable")[:, :k]
    km = 2 * nb.EARTH_RADIUS_KM * np.arcsin(np.take_along_axis(chord, nearest, 1) / 2)
    sums = np.zeros((len(query), classes))
    for r in range(len(query)):
        for j in range(nearest.shape[1]):
            sums[r, labels[nearest[r, j]]] += weight_of_km(km[r, j])
    counts = np.bincount(labels, minlength=classes)
    freq_place = np.empty(classes, np.int64)
    freq_place[np.lexsort((np.arange(classes), -counts))] = np.arange(classes)
    ranking = np.array([sorted(range(classes), key=lambda c: (-s[c], freq_place[c])) for s in sums])
    total = sums.sum(1, keepdims=True)
    probs = np.where(total > 0, sums / np.where(total > 0, total, 1), counts / counts.sum())
    return ranking, probs


CASES = {
    "votes": (lambda k, h: nb.votes(k), lambda k, h: lambda d: 1.0, None),
    "idw": (lambda k, h: nb.inverse_distance(k), lambda k, h: lambda d: 1.0 / (d + nb.IDW_EPS_KM), None),
    "kde": (
        lambda k, h: nb.gaussian(h),
        lambda k, h: lambda d: np.exp(-0.5 * (d / h) ** 2) if d <= nb.KDE_CUTOFF * h else 0.0,
        2.0,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("k", [1, 7, 60])
def test_scores_and_ranks_equal_a_brute_force_reference(case, k):
    train, labels, query, q_labels, classes = _fixture(test_seed() + k)
    weighting, weight_of_km, h = CASES[case]
    ranking, probs = _reference(train, labels, query, classes, weight_of_km(k, h), k)
    index = nb.NeighborIndex(train, labels, classes)
    (_, near), *rest = list(index.chunks(query, k))
    assert not rest
    sums = near.sums(weighting(k, h))
    np.testing.assert_allclose(nb.dense_scores(index, near.classes, sums), probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(nb.ranked_top(index, near.classes, sums, classes), ranking)
    expected_rank = np.array(
        [np.flatnonzero(ranking[r] == c)[0] if c >= 0 else nb.MISSED for r, c in enumerate(q_labels)]
    )
    np.testing.assert_array_equal(nb.label_ranks(index, near.classes, sums, q_labels), expected_rank)


def test_public_score_functions_match_the_reference_in_chunks():
    train, labels, query, _, classes = _fixture(test_seed() + 100)
    _, idw = _reference(train, labels, query, classes, lambda d: 1.0 / (d + nb.IDW_EPS_KM), 10)
    _, kde = _reference(
        train, labels, query, classes, lambda d: np.exp(-0.5 * (d / 1.5) ** 2) if d <= 4.5 else 0.0, 256
    )
    _, votes = _reference(train, labels, query, classes, lambda d: 1.0, 5)
    got = nb.knn_weighted_scores(train, labels, query, classes, k=10)
    assert got.shape == (len(query), classes) and got.dtype == np.float32
    np.testing.assert_allclose(got, idw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(nb.kde_scores(train, labels, query, classes, bandwidth_km=1.5), kde, atol=1e-6)
    np.testing.assert_allclose(nb.knn_scores(train, labels, query, classes, k=5), votes, atol=1e-7)
    # In chunks of 7 rows: the same numbers.
    index = nb.NeighborIndex(train, labels, classes)
    chunked = np.concatenate(
        [
            nb.dense_scores(index, c.classes, c.sums(nb.inverse_distance(10)))
            for _, c in index.chunks(query, 10, 7)
        ]
    )
    np.testing.assert_array_equal(chunked, got)


def test_rows_without_coordinates_get_the_frequencies():
    train, labels, query, _, classes = _fixture(test_seed())
    train = train.copy()
    train[3] = np.nan  # left out of the tree, still counted in the frequencies
    query = query[:4].copy()
    query[1] = np.nan
    got = nb.knn_weighted_scores(train, labels, query, classes, k=3)
    np.testing.assert_allclose(got[1], np.bincount(labels, minlength=classes) / len(labels), rtol=1e-6)
    index = nb.NeighborIndex(train, labels, classes)
    _, near = next(index.chunks(query, 3))
    assert 3 not in near.classes[1] and (near.classes[1] == -1).all()


def test_choice_on_validation_is_the_grid_value_of_best_top5():
    train, labels, query, q_labels, classes = _fixture(test_seed() + 5, n=400, q=150)
    q_labels = np.where(q_labels < 0, 0, q_labels)
    index = nb.NeighborIndex(train, labels, classes)
    chosen, top5, ranks = baselines.choose(index, query, q_labels)
    for k in baselines.KNN_GRID:
        ranking, _ = _reference(train, labels, query, classes, lambda d: 1.0 / (d + nb.IDW_EPS_KM), k)
        expected = np.mean([q_labels[r] in ranking[r, :5] for r in range(len(query))])
        assert top5[("knn_weighted", k)] == pytest.approx(expected)
    best = max(top5[("knn_weighted", k)] for k in baselines.KNN_GRID)
    assert chosen["neighbors"] == next(k for k in baselines.KNN_GRID if top5[("knn_weighted", k)] == best)
    best = max(top5[("kde", h)] for h in baselines.KDE_GRID_KM)
    assert chosen["bandwidth_km"] == next(h for h in baselines.KDE_GRID_KM if top5[("kde", h)] == best)
    assert ranks[("kde", chosen["bandwidth_km"])].shape == (len(query),)
    assert baselines.choose(index, query[:0], q_labels[:0])[0] == {
        "neighbors": baselines.DEFAULT_K,
        "bandwidth_km": baselines.DEFAULT_BANDWIDTH_KM,
    }
