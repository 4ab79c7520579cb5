"""OBSERVATION_ID: `"{gbif_id}_{image_index}"`, the key of one observation (one image of a GBIF record).

gbif_id is a non-negative integer; image_index counts images from 1.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

_ID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)_([1-9][0-9]*)$")


def make_observation_id(gbif_id: int, image_index: int = 1) -> str:
    """Returns the OBSERVATION_ID of image `image_index` (>= 1) of GBIF record `gbif_id` (>= 0)."""
    gbif_id, image_index = int(gbif_id), int(image_index)
    if gbif_id < 0:
        raise ValueError(f"gbif_id must be >= 0, got {gbif_id}")
    if image_index < 1:
        raise ValueError(f"image_index must be >= 1, got {image_index} (gbif_id {gbif_id})")
    return f"{gbif_id}_{image_index}"


def parse_observation_id(observation_id: str) -> tuple[int, int]:
    """Returns `(gbif_id, image_index)` of one OBSERVATION_ID; raises ValueError naming a malformed id."""
    match = _ID_PATTERN.match(observation_id) if isinstance(observation_id, str) else None
    if match is None:
        raise ValueError(
            f"malformed observation id {observation_id!r}: expected '<gbif_id>_<image_index>' "
            "with gbif_id >= 0 and image_index >= 1"
        )
    return int(match.group(1)), int(match.group(2))


def parse_observation_ids(observation_ids: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parses many ids at once: returns `(gbif_ids, image_indices)`, both `(N,)` int64.

    Raises ValueError naming the malformed ids (the first few, and how many in all).
    """
    ids = np.asarray(
        list(observation_ids) if not isinstance(observation_ids, np.ndarray) else observation_ids
    )
    if ids.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ids = ids.astype(str)
    parts = np.char.partition(ids, "_")
    gbif_text, sep, index_text = parts[:, 0], parts[:, 1], parts[:, 2]
    ok = (
        (sep == "_")
        & np.char.isdigit(gbif_text)
        & np.char.isdigit(index_text)
        & (np.char.str_len(gbif_text) > 0)
        & (np.char.str_len(index_text) > 0)
    )
    # No leading zeros, so that every id has exactly one spelling.
    ok &= ~((np.char.str_len(gbif_text) > 1) & (np.char.startswith(gbif_text, "0")))
    ok &= ~np.char.startswith(index_text, "0")
    if not ok.all():
        bad = ids[~ok]
        shown = ", ".join(repr(str(b)) for b in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ValueError(
            f"{len(bad)} malformed observation id(s): {shown}{more}; expected '<gbif_id>_<image_index>' "
            "with gbif_id >= 0 and image_index >= 1"
        )
    return gbif_text.astype(np.int64), index_text.astype(np.int64)


def make_observation_ids(gbif_ids: np.ndarray, image_indices: np.ndarray | int = 1) -> np.ndarray:
    """Vectorised `make_observation_id`: returns an `(N,)` array of str."""
    gbif_ids = np.asarray(gbif_ids, np.int64)
    image_indices = np.broadcast_to(np.asarray(image_indices, np.int64), gbif_ids.shape)
    if (gbif_ids < 0).any():
        raise ValueError(f"gbif_id must be >= 0, got {int(gbif_ids[gbif_ids < 0][0])}")
    if (image_indices < 1).any():
        raise ValueError(f"image_index must be >= 1, got {int(image_indices[image_indices < 1][0])}")
    return np.char.add(np.char.add(gbif_ids.astype(str), "_"), image_indices.astype(str))
