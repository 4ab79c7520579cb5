"""Split reasons: a typed value (kind + region or fold number), written to the JSON as the original strings.

The file keeps the original spellings (`temporal_train`, `spatial_test_region_3`, ...); inside the package a
reason is a `Reason`, and every module recognises reasons by `Reason.kind`, never by a string prefix.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

import numpy as np

from deepearth_jax.errors import SplitError


class Kind(enum.Enum):
    """What put an observation where it is. The value is the spelling pattern (`{n}`: region or fold)."""

    TEMPORAL_TRAIN = "temporal_train"
    TEMPORAL_TEST = "temporal_test"
    SPATIAL_TEST = "spatial_test_region_{n}"
    BUFFER = "buffer_region_{n}"
    FOLD_TEST = "fold_{n}_test"
    FOLD_TRAIN = "fold_{n}_train"
    FOLD_BUFFER = "buffer_fold_{n}"
    NOT_IN_SPLIT = "not_in_split"
    VALIDATION_TEMPORAL = "validation_temporal"
    VALIDATION_SPATIAL = "validation_spatial_region_{n}"
    VALIDATION_BUFFER = "validation_buffer_region_{n}"


# Coarse group of each kind (evaluation reports metrics per group).
_GROUP = {
    Kind.TEMPORAL_TRAIN: "temporal",
    Kind.TEMPORAL_TEST: "temporal",
    Kind.SPATIAL_TEST: "spatial",
    Kind.BUFFER: "buffer",
    Kind.FOLD_TEST: "fold",
    Kind.FOLD_TRAIN: "fold",
    Kind.FOLD_BUFFER: "buffer",
    Kind.NOT_IN_SPLIT: "not_in_split",
    Kind.VALIDATION_TEMPORAL: "temporal",
    Kind.VALIDATION_SPATIAL: "spatial",
    Kind.VALIDATION_BUFFER: "buffer",
}
_PATTERNS = [
    (kind, re.compile("^" + re.escape(kind.value).replace(r"\{n\}", "(-?[0-9]+)") + "$")) for kind in Kind
]


@dataclass(frozen=True)
class Reason:
    """One split reason: a kind and, for regions and folds, the region id or fold number."""

    kind: Kind
    number: int | None = None

    def __post_init__(self) -> None:
        numbered = "{n}" in self.kind.value
        if numbered != (self.number is not None):
            raise SplitError(f"reason {self.kind.name} {'needs' if numbered else 'takes no'} number")

    def __str__(self) -> str:
        return self.kind.value.replace("{n}", str(self.number))

    @property
    def group(self) -> str:
        """temporal, spatial, fold, buffer or not_in_split."""
        return _GROUP[self.kind]

    @classmethod
    def parse(cls, text: str) -> Reason:
        """The Reason spelled `text`; ValueError (one line) for a spelling no kind has."""
        for kind, pattern in _PATTERNS:
            match = pattern.match(text)
            if match:
                return cls(kind, int(match.group(1)) if match.groups() else None)
        raise SplitError(f"unknown split reason {text!r}")


TEMPORAL_TRAIN = Reason(Kind.TEMPORAL_TRAIN)
TEMPORAL_TEST = Reason(Kind.TEMPORAL_TEST)
NOT_IN_SPLIT = Reason(Kind.NOT_IN_SPLIT)
VALIDATION_TEMPORAL = Reason(Kind.VALIDATION_TEMPORAL)


@functools.lru_cache(maxsize=4096)
def kind_of(text: str) -> Kind | None:
    """The Kind of a reason's spelling, None for a spelling no kind has (a foreign file's own reasons)."""
    try:
        return Reason.parse(text).kind
    except ValueError:
        return None


def reason_group(text: str) -> str:
    """Coarse group of a reason's spelling (temporal, spatial, fold, buffer), or the spelling itself."""
    kind = kind_of(text)
    return text if kind is None else _GROUP[kind]


def texts(reasons: np.ndarray) -> np.ndarray:
    """`(N,)` object array of spellings of an array of Reason."""
    return np.asarray([str(r) for r in reasons], dtype=object)


def parse_all(spellings) -> np.ndarray:
    """`(N,)` object array of Reason from spellings (each distinct spelling parsed once)."""
    spellings = np.asarray(list(spellings), dtype=object)
    if len(spellings) == 0:
        return np.zeros(0, object)
    unique, inverse = np.unique(spellings.astype(str), return_inverse=True)
    parsed = np.empty(len(unique), dtype=object)
    parsed[:] = [Reason.parse(str(u)) for u in unique]
    return parsed[inverse.ravel()]


def of_kind(reasons: np.ndarray, kind: Kind, number: int | None = None) -> np.ndarray:
    """Bool `(N,)`: which reasons are of `kind` (and, when given, of region/fold `number`).

    Entries that are not a Reason (a foreign file's own spellings) are of no kind."""
    return np.fromiter(
        (
            isinstance(r, Reason) and r.kind is kind and (number is None or r.number == number)
            for r in reasons
        ),
        bool,
        len(reasons),
    )
