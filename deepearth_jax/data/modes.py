"""Input modes: which embeddings a run reads, stated once for the pipeline, the trainer and the benchmarks.

| mode          | batch keys the model reads   | the store must hold            |
|---------------|------------------------------|--------------------------------|
| language      | language                     | language embeddings            |
| vision        | vision (B, T, H, W, D)       | vision embeddings              |
| vision_pooled | vision_pooled (B, D)         | vision embeddings (pooled once) |
| multimodal    | language, vision             | both                           |
| multimodal_geo | language, vision, location, time | both                        |
| geo           | location (B, 3), time (B, 6) | place and date of each row     |
| vision_geo    | vision_pooled, location, time | vision embeddings              |

`location` and `time` are float32 columns of the observation table, read for every batch; the geo modes keep
only rows with a finite latitude, longitude and date (`usable_rows`).
"""

from __future__ import annotations

from deepearth_jax.data import store as store_lib

INPUT_KEYS: dict[str, tuple[str, ...]] = {
    "language": ("language",),
    "vision": ("vision",),
    "vision_pooled": ("vision_pooled",),
    "multimodal": ("language", "vision"),
    "multimodal_geo": ("language", "vision", "location", "time"),
    "geo": ("location", "time"),
    "vision_geo": ("vision_pooled", "location", "time"),
}
# Batch keys read from the observation table itself (every batch has them), not from an embedding array.
COORDINATE_KEYS = ("location", "time")
MODES = tuple(INPUT_KEYS)
# Modes whose whole training set fits in device memory (one small vector per example).
DEVICE_EPOCH_MODES = ("language", "vision_pooled", "geo", "vision_geo")


def check_mode(mode: str) -> None:
    """Raises ValueError naming the known modes for an unknown one."""
    if mode not in INPUT_KEYS:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")


def input_keys(mode: str) -> tuple[str, ...]:
    """The embedding keys of a batch in `mode` (what goes to the model besides `species` and `mask`)."""
    check_mode(mode)
    return INPUT_KEYS[mode]


def embedding_keys(mode: str) -> tuple[str, ...]:
    """The input keys of `mode` gathered from embedding arrays (its input keys less the coordinates)."""
    return tuple(k for k in input_keys(mode) if k not in COORDINATE_KEYS)


def needs_vision(mode: str) -> bool:
    """Whether `mode` reads vision embeddings (full tokens or pooled), so rows without one are left out."""
    return mode in ("vision", "vision_pooled", "multimodal", "multimodal_geo", "vision_geo")


def needs_place_and_date(mode: str) -> bool:
    """Whether `mode` reads `location` and `time`, so rows without a finite place or date are left out."""
    return "location" in input_keys(mode)


def needs_language(mode: str) -> bool:
    return "language" in input_keys(mode)


class MissingEmbeddingsError(store_lib.StoreError, ValueError):
    """The store lacks an embedding array the mode reads (one line naming the mode, the store and the fix)."""


def check_store(store: store_lib.Store, mode: str) -> None:
    """Raises MissingEmbeddingsError (one line) when `store` lacks an embedding array `mode` reads."""
    check_mode(mode)
    missing = [
        what
        for what, needed, present in (
            ("vision", needs_vision(mode), store.has_vision),
            ("language", needs_language(mode), store.language is not None),
        )
        if needed and not present
    ]
    if not missing:
        return
    if store.observation_only:
        raise MissingEmbeddingsError(
            f"mode {mode!r} needs {' and '.join(missing)} embeddings, but store {store.path} has none (an "
            f"observation-only store: place, date and species); train it with --config.mode=geo "
            "(configs/geo_prior.py)"
        )
    raise MissingEmbeddingsError(
        f"mode {mode!r} needs {' and '.join(missing)} embeddings but store {store.path} has none"
    )
