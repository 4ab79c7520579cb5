"""Class scores from the training observations near each query place: votes, inverse distance, kernel density.

Every neighbour query goes through one `scipy.spatial.cKDTree` over the training points on the unit sphere
(`unit_xyz`): the straight-line (chord) distance there is monotone in the great-circle distance, so the
nearest by chord are the nearest on the Earth, and kilometres are `chord_km(chord)` (sphere of radius
`EARTH_RADIUS_KM`). A query costs O(k log N), so scoring N rows costs O(N k log N), in chunks of rows so that
memory stays O(chunk * k) whatever N.

Neighbour order: by distance, equal distances by training order (what a stable argsort over all training
points gives): when the k-th distance is tied the tied points are fetched with a ball query and the first
in training order kept.

Scores per class (sums over the k nearest training observations of that class):
- votes: 1 each;
- inverse distance: 1 / (d_km + eps_km) each (eps_km: a GPS fix, so a revisit of the same spot counts
  1 / eps, not infinity);
- kernel density: a Gaussian kernel exp(-d^2 / (2 h^2)) of bandwidth h km, over training points within
  KDE_CUTOFF bandwidths among the `max_neighbors` nearest (the sum of a class's kernels is p(place, class)
  up to a constant, so normalised over classes it is p(class | place)).
Probabilities are the sums normalised over classes; a row with no weight at all (no coordinates, or no
training point within the kernel's reach) gets the training class frequencies.

Rankings: by score, equal scores by training frequency (then class order), as `frequency_ranking`.
`label_ranks` gives each row's true class's place in that ranking (0 = first) without ever building the
(Q, C) matrix, which is what the evaluator needs for top-k hits at any number of classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from scipy.spatial import cKDTree

EARTH_RADIUS_KM = 6371.0  # mean Earth radius (the sphere of `chord_km`)
IDW_EPS_KM = 0.01  # 10 m: added to inverse-distance weights' distances
KDE_CUTOFF = 3.0  # kernels beyond 3 bandwidths (weight < 0.011) are dropped
KDE_NEIGHBORS = 256  # the kernel density sums over at most this many nearest training points
CHUNK = 8192  # query rows per chunk: a chunk holds (CHUNK, k) distances and labels
MISSED = np.iinfo(np.int64).max  # the rank of a label that is never hit (-1: a class unseen in training)

Weighting = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (distance km (q, k), order (q, k)) -> weights


def unit_xyz(lat, lon) -> np.ndarray:
    """`(N, 3)` float64 points on the unit sphere of latitudes and longitudes in degrees (NaN stays NaN)."""
    lat = np.radians(np.asarray(lat, np.float64).ravel())
    lon = np.radians(np.asarray(lon, np.float64).ravel())
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def chord_km(chord: np.ndarray) -> np.ndarray:
    """Great-circle km on the sphere of EARTH_RADIUS_KM between unit-sphere points `chord` apart."""
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.clip(np.asarray(chord, np.float64) / 2.0, 0.0, 1.0))


def frequency_ranking(train_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) classes by training count, most frequent first; equal counts in class order."""
    counts = np.bincount(np.asarray(train_labels, np.int64), minlength=num_classes)
    return np.lexsort((np.arange(num_classes), -counts))


