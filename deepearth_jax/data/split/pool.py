"""The candidate pool of a split: the store rows it covers and the columns the split reads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from deepearth_jax.data.split.file_format import describe_ids
from deepearth_jax.errors import SplitError


@dataclass
class Pool:
    """The candidate observations (store rows) and their columns."""

    rows: np.ndarray
    ids: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    year: np.ndarray
    gbif: np.ndarray
    image_index: np.ndarray
    taxon_id: np.ndarray
    taxon_name: np.ndarray
    month: np.ndarray
    day: np.ndarray


def pool_of(store, all_observations: bool) -> Pool:
    """The pool of a split: rows with a vision embedding (or all), with coordinates and dates checked."""
    columns = store.observations.column_names
    absent = [c for c in ("latitude", "longitude", "year") if c not in columns]
    if absent:
        raise SplitError(
            f"store {store.path} has no {', '.join(absent)} column(s): a split needs coordinates and dates"
        )
    if all_observations:
        rows = np.arange(store.num_observations, dtype=np.int64)
    else:
        rows = np.flatnonzero(store.column("vision_row") >= 0).astype(np.int64)
        if len(rows) == 0:
            raise SplitError(
                f"store {store.path} has no observation with a vision embedding; "
                "pass --all-observations to split every observation"
            )
    if len(rows) == 0:
        raise SplitError(f"store {store.path} has no observations")
    lat = np.asarray(store.column("latitude"), np.float64)[rows]
    lon = np.asarray(store.column("longitude"), np.float64)[rows]
    year = np.asarray(store.column("year"), np.float64)[rows]
    ids = np.asarray(store.observation_ids, dtype=object)[rows]
    for name, values in (("latitude", lat), ("longitude", lon), ("year", year)):
        bad = ~np.isfinite(values)
        if bad.any():
            raise SplitError(
                f"store {store.path}: {int(bad.sum())} of {len(rows)} observations have no {name} "
                f"(e.g. {describe_ids(ids[bad].tolist(), 3)}): a split needs coordinates and dates for all"
            )
    bad = (np.abs(lat) > 90) | (np.abs(lon) > 180)
    if bad.any():
        raise SplitError(
            f"store {store.path}: {int(bad.sum())} observations have coordinates outside the globe "
            f"(e.g. {describe_ids(ids[bad].tolist(), 3)})"
        )

    def optional(name: str) -> np.ndarray:
        if name not in columns:
            return np.full(len(rows), np.nan)
        return np.asarray(store.column(name), np.float64)[rows]

    return Pool(
        rows=rows,
        ids=ids,
        lat=lat,
        lon=lon,
        year=year.astype(np.int64),
        gbif=np.asarray(store.column("gbif_id"), np.int64)[rows],
        image_index=np.asarray(store.column("image_index"), np.int64)[rows],
        taxon_id=np.asarray(store.column("taxon_id"), dtype=object)[rows],
        taxon_name=np.asarray(store.column("taxon_name"), dtype=object)[rows],
        month=optional("month"),
        day=optional("day"),
    )


def subset(pool: Pool, index: np.ndarray) -> Pool:
    """The pool restricted to `index` (positions in the pool)."""
    return Pool(**{f.name: getattr(pool, f.name)[index] for f in dataclasses.fields(Pool)})
