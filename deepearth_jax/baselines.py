"""Baselines beside every classifier on the same test rows: class frequency and k nearest neighbours in km.

A model of place and date that does not beat these has learned nothing a lookup table does not know.
- frequency: every row gets the training classes ranked by count (ties: lower class first);
- kNN: the `neighbors` training observations nearest in kilometres (equirectangular about the region's
  centre, exact enough within a few hundred km) vote; classes ranked by votes, ties by training frequency.
All vectorised numpy; distances in chunks of rows so memory stays bounded.
"""

from __future__ import annotations

import math

import numpy as np

from deepearth_jax import metrics as metrics_lib

KM_PER_DEGREE = 111.195  # mean Earth radius 6371.0 km
TOP = 5
NEIGHBORS = 20
_CHUNK = 2048


def frequency_ranking(train_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) classes by training count, most frequent first; equal counts in class order."""
    counts = np.bincount(np.asarray(train_labels, np.int64), minlength=num_classes)
    return np.lexsort((np.arange(num_classes), -counts))


def frequency_top(train_labels: np.ndarray, num_classes: int, n: int, top: int = TOP) -> np.ndarray:
    """(n, min(top, C)) int32: the same frequency ranking for every row."""
    ranking = frequency_ranking(train_labels, num_classes)[: min(top, num_classes)]
    return np.broadcast_to(ranking.astype(np.int32), (n, len(ranking))).copy()


def km_coordinates(lat: np.ndarray, lon: np.ndarray, lat0: float) -> np.ndarray:
    """(N, 2) east and north kilometres (equirectangular, scaled at latitude `lat0`)."""
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    return np.stack([lon * KM_PER_DEGREE * math.cos(math.radians(lat0)), lat * KM_PER_DEGREE], 1)


def knn_top(
    train_km: np.ndarray,
    train_labels: np.ndarray,
    query_km: np.ndarray,
    num_classes: int,
    neighbors: int = NEIGHBORS,
    top: int = TOP,
) -> np.ndarray:
    """(Q, min(top, C)) int32: classes by votes among the `neighbors` nearest training points (km).

    Ties in votes are broken by training frequency (then class order); nearest ties by training order.
    """
    train_labels = np.asarray(train_labels, np.int64)
    k = min(int(neighbors), len(train_labels))
    top = min(top, num_classes)
    ranking = frequency_ranking(train_labels, num_classes)
    # A tie-break below one vote: the class's place in the frequency ranking, scaled into (0, 1).
    tie = np.empty(num_classes)
    tie[ranking] = (num_classes - np.arange(num_classes)) / (num_classes + 1.0)
    out = np.empty((len(query_km), top), np.int32)
    for start in range(0, len(query_km), _CHUNK):
        q = np.asarray(query_km[start : start + _CHUNK], np.float64)
        d2 = np.sum((q[:, None, :] - train_km[None, :, :]) ** 2, axis=-1)
        nearest = _nearest(d2, k)
        votes = np.zeros((len(q), num_classes))
        np.add.at(votes, (np.arange(len(q))[:, None], train_labels[nearest]), 1.0)
        out[start : start + len(q)] = np.argsort(-(votes + tie), axis=1, kind="stable")[:, :top]
    return out


def _nearest(d2: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) column indices of the k smallest of each row of `d2`, equal ties in column order: what a stable
    argsort gives, in linear time (a partition) for every row whose k-th distance is not tied."""
    if k >= d2.shape[1]:
        return np.argsort(d2, axis=1, kind="stable")
    kth = np.partition(d2, k - 1, axis=1)[:, k - 1 : k]
    within = d2 <= kth
    exact = within.sum(axis=1) == k  # no tie at the k-th distance: the k columns are the k nearest
    nearest = np.empty((len(d2), k), np.int64)
    if exact.any():
        cols = np.nonzero(within[exact])[1].reshape(-1, k)  # the k columns of each row, in column order
        order = np.argsort(np.take_along_axis(d2[exact], cols, axis=1), axis=1, kind="stable")
        nearest[exact] = np.take_along_axis(cols, order, axis=1)
    if not exact.all():
        nearest[~exact] = np.argsort(d2[~exact], axis=1, kind="stable")[:, :k]
    return nearest


def accuracies(top: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top1 and top5 (top-min(5, K)) of ranked predictions against labels (-1 always a miss)."""
    return {
        "top1": metrics_lib.topk_accuracy(top, labels, k=1),
        "top5": metrics_lib.topk_accuracy(top, labels, k=min(TOP, top.shape[1])),
    }


class Baselines:
    """Both baselines' ranked predictions for a set of store rows, fitted on the training rows of `data`."""

    def __init__(self, data, rows: np.ndarray):
        store, train = data.store, data.train_rows
        num_classes = len(data.class_species)
        species = store.column("species_index")
        train_labels = data.label_map[species[train]]
        lat, lon = store.column("latitude"), store.column("longitude")
        lat0 = float(np.nanmean(np.asarray(lat[train], np.float64)))
        train_km = km_coordinates(lat[train], lon[train], lat0)
        known = np.all(np.isfinite(train_km), axis=1)
        self.rows = np.sort(np.asarray(rows, np.int64))
        query_km = km_coordinates(lat[self.rows], lon[self.rows], lat0)
        self.top = {
            "baseline_frequency": frequency_top(train_labels, num_classes, len(self.rows)),
            "baseline_knn": knn_top(
                train_km[known], train_labels[known], np.nan_to_num(query_km, nan=np.inf), num_classes
            ),
        }

    def hits(self, rows: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """{baseline: {top1, top5}} per-example 0/1 hits on `rows` (a subset of the fitted rows) with their
        `labels`; their means are the accuracies, their bootstrap the intervals."""
        index = np.searchsorted(self.rows, np.asarray(rows, np.int64))
        return {
            name: {
                "top1": metrics_lib.topk_correct(top[index], labels, k=1),
                "top5": metrics_lib.topk_correct(top[index], labels, k=min(TOP, top.shape[1])),
            }
            for name, top in self.top.items()
        }
