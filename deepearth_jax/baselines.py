"""Baselines beside every classifier on the same rows: class frequency and three lookups of place.

A model of place and date that does not beat these has learned nothing a lookup table does not know.
- baseline_frequency: every row gets the training classes ranked by count (ties: lower class first);
- baseline_knn: the NEIGHBORS training observations nearest on the sphere vote;
- baseline_knn_weighted: the k nearest vote with weight 1 / (km + 10 m), k chosen on the validation rows;
- baseline_kde: a Gaussian kernel density per class in km, its bandwidth chosen on the validation rows.
Classes are ranked by score, equal scores by training frequency (`neighbors.py` states the rules). k and
the bandwidth are the grid values of best validation top-5 (the first, i.e. the smallest, of equals);
they are fitted on the training rows and chosen on the validation rows whichever subset is scored.

Neighbours come from a cKDTree (`neighbors.NeighborIndex`), so fitting and scoring N rows costs
O(N log N) time and O(chunk) memory; hits are computed from each row's true class's rank, never from a
(rows, classes) matrix. `neighbors.knn_weighted_scores` / `kde_scores` give the per-row probabilities.
"""

from __future__ import annotations

import logging

import numpy as np

from deepearth_jax import metrics as metrics_lib
from deepearth_jax import neighbors as nb
from deepearth_jax.neighbors import frequency_ranking, unit_xyz  # noqa: F401  (the public names)

log = logging.getLogger(__name__)

TOP = 5
NEIGHBORS = 20  # baseline_knn's fixed k
KNN_GRID = (1, 2, 3, 5, 10, 20, 50, 100)  # baseline_knn_weighted's k, chosen on validation
KDE_GRID_KM = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)  # baseline_kde's bandwidth
DEFAULT_K, DEFAULT_BANDWIDTH_KM = 10, 1.0  # used when there are no validation rows to choose on
NAMES = ("baseline_frequency", "baseline_knn", "baseline_knn_weighted", "baseline_kde")


def frequency_top(train_labels: np.ndarray, num_classes: int, n: int, top: int = TOP) -> np.ndarray:
    """(n, min(top, C)) int32: the same frequency ranking for every row."""
    ranking = frequency_ranking(train_labels, num_classes)[: min(top, num_classes)]
    return np.broadcast_to(ranking.astype(np.int32), (n, len(ranking))).copy()


def knn_top(
    train_points: np.ndarray,
    train_labels: np.ndarray,
    query_points: np.ndarray,
    num_classes: int,
    neighbors: int = NEIGHBORS,
    top: int = TOP,
) -> np.ndarray:
    """(Q, min(top, C)) int32: classes by votes among the `neighbors` nearest training points.

    Points (N, D) in any space whose straight-line distance orders neighbours (`unit_xyz` for places).
    Ties in votes are broken by training frequency (then class order); nearest ties by training order.
    """
    index = nb.NeighborIndex(train_points, train_labels, num_classes)
    query = np.asarray(query_points, np.float64)
    out = np.empty((len(query), min(top, num_classes)), np.int32)
    for start, near in index.chunks(query, int(neighbors)):
        out[start : start + near.q] = nb.ranked_top(index, near.classes, near.sums(nb.votes(neighbors)), top)
    return out


