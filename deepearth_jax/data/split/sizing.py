"""Split sizing: bounds on the subsets' shares, and region sizes fitted to a small study area.

The default regions (5 boxes of 10 km, >= 15 km apart) suit a county-sized study area of thousands of
observations. On a small or tightly clustered one they swallow most of the pool: README's synthetic example
(300 observations at 7 sites) put 92.6% in test and left 12 training rows. A split is *lopsided* when

- test holds more than `MAX_TEST_SHARE` of the pool, or
- validation holds more than `MAX_VALIDATION_SHARE` of it, or
- training keeps less than `MIN_TRAIN_SHARE` of it, or fewer than `MIN_TRAIN_ROWS` rows (one batch of the
  default configs).

The demo store's default split (52% train, 27% test, 21% validation) and the original
central_florida_split.json (9.5% test) lie well inside. With the default region options
(`SplitOptions.fit_regions`), a lopsided first try is fitted: the same number of regions with the box side
and the centre spacing scaled by each of `FIT_SCALES` in turn, then one region fewer, and so on; the first
candidate inside the bounds wins (so a split that was inside them is never changed). Explicit region flags
(`--regions`, `--region-km`, `--min-distance-km`, `--region-share`) and `--regions-from` are never fitted.

A split still lopsided is refused by `split` (one line naming the flags that fix it; `--allow-lopsided` keeps
it) and kept with a warning by the library's `make_split(strict=False)`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np

from deepearth_jax.data.split.options import MIN_KM, SplitOptions
from deepearth_jax.errors import SplitError

log = logging.getLogger(__name__)

MAX_TEST_SHARE = 0.5
MAX_VALIDATION_SHARE = 1 / 3
MIN_TRAIN_SHARE = 1 / 3
MIN_TRAIN_ROWS = 32  # configs/common.py's batch_size: fewer cannot fill one training batch
FIT_SCALES = (1.0, 0.5, 0.25, 0.125)  # box side and centre spacing, times the requested ones

T = TypeVar("T")


def bounds() -> dict:
    """The bounds as the split file records them (split_strategy.spatial_split.sizing.bounds)."""
    return {
        "max_test_share": MAX_TEST_SHARE,
        "max_validation_share": MAX_VALIDATION_SHARE,
        "min_train_share": MIN_TRAIN_SHARE,
        "min_train_rows": MIN_TRAIN_ROWS,
    }


def shares(split: np.ndarray) -> dict:
    """`{"pool", "train", "test", "validation"}`: counts of a split's subsets (`(N,)` names)."""
    return {"pool": len(split), **{s: int((split == s).sum()) for s in ("train", "test", "validation")}}


def problems(split: np.ndarray) -> list[str]:
    """What makes a split lopsided (module docstring), one short phrase each; empty when it is not."""
    c = shares(split)
    n = max(c["pool"], 1)
    found = []
    if c["test"] > MAX_TEST_SHARE * n:
        found.append(f"test {c['test']} of {c['pool']} ({100 * c['test'] / n:.1f}% > {MAX_TEST_SHARE:.0%})")
    if c["validation"] > MAX_VALIDATION_SHARE * n:
        found.append(
            f"validation {c['validation']} ({100 * c['validation'] / n:.1f}% > {MAX_VALIDATION_SHARE:.0%})"
        )
    if c["train"] < MIN_TRAIN_SHARE * n or c["train"] < MIN_TRAIN_ROWS:
        found.append(
            f"training {c['train']} ({100 * c['train'] / n:.1f}%; needs >= {MIN_TRAIN_SHARE:.0%} and >= "
            f"{MIN_TRAIN_ROWS} rows, one batch)"
        )
    return found


def describe(split: np.ndarray) -> str:
    c = shares(split)
    n = max(c["pool"], 1)
    return ", ".join(f"{s} {100 * c[s] / n:.0f}%" for s in ("train", "test", "validation"))


