"""The published DeepEarth source layouts (DATA.md §1-2): file names, columns and embedding shapes.

Both `convert` (which reads them) and `synthetic` (which writes them for tests and benchmarks) take the
layouts from here, so the converter never depends on the fake-data generator.

  * Hugging Face layout: `observations.parquet` (OBSERVATION_COLUMNS), `vision_index.parquet`
    (`gbif_id, file_idx, row_idx`) and `vision_embeddings/embeddings_{file_idx:06d}.parquet`
    (`gbif_id, embedding, original_shape`).
  * Dashboard layout: the same `observations.parquet` beside `embeddings.mmap` (raw float32 rows, no header)
    and `embeddings_index.db` (SQLite table `embedding_index`, `file_offset` in bytes).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

from deepearth_jax.errors import CliError

HF_OBSERVATIONS_FILE = "observations.parquet"
HF_VISION_INDEX_FILE = "vision_index.parquet"
HF_VISION_DIR = "vision_embeddings"
DASHBOARD_MMAP_FILE = "embeddings.mmap"
DASHBOARD_INDEX_FILE = "embeddings_index.db"

# V-JEPA 2's token grid (T, H, W, D) and the language model's embedding size, as published.
REAL_VISION_SHAPE = (8, 24, 24, 1408)
REAL_LANGUAGE_DIM = 7168

# Columns of observations.parquet: those convert needs, and those it uses when present.
OBSERVATION_COLUMNS = (
    "gbif_id",
    "taxon_name",
    "latitude",
    "longitude",
    "year",
    "month",
    "day",
    "language_embedding",
)
OPTIONAL_OBSERVATION_COLUMNS = ("taxon_id", "hour", "minute", "second", "image_urls", "split", "has_vision")


def parse_shape(text: str) -> tuple[int, ...]:
    """Parses "T,H,W,D" into a tuple of positive ints; raises CliError with the text."""
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise CliError(f"shape must be comma-separated integers like 8,24,24,1408, got {text!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise CliError(f"shape must be four positive integers T,H,W,D, got {text!r}")
    return shape


def original_shape_text(vision_shape: Sequence[int]) -> str:
    """The `original_shape` string of an HF embedding row.

    The published shape `(8, 24, 24, 1408)` is written as the dataset does, `"[4608, 1408]"` (tokens x D);
    any other shape as its four sizes `"[T, H, W, D]"`, since tokens x D alone cannot say T, H and W.
    """
    t, h, w, d = vision_shape
    if tuple(vision_shape) == REAL_VISION_SHAPE:
        return f"[{t * h * w}, {d}]"
    return f"[{t}, {h}, {w}, {d}]"


def parse_original_shape(text: str) -> tuple[int, ...]:
    """`"[4608, 1408]"` -> (4608, 1408); raises ValueError for anything but a list of positive ints."""
    try:
        shape = tuple(int(v) for v in ast.literal_eval(text.strip()))
    except (ValueError, SyntaxError, TypeError):
        raise ValueError(f"original_shape {text!r} is not a list of sizes like '[4608, 1408]'") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"original_shape {text!r} is not a list of positive sizes")
    return shape


def resolve_vision_shape(original: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The `(T, H, W, D)` an `original_shape` stands for.

    Four sizes are taken as they are. The published `(4608, 1408)` (and `(8, 576, 1408)`) is V-JEPA 2's
    8 x 24 x 24 token grid (DATA.md §1). Any other tokens x D does not say T, H and W: ValueError.
    """
    if len(original) == 4:
        return tuple(original)  # type: ignore[return-value]
    if original in ((4608, 1408), (8, 576, 1408)):
        return REAL_VISION_SHAPE
    raise ValueError(
        f"original_shape {list(original)} does not say T,H,W of the token grid: pass --vision-shape T,H,W,D"
    )


def shape_matches(original: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether an `original_shape` agrees with the `(T, H, W, D)` a conversion uses.

    Every size the original states must hold: four sizes equal the shape, `(T, H*W, D)` its T, H*W and D,
    the published `(4608, 1408)` stands for `(8, 24, 24, 1408)` exactly, and any other `(tokens, D)` only
    says T*H*W and D. A reordered shape of the same size is therefore refused wherever the source says more.
    """
    shape = tuple(shape)
    try:
        return resolve_vision_shape(original) == shape
    except ValueError:
        pass
    t, h, w, d = shape
    if len(original) == 3:
        return original == (t, h * w, d)
    if len(original) == 1:
        return original == (t * h * w * d,)
    return len(original) == 2 and original == (t * h * w, d)
