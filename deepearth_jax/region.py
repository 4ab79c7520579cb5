"""The region of a run: the Earth4D normaliser fitted once on the training rows' place and date.

The geo models (`geo_prior`, `vision_geo`) map latitude, longitude and date to [0, 1] over this box; fitting
it on training rows only keeps the test rows out of every choice the model depends on. It reaches the model
builders as `input_dims["earth4d_normalizer"]` (a dict of floats), recomputed identically by `evaluate`.
"""

from __future__ import annotations

import numpy as np

from deepearth_jax.data import store as store_lib
from deepearth_jax.models.earth4d import Earth4DNormalizer

NORMALIZER_KEY = "earth4d_normalizer"
TIME_COLUMNS = ("year", "month", "day", "hour", "minute", "second")


def place_and_date(store: store_lib.Store, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(location (N, 3), time (N, 6))` float64 of store rows, as the batches carry them (NaN unknown)."""
    col = store.column
    location = np.stack(
        [np.asarray(col(k)[rows], np.float64) for k in ("latitude", "longitude", "elevation")], 1
    )
    time = np.stack([np.asarray(col(k)[rows], np.float64) for k in TIME_COLUMNS], 1)
    return location, time


def fit_normalizer(store: store_lib.Store, train_rows: np.ndarray) -> dict[str, float]:
    """The Earth4D normaliser of the training rows (box plus margin), as a JSON-able dict."""
    location, time = place_and_date(store, np.asarray(train_rows, np.int64))
    return Earth4DNormalizer.fit(location[:, 0], location[:, 1], time).to_dict()
