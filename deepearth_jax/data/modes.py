"""Input modes: which embeddings a run reads, stated once for the pipeline, the trainer and the benchmarks.

| mode          | batch keys the model reads   | the store must hold            |
|---------------|------------------------------|--------------------------------|
| language      | language                     | language embeddings            |
| vision        | vision (B, T, H, W, D)       | vision embeddings              |
| vision_pooled | vision_pooled (B, D)         | vision embeddings (pooled once) |
| multimodal    | language, vision             | both                           |
"""

from __future__ import annotations

from deepearth_jax.data import store as store_lib

INPUT_KEYS: dict[str, tuple[str, ...]] = {
    "language": ("language",),
    "vision": ("vision",),
    "vision_pooled": ("vision_pooled",),
    "multimodal": ("language", "vision"),
}
MODES = tuple(INPUT_KEYS)
# Modes whose whole training set fits in device memory (one small vector per example).
DEVICE_EPOCH_MODES = ("language", "vision_pooled")


def check_mode(mode: str) -> None:
    """Raises ValueError naming the known modes for an unknown one."""
    if mode not in INPUT_KEYS:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")


def input_keys(mode: str) -> tuple[str, ...]:
    """The embedding keys of a batch in `mode` (what goes to the model besides `species` and `mask`)."""
    check_mode(mode)
    return INPUT_KEYS[mode]


def needs_vision(mode: str) -> bool:
    """Whether `mode` reads vision embeddings (full tokens or pooled), so rows without one are left out."""
    return mode in ("vision", "vision_pooled", "multimodal")


def needs_language(mode: str) -> bool:
    return "language" in input_keys(mode)


def check_store(store: store_lib.Store, mode: str) -> None:
    """Raises ValueError when `store` lacks an embedding array `mode` reads."""
    check_mode(mode)
    if needs_vision(mode) and not store.has_vision:
        raise ValueError(f"mode {mode!r} needs vision embeddings but store {store.path} has none")
    if needs_language(mode) and store.language is None:
        raise ValueError(f"mode {mode!r} needs language embeddings but store {store.path} has none")