def candidates(options: SplitOptions) -> Iterator[SplitOptions]:
    """The fitting order: `options` itself, then scaled boxes at the same count, then fewer regions."""
    yield options
    for count in range(options.num_regions, 0, -1):
        for scale in FIT_SCALES:
            if (count == options.num_regions and scale == 1.0) or options.region_km * scale < MIN_KM:
                continue
            yield options.replace(
                num_regions=count,
                region_km=options.region_km * scale,
                min_distance_km=options.min_distance_km * scale,
            )


def flags(options: SplitOptions) -> str:
    """The `split` flags that give `options`' regions."""
    return (
        f"--regions {options.num_regions} --region-km {options.region_km:g} "
        f"--min-distance-km {options.min_distance_km:g}"
    )


class _Held(logging.Handler):
    """Holds the region and validation warnings of a candidate until it is chosen (then replayed)."""

    NAMES = ("regions", "validation")

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def replay(self) -> None:
        for record in self.records:
            logging.getLogger(record.name).handle(record)


@contextlib.contextmanager
def _held():
    held = _Held()
    loggers = [logging.getLogger(f"deepearth_jax.data.split.{name}") for name in _Held.NAMES]
    saved = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(held)
        logger.propagate = False
    try:
        yield held
    finally:
        for logger, propagate in zip(loggers, saved, strict=True):
            logger.removeHandler(held)
            logger.propagate = propagate


def _attempt(attempt, candidate: SplitOptions):
    """`(result, split, held warnings)` of one candidate; ValueError when it cannot be made."""
    with _held() as held:
        result, split = attempt(candidate)
    return result, split, held


def _first_fit(attempt, options: SplitOptions):
    """`(options, result, split, held warnings)` of the first candidate after `options` inside the
    bounds, or None."""
    for candidate in candidates(options):
        if candidate is options:
            continue
        try:
            result, split, held = _attempt(attempt, candidate)
        except ValueError:  # these regions cannot be placed or leave nothing to train on: try the next
            continue
        if not problems(split):
            return candidate, result, split, held
    return None


def _fix_text(suggestion) -> str:
    if suggestion is not None:
        return f"{flags(suggestion[0])} fits ({describe(suggestion[2])})"
    return (
        "no smaller or fewer regions fit; use fewer --test-years or --validation-years, --regions 0 "
        "(temporal test only) or --validation-regions 0"
    )


def sized(
    attempt: Callable[[SplitOptions], tuple[T, np.ndarray]], options: SplitOptions, *, strict: bool
) -> tuple[SplitOptions, T, dict]:
    """Runs `attempt(options)` (a split's holdout and validation: `(result, (N,) subset names)`), fitting
    the regions when lopsided (module docstring). Returns `(options used, result, sizing record)`.

    Raises SplitError when the split stays lopsided and `strict`, or when no candidate can be made at all
    (the first candidate's own error).
    """
    record = {"bounds": bounds(), "fitted": False}
    first_error = held = None
    try:
        result, split, held = _attempt(attempt, options)
    except ValueError as e:
        if not options.fit_regions:
            raise
        result = split = None
        first_error = e
    found = problems(split) if split is not None else [str(first_error)]
    if not found or not options.fit_regions:
        held.replay()
    if not found:
        return options, result, record
    suggestion = _first_fit(attempt, options)
    if options.fit_regions and suggestion is not None:
        fitted, result, split, held = suggestion
        record.update(fitted=True, requested=flags(options), requested_problems=found)
        log.warning(
            "the default regions (%s) give a lopsided split (%s): fitted to this pool instead: %s (%s)",
            flags(options),
            "; ".join(found),
            flags(fitted),
            describe(split),
        )
        held.replay()
        return fitted, result, record
    if first_error is not None:
        raise first_error
    if options.fit_regions:
        held.replay()
    fix = _fix_text(suggestion)
    if strict:
        raise SplitError(f"lopsided split: {'; '.join(found)}; {fix}, or pass --allow-lopsided to keep it")
    log.warning("LOPSIDED SPLIT: %s; %s", "; ".join(found), fix)
    record["problems"] = found
    return options, result, record