def accuracies(top: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top1 and top5 (top-min(5, K)) of ranked predictions against labels (-1 always a miss)."""
    return {
        "top1": metrics_lib.topk_accuracy(top, labels, k=1),
        "top5": metrics_lib.topk_accuracy(top, labels, k=min(TOP, top.shape[1])),
    }


def lookup_ranks(
    index: nb.NeighborIndex, query: np.ndarray, labels: np.ndarray, weightings: dict
) -> dict[str, np.ndarray]:
    """{name: (Q,) int64 rank of each row's label} under each weighting, from one neighbour query of the
    most neighbours any weighting needs (`weightings`: {name: (weighting, neighbours it needs)})."""
    k = max(need for _, need in weightings.values())
    ranks = {name: np.empty(len(query), np.int64) for name in weightings}
    for start, near in index.chunks(query, k):
        rank_of = nb.LabelRanks(index, near.classes, labels[start : start + near.q])
        for name, (weighting, _) in weightings.items():
            ranks[name][start : start + near.q] = rank_of(near.sums(weighting))
    return ranks


def _candidates() -> dict:
    """Every weighting a choice is made among: {(kind, value): (weighting, neighbours)}."""
    out = {("knn_weighted", k): (nb.inverse_distance(k), k) for k in KNN_GRID}
    out.update({("kde", h): (nb.gaussian(h), nb.KDE_NEIGHBORS) for h in KDE_GRID_KM})
    return out


def choose(index: nb.NeighborIndex, query: np.ndarray, labels: np.ndarray) -> tuple[dict, dict, dict]:
    """k and bandwidth of best top-5 on `query` rows (the validation rows) with their `labels`.

    Returns `(chosen {"neighbors": k, "bandwidth_km": h}, {(kind, value): top-5} and {(kind, value): (Q,)
    ranks} of every grid value)`.
    """
    if len(query) == 0:
        log.warning(
            "no validation rows: baseline_knn_weighted uses k=%d and baseline_kde %g km unchosen",
            DEFAULT_K,
            DEFAULT_BANDWIDTH_KM,
        )
        return {"neighbors": DEFAULT_K, "bandwidth_km": DEFAULT_BANDWIDTH_KM}, {}, {}
    ranks = lookup_ranks(index, query, labels, _candidates())
    top5 = {key: float(np.mean(rank < TOP)) for key, rank in ranks.items()}

    def best(kind: str, grid) -> float:
        scores = [top5[(kind, v)] for v in grid]
        return grid[int(np.argmax(scores))]  # the first of equals: the smallest k or bandwidth

    chosen = {
        "neighbors": int(best("knn_weighted", KNN_GRID)),
        "bandwidth_km": float(best("kde", KDE_GRID_KM)),
    }
    return chosen, top5, ranks


_CHOICES: dict[int, tuple] = {}  # id(data) -> (data, what `choose` returned on its validation rows)


class Baselines:
    """Every baseline's per-row rank of the true class for a set of store rows, fitted on the training rows
    of `data` (k and bandwidth chosen on its validation rows)."""

    def __init__(self, data, rows: np.ndarray):
        store = data.store
        num_classes = len(data.class_species)
        species = store.column("species_index")
        lat, lon = store.column("latitude"), store.column("longitude")

        def labels_xyz(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return np.asarray(data.label_map[species[r]], np.int64), unit_xyz(lat[r], lon[r])

        train_labels, train_xyz = labels_xyz(data.train_rows)
        index = nb.NeighborIndex(train_xyz, train_labels, num_classes)
        validation = np.sort(np.asarray(getattr(data, "validation_rows", np.zeros(0)), np.int64))
        cached = _CHOICES.get(id(data))
        if cached is not None and cached[0] is data:  # chosen once a run: the test rows reuse validation's
            self.chosen, self.validation_top5, grid_ranks = cached[1]
        else:
            self.chosen, self.validation_top5, grid_ranks = choose(index, *labels_xyz(validation)[::-1])
            _CHOICES.clear()  # only the latest run's data is kept
            _CHOICES[id(data)] = (data, (self.chosen, self.validation_top5, grid_ranks))
        log.info(
            "baselines: k=%d (knn_weighted), bandwidth %g km (kde), by validation top-5 over %d rows",
            self.chosen["neighbors"],
            self.chosen["bandwidth_km"],
            len(validation),
        )
        self.rows = np.sort(np.asarray(rows, np.int64))
        self.labels, query = labels_xyz(self.rows)
        k, h = self.chosen["neighbors"], self.chosen["bandwidth_km"]
        lookups = {
            "baseline_knn": (nb.votes(NEIGHBORS), NEIGHBORS),
            "baseline_knn_weighted": (nb.inverse_distance(k), k),
            "baseline_kde": (nb.gaussian(h), nb.KDE_NEIGHBORS),
        }
        reused = {}
        if grid_ranks and np.array_equal(self.rows, validation):  # scoring the validation rows: ranks known
            reused = {
                "baseline_knn_weighted": grid_ranks[("knn_weighted", k)],
                "baseline_kde": grid_ranks[("kde", h)],
            }
            lookups = {name: v for name, v in lookups.items() if name not in reused}
        self.ranks = {
            "baseline_frequency": np.where(
                self.labels >= 0, index.place[np.maximum(self.labels, 0)], nb.MISSED
            ),
            **lookup_ranks(index, query, self.labels, lookups),
            **reused,
        }
        self.top5_k = min(TOP, num_classes)

    def hits(self, rows: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """{baseline: {top1, top5}} per-example 0/1 hits on `rows` (a subset of the fitted rows) with their
        `labels`; their means are the accuracies, their bootstrap the intervals."""
        index = np.searchsorted(self.rows, np.asarray(rows, np.int64))
        if not np.array_equal(self.labels[index], np.asarray(labels, np.int64)):
            raise AssertionError("baselines: the evaluated rows' labels differ from the store's label map")
        return {
            name: {
                "top1": rank[index] < 1,
                "top5": rank[index] < self.top5_k,
            }
            for name, rank in self.ranks.items()
        }

    def choices(self) -> dict[str, float]:
        """{"baseline_knn_weighted/neighbors": k, "baseline_kde/bandwidth_km": h}: what validation chose."""
        return {
            "baseline_knn_weighted/neighbors": float(self.chosen["neighbors"]),
            "baseline_kde/bandwidth_km": float(self.chosen["bandwidth_km"]),
        }
