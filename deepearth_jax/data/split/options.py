"""Split parameters, their defaults (stated once: the CLI and make_split both read them here), limits."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from deepearth_jax.errors import SplitError

MAX_FOLDS = 62  # fold buffers are kept as bits of an int64
MAX_REGIONS = 1000  # test (or validation) regions; region search and statistics grow with the count
MIN_KM, MAX_KM = 0.001, 10_000.0  # a metre .. a quarter of the Earth's circumference
MAX_BLOCKS = 20_000  # blocks holding observations; balancing compares blocks of two folds pairwise
MAX_BUFFER_BLOCKS = 50  # a fold buffer reaches at most this many blocks


@dataclass(frozen=True)
class SplitOptions:
    """How to make a split (the docstring of deepearth_jax.data.split states the rules).

    Attributes:
      test_years: years whose observations are temporal test (may be empty).
      num_regions, region_km, min_distance_km: the spatial test regions (count, box side km, centre
        spacing km).
      buffer_km: training observations within this distance of a region box (or, with folds, of fold k's
        blocks for fold k) are excluded; validation regions get the same buffer.
      all_observations: the pool is every observation, not only those with a vision embedding.
      seed: chooses region centres (test and validation) and breaks ties in fold balancing.
      folds, block_km: block cross-validation with `folds` folds of `block_km` square blocks (0: none).
      region_share: target share of the pool per region box (None: the median over candidate centres).
      validation_years: the most recent training years held out as temporal validation (0: none).
      validation_regions: spatial validation regions carved from the training rows (None: as many as
        `num_regions`, or as many as fit; 0: none), boxes of `region_km`, centres `min_distance_km` apart
        and from every test box.
      fit_regions: when the regions give a lopsided split (sizing.py: bounds on the subsets' shares),
        scale the box side and spacing down, then use fewer regions, until it fits. The `split` CLI turns
        it off when a region flag is given.
    """

    test_years: tuple[int, ...] = (2025,)
    num_regions: int = 5
    region_km: float = 10.0
    min_distance_km: float = 15.0
    buffer_km: float = 0.0
    all_observations: bool = False
    seed: int = 0
    folds: int = 0
    block_km: float = 20.0
    region_share: float | None = None
    validation_years: int = 1
    validation_regions: int | None = None
    fit_regions: bool = True

    def replace(self, **changes) -> SplitOptions:
        """A copy with `changes` (TypeError naming an unknown field)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(
                f"unknown split option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **changes)

    @property
    def num_validation_regions(self) -> int:
        return self.num_regions if self.validation_regions is None else self.validation_regions

    def check(self) -> None:
        """Refuses NaN, infinite, negative and out-of-range values with one line naming the flag."""
        _integer("--regions", self.num_regions, 0, MAX_REGIONS)
        _km("--region-km", self.region_km, MIN_KM)
        _km("--min-distance-km", self.min_distance_km, 0.0)
        _km("--buffer-km", self.buffer_km, 0.0)
        _km("--block-km", self.block_km, MIN_KM)
        _integer("--seed", self.seed, 0, 2**63 - 1)
        if self.folds != 0:
            _integer("--folds", self.folds, 2, MAX_FOLDS, "0 (none) or ")
        if self.region_share is not None:
            share = _number("--region-share", self.region_share)
            if not 0 < share <= 1:
                raise SplitError(f"--region-share must be a share of the pool in (0, 1], got {share!r}")
        _integer("--validation-years", self.validation_years, 0, 100)
        if self.validation_regions is not None:
            _integer("--validation-regions", self.validation_regions, 0, MAX_REGIONS)
        for year in self.test_years or ():
            _integer("--test-years", year, -9999, 9999)


def _number(flag: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise SplitError(f"{flag} must be a finite number, got {value!r}")
    return float(value)


def _km(flag: str, value, low: float) -> None:
    km = _number(flag, value)
    if not low <= km <= MAX_KM:
        raise SplitError(f"{flag} must be in {low:g}..{MAX_KM:g} km, got {km:g}")


def _integer(flag: str, value, low: int, high: int, also: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise SplitError(f"{flag} must be {also}an integer in {low}..{high}, got {value!r}")


DEFAULTS = SplitOptions()
