"""The date (and clock time) of each occurrence row: Darwin Core eventDate, or year/month/day.

Rules (the converter's docstring repeats them for users):
  * eventDate first. An ISO 8601 date (`2020-05-01`) or date-time (`2020-05-01T10:22`, seconds, fractions
    and a `Z`/offset allowed: the clock is kept as written, the offset is not applied) gives the day and
    the clock. A range `start/end` (`2020-05-01/2020-05-03`, or ISO's short ends `/03`, `/05-03`) of at most
    MAX_RANGE_DAYS days is dated by its first day, with no clock; a longer range is too coarse for a season.
  * Where eventDate gives no single day (absent, a year or month only, a long range, or text that is not ISO
    8601), the year, month and day columns do, when all three are present.
  * Otherwise the row has no date: `missing_date` (nothing given), or `imprecise_date` (only a year, a month
    or a long range: the reason says which). Impossible dates (31 February, month 13) are `bad_date`, as
    in the HF conversion (observations._validate_date checks every date the same way).
"""

from __future__ import annotations

import datetime as _dt
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_RANGE_DAYS = 7  # a range of up to a week is dated by its first day (GBIF's own bins are coarser)
# Problems of a row's date (event_dates' `problem`): nothing given, no single day, not a date at all.
MISSING, IMPRECISE, BAD = 1, 2, 3
# What dated a row (event_dates' `rule`): 0 nothing, then these.
RULES = ("none", "event_date", "event_date_range", "year_month_day")

_TIME = r"(?:[T ](?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:[.,]\d+)?)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?"
_DATE = r"(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})"
SINGLE = rf"^\s*{_DATE}{_TIME}\s*$"
_PARTIAL = re.compile(r"^\s*\d{4}(-\d{1,2})?\s*$")
_START = re.compile(rf"^\s*{_DATE}{_TIME}\s*$")
_END = re.compile(r"^\s*(?:(?:(?P<y>\d{4})-)?(?P<m>\d{1,2})-)?(?P<d>\d{1,2})(?:[T ].*)?\s*$")


def _numbers(values: pa.Array) -> np.ndarray:
    """Digits as float64, NaN where empty or null."""
    values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
    return values.cast(pa.float64()).to_numpy(zero_copy_only=False)


def _range_day(text: str) -> tuple[tuple[int, int, int] | None, int, str]:
    """`((year, month, day) of the first day, 0, "")` for a short range, else `(None, problem, why not)`."""
    start_text, _, end_text = text.partition("/")
    start, end = _START.match(start_text), _END.match(end_text)
    if start is None or end is None:
        return None, BAD, f"eventDate {text!r} is not an ISO 8601 date or range"
    y, m, d = int(start["y"]), int(start["m"]), int(start["d"])
    ey = int(end["y"]) if end["y"] else y
    em = int(end["m"]) if end["m"] else m
    try:
        first, last = _dt.date(y, m, d), _dt.date(ey, em, int(end["d"]))
    except ValueError:
        return None, BAD, f"eventDate {text!r} is not a range of calendar dates"
    span = (last - first).days + 1
    if span < 1:
        return None, BAD, f"eventDate {text!r} ends before it starts"
    if span > MAX_RANGE_DAYS:
        return None, IMPRECISE, f"eventDate {text!r} spans {span} days (at most {MAX_RANGE_DAYS} give a date)"
    return (y, m, d), 0, ""


def event_dates(
    event_date: pa.Array | None, year: np.ndarray, month: np.ndarray, day: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray, list[str | None], np.ndarray]:
    """Each row's date from eventDate or year/month/day (the module docstring's rules).

    Args:
      event_date: the eventDate column as text (None when the table has none).
      year, month, day: the year/month/day columns as float64 (NaN where absent or not a number).

    Returns `(columns, problem, reason, rule)`: `columns` holds year, month, day, hour, minute, second as
    float64 (NaN unknown); `problem` (N,) int8 is 0 dated, MISSING (nothing given), IMPRECISE (no single
    day) or BAD (not a date), with `reason[i]` saying why; `rule` (N,) int8 indexes RULES (what dated it).
    """
    n = len(year)
    out = {k: np.full(n, np.nan) for k in ("year", "month", "day", "hour", "minute", "second")}
    dated = np.zeros(n, bool)
    reason: list[str | None] = [None] * n
    problem = np.zeros(n, np.int8)
    text_problem = np.zeros(n, np.int8)
    rule = np.zeros(n, np.int8)  # index into RULES
    if event_date is not None:
        text = event_date.cast(pa.string())
        parts = pc.extract_regex(text, SINGLE)
        matched = parts.is_valid().to_numpy(zero_copy_only=False)
        for key, group in (("year", "y"), ("month", "m"), ("day", "d")):
            out[key][matched] = _numbers(parts.field(group))[matched]
        for key, group in (("hour", "H"), ("minute", "M"), ("second", "S")):
            out[key][matched] = _numbers(parts.field(group))[matched]
        dated |= matched
        rule[matched] = 1
        present = text.is_valid().to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(present & ~matched):  # ranges, partial dates, other text: rare, row by row
            value = text[int(i)].as_py().strip()
            if "/" in value:
                ymd, code, why = _range_day(value)
            elif _PARTIAL.match(value):
                ymd, code, why = None, IMPRECISE, f"eventDate {value!r} gives no day"
            elif not value:
                continue
            else:
                ymd, code, why = None, BAD, f"eventDate {value!r} is not an ISO 8601 date"
            if ymd is not None:
                out["year"][i], out["month"][i], out["day"][i] = ymd
                dated[i] = True
                rule[i] = 2
            else:
                reason[i], text_problem[i] = why, code
    columns_give = ~dated & np.isfinite(year) & np.isfinite(month) & np.isfinite(day)
    for key, values in (("year", year), ("month", month), ("day", day)):
        out[key][columns_give] = values[columns_give]
    rule[columns_give] = 3
    dated |= columns_give
    named = (("year", year), ("month", month), ("day", day))
    for i in np.flatnonzero(~dated):
        if reason[i] is not None:
            problem[i] = text_problem[i]
            continue
        given = [f"{k} {v[i]:g}" for k, v in named if np.isfinite(v[i])]
        if given:
            problem[i], reason[i] = IMPRECISE, f"only {', '.join(given)}: no single day"
        else:
            problem[i], reason[i] = MISSING, "no eventDate and no year/month/day"
    return out, problem, reason, rule
