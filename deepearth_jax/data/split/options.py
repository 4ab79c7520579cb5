"""The parameters of a split and their defaults, stated once (the CLI and make_split both read them here)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class SplitOptions:
    """How to make a split (module docstring of deepearth_jax.data.split for the rules).

    Attributes:
      test_years: years whose observations are temporal test (may be empty).
      num_regions, region_km, min_distance_km: the spatial test regions (count, box side km, centre
        spacing km).
      buffer_km: training observations within this distance of a region box (or, with folds, of fold k's
        blocks for fold k) are excluded.
      all_observations: the pool is every observation, not only those with a vision embedding.
      seed: chooses region centres and breaks ties in fold balancing.
      folds, block_km: block cross-validation with `folds` folds of `block_km` square blocks (0: none).
      region_share: target share of the pool per region box (None: the median over candidate centres).
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

    def replace(self, **changes) -> SplitOptions:
        """A copy with `changes` (TypeError naming an unknown field)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(
                f"unknown split option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **changes)


DEFAULTS = SplitOptions()
