"""The original DeepEarth library call, `get_training_batch(store, observation_ids)`, on a converted store."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepearth_jax.data import store as store_lib
from deepearth_jax.errors import StoreError


def _as_store(store: store_lib.Store | str | os.PathLike) -> store_lib.Store:
    return store if isinstance(store, store_lib.Store) else store_lib.open_store(store)


def get_training_batch(
    store: store_lib.Store | str | os.PathLike,
    observation_ids: Sequence[str],
    include_vision: bool = True,
    include_language: bool = True,
) -> dict[str, Any]:
    """The original DeepEarth library call: one batch for the given OBSERVATION_IDs, in their order.

    Returns a dict with `observation_ids` (list), `species` (Latin names, list), `species_index` `(B,)`
    int32, `locations` `(B, 3)` float32 (latitude, longitude in degrees, elevation in metres, NaN when
    unknown), `timestamps` `(B, 6)` float32 (year, month, day, hour, minute, second; NaN where unknown),
    and, when asked, `language_embeddings` `(B, L)` float32 and `vision_embeddings` `(B, T, H, W, D)` in
    the store dtype. Raises StoreError naming unknown ids, or ids without a vision
    embedding when vision is asked for; nothing is ever filled with zeros.
    """
    store = _as_store(store)
    ids = [str(i) for i in observation_ids]
    if not ids:
        raise StoreError("no observation ids given")
    rows = store.rows_of(ids)
    if include_vision:
        if not store.has_vision:
            raise StoreError(f"store {store.path} has no vision embeddings")
        missing = [ids[i] for i in np.flatnonzero(store.column("vision_row")[rows] < 0)]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise StoreError(
                f"{len(missing)} observation id(s) have no vision embedding: {', '.join(missing[:5])}{more}"
            )
    if include_language and store.language is None:
        raise StoreError(f"store {store.path} has no language embeddings")
    col = store.column
    names = store.species_names
    species_index = col("species_index")[rows].astype(np.int32)
    batch: dict[str, Any] = {
        "observation_ids": ids,
        "species": [names[i] for i in species_index],
        "species_index": species_index,
        "locations": np.stack([col(k)[rows] for k in ("latitude", "longitude", "elevation")], 1).astype(
            np.float32
        ),
        "timestamps": np.stack(
            [col(k)[rows].astype(np.float64) for k in ("year", "month", "day", "hour", "minute", "second")], 1
        ).astype(np.float32),
    }
    if include_language:
        batch["language_embeddings"] = np.take(store.language, col("language_row")[rows], axis=0)
    if include_vision:
        batch["vision_embeddings"] = np.take(store.vision, col("vision_row")[rows], axis=0)
    return batch