class NeighborIndex:
    """A cKDTree over the training points with known coordinates, their labels and the frequency order."""

    def __init__(self, train_points: np.ndarray, train_labels: np.ndarray, num_classes: int):
        """`train_points` (N, D) (unit-sphere xyz for kilometres), `train_labels` (N,) in 0..C-1; rows
        with a non-finite coordinate are left out (their labels still count in the frequencies)."""
        points = np.asarray(train_points, np.float64)
        labels = np.asarray(train_labels, np.int64)
        known = np.all(np.isfinite(points), axis=1)
        self.points, self.labels, self.num_classes = points[known], labels[known], int(num_classes)
        self.tree = cKDTree(self.points) if len(self.points) else None
        counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
        self.prior = counts / max(1.0, counts.sum())  # the scores of a row without neighbours
        self.ranking = frequency_ranking(labels, num_classes)
        self.place = np.empty(num_classes, np.int64)  # each class's position in the frequency ranking
        self.place[self.ranking] = np.arange(num_classes)

    def query(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest training points of each query row: `(chord (q, k) float64, index (q, k) int64)`,
        by distance then training order; index -1 and chord inf where there are fewer (or no coordinates)."""
        query = np.asarray(query, np.float64)
        chord = np.full((len(query), k), np.inf)
        index = np.full((len(query), k), -1, np.int64)
        n = 0 if self.tree is None else len(self.points)
        valid = np.flatnonzero(np.all(np.isfinite(query), axis=1))
        if n == 0 or k == 0 or len(valid) == 0:
            return chord, index
        fetch = min(k + 1, n)  # one more: a tie at the k-th distance shows as an equal (k+1)-th
        d, i = self.tree.query(query[valid], k=fetch, workers=-1)
        d, i = d.reshape(len(valid), fetch), i.reshape(len(valid), fetch).astype(np.int64)
        tied = np.flatnonzero(np.any(d[:, 1:] == d[:, :-1], axis=1))  # the tree orders ties arbitrarily
        if len(tied):
            order = np.lexsort((i[tied], d[tied]), axis=1)  # equal distances in training order
            d[tied], i[tied] = np.take_along_axis(d[tied], order, 1), np.take_along_axis(i[tied], order, 1)
        keep = min(k, n)
        chord[valid, :keep], index[valid, :keep] = d[:, :keep], i[:, :keep]
        if fetch > k:
            for row in np.flatnonzero(d[:, k] <= d[:, k - 1]):
                chord[valid[row]], index[valid[row]] = self._tied(query[valid[row]], d[row, k - 1], k)
        return chord, index

    def _tied(self, point: np.ndarray, radius: float, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest of one query whose k-th distance is tied: every point within it, training order."""
        ball = np.asarray(self.tree.query_ball_point(point, radius * (1 + 1e-9) + 1e-300), np.int64)
        d = np.sqrt(np.sum((self.points[ball] - point) ** 2, axis=1))
        order = np.lexsort((ball, d))[:k]
        return d[order], ball[order]

    def chunks(self, query: np.ndarray, k: int, chunk: int = CHUNK) -> Iterator[tuple[int, Neighbors]]:
        """`(start, Neighbors)` for each chunk of query rows."""
        for start in range(0, len(query), chunk):
            chord, index = self.query(query[start : start + chunk], k)
            yield start, Neighbors(chord_km(chord), np.where(index >= 0, self.labels[index], -1))


class Neighbors:
    """The k nearest training points of q rows, regrouped by class for summing weights per class."""

    def __init__(self, km: np.ndarray, labels: np.ndarray):
        """`km` (q, k) distances by rank (inf where none), `labels` (q, k) their classes (-1 where none)."""
        q, k = labels.shape
        self.q, self.k = q, k
        by_class = np.argsort(labels, axis=1, kind="stable")  # a class's points adjacent, nearest first
        self.km = np.take_along_axis(km, by_class, 1)
        self.rank = by_class  # each point's place in distance order (prefixes: the j nearest)
        sorted_labels = np.take_along_axis(labels, by_class, 1)
        first = np.ones((q, k), bool)
        first[:, 1:] = sorted_labels[:, 1:] != sorted_labels[:, :-1]
        self.segment = (np.cumsum(first, axis=1) - 1 + k * np.arange(q)[:, None]).ravel()
        self.classes = np.full((q, k), -1, np.int64)  # the distinct classes of each row, -1 padded
        self.classes.flat[self.segment] = sorted_labels.ravel()
        self.has_point = sorted_labels >= 0

    def sums(self, weighting: Weighting) -> np.ndarray:
        """(q, k) float64 summed weights of `classes` (0 where padded)."""
        w = np.where(self.has_point, weighting(self.km, self.rank), 0.0)
        return np.bincount(self.segment, weights=w.ravel(), minlength=self.q * self.k).reshape(self.q, self.k)


def votes(k: int) -> Weighting:
    """One vote for each of the k nearest."""
    return lambda km, rank: (rank < k).astype(np.float64)


def inverse_distance(k: int, eps_km: float = IDW_EPS_KM) -> Weighting:
    """1 / (km + eps_km) for each of the k nearest."""
    return lambda km, rank: np.where(rank < k, 1.0 / (km + eps_km), 0.0)


def gaussian(bandwidth_km: float) -> Weighting:
    """exp(-km^2 / (2 h^2)) within KDE_CUTOFF bandwidths h, for whatever neighbours were fetched."""
    h = float(bandwidth_km)
    return lambda km, rank: np.where(km <= KDE_CUTOFF * h, np.exp(-0.5 * (km / h) ** 2), 0.0)


class LabelRanks:
    """Ranks of given labels among one chunk's classes under many weightings: the per-chunk work (which
    column holds the label, which classes precede it in frequency) done once."""

    def __init__(self, index: NeighborIndex, classes: np.ndarray, labels: np.ndarray):
        labels = np.asarray(labels, np.int64)
        self.known = classes >= 0
        is_label = self.known & (classes == labels[:, None])  # at most one column a row (classes distinct)
        self.has_label = is_label.any(axis=1)
        self.column = np.argmax(is_label, axis=1)
        self.place_l = index.place[np.maximum(labels, 0)]
        self.before = self.known & (index.place[np.maximum(classes, 0)] < self.place_l[:, None])
        self.labels = labels

    def __call__(self, sums: np.ndarray) -> np.ndarray:
        """(q,) int64 rank of each label (0 = top-1; MISSED for -1) given the chunk's summed weights."""
        present = self.known & (sums > 0)
        mine = np.where(self.has_label, sums[np.arange(len(sums)), self.column], 0.0)[:, None]
        ahead = present & ((sums > mine) | ((sums == mine) & self.before))
        # A class scored 0 follows every scored class, then the unscored ones in frequency order.
        unscored = present.sum(axis=1) + self.place_l - (present & self.before).sum(axis=1)
        rank = np.where(mine[:, 0] > 0, ahead.sum(axis=1), unscored)
        return np.where(self.labels >= 0, rank, MISSED)


def label_ranks(index: NeighborIndex, classes, sums, labels: np.ndarray) -> np.ndarray:
    """(q,) int64 place of each `labels` class in its row's ranking (scores, then frequency): 0 = top-1;
    MISSED for label -1. `classes`, `sums` (q, k): a row's distinct classes and their summed weights."""
    return LabelRanks(index, classes, labels)(sums)


def dense_scores(index: NeighborIndex, classes, sums) -> np.ndarray:
    """(q, C) float32 probabilities: summed weights normalised, the class frequencies where all are 0."""
    q = len(classes)
    out = np.zeros((q, index.num_classes))
    present = (classes >= 0) & (sums > 0)
    rows = np.broadcast_to(np.arange(q)[:, None], classes.shape)
    np.add.at(out, (rows[present], classes[present]), sums[present])
    total = out.sum(axis=1, keepdims=True)
    out = np.where(total > 0, out / np.where(total > 0, total, 1.0), index.prior[None, :])
    return out.astype(np.float32)


def _scores(train_points, train_labels, query, num_classes, k, weighting) -> np.ndarray:
    index = NeighborIndex(train_points, train_labels, num_classes)
    out = np.empty((len(query), num_classes), np.float32)
    for start, nb in index.chunks(np.asarray(query, np.float64), k):
        out[start : start + nb.q] = dense_scores(index, nb.classes, nb.sums(weighting))
    return out


def knn_scores(train_xyz, train_labels, query_xyz, num_classes: int, k: int) -> np.ndarray:
    """(Q, C) float32 p(class | place) by votes of the k nearest training observations (unit-sphere xyz)."""
    return _scores(train_xyz, train_labels, query_xyz, num_classes, k, votes(k))


def knn_weighted_scores(
    train_xyz, train_labels, query_xyz, num_classes: int, k: int, eps_km: float = IDW_EPS_KM
) -> np.ndarray:
    """(Q, C) float32 p(class | place) by 1 / (km + eps_km) weights of the k nearest training observations."""
    return _scores(train_xyz, train_labels, query_xyz, num_classes, k, inverse_distance(k, eps_km))


def kde_scores(
    train_xyz,
    train_labels,
    query_xyz,
    num_classes: int,
    bandwidth_km: float,
    max_neighbors: int = KDE_NEIGHBORS,
) -> np.ndarray:
    """(Q, C) float32 p(class | place) by a Gaussian kernel density per class of `bandwidth_km` km."""
    return _scores(train_xyz, train_labels, query_xyz, num_classes, max_neighbors, gaussian(bandwidth_km))


def ranked_top(index: NeighborIndex, classes, sums, top: int) -> np.ndarray:
    """(q, min(top, C)) int32 classes by score, equal scores in frequency order (a dense sort per row)."""
    present = (classes >= 0) & (sums > 0)
    dense = np.zeros((len(classes), index.num_classes))
    rows = np.broadcast_to(np.arange(len(classes))[:, None], classes.shape)
    np.add.at(dense, (rows[present], classes[present]), sums[present])
    by_frequency = dense[:, index.ranking]  # columns in frequency order, so a stable sort breaks ties by it
    order = np.argsort(-by_frequency, axis=1, kind="stable")[:, : min(top, index.num_classes)]
    return index.ranking[order].astype(np.int32)
