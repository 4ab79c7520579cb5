"""Bad source rows: their kinds, the record kept for each, and the one-line summary users see."""

from __future__ import annotations

from deepearth_jax.data.store import StoreError

# Bad-row kinds and what they mean (the manifest's `skipped` entries and the error message use these names).
BAD_KINDS = {
    "bad_id": "gbif_id missing or negative",
    "duplicate_id": "gbif_id repeated in observations.parquet (the first row is kept)",
    "missing_taxon": "no taxon_name, or a blank one",
    "missing_coordinates": "latitude/longitude missing, NaN or out of range",
    "missing_date": "year/month/day missing",
    "bad_date": "year/month/day not a calendar date (31 February, month 13, fractions, implausible year)",
    "imprecise_date": "an occurrence's eventDate gives no single day (a year or month only, a long range)",
    "bad_time": "hour outside 0-23, minute/second outside 0-59, or fractional",
    "absent": "an occurrence row with occurrenceStatus ABSENT (an absence, not an observation)",
    "missing_language": "no language embedding",
    "language_shape": "language embedding of the wrong length",
    "language_non_finite": "NaN or Inf in the language embedding",
    "language_conflict": "language embedding differs from the species' vector",
    "missing_embedding": "listed in the vision index but no embedding row found",
    "shape": "vision embedding of the wrong length or shape",
    "non_finite": "NaN or Inf in the vision embedding",
    "float16_overflow": "a vision value beyond float16's range (convert with --dtype float32)",
}


class ConvertError(StoreError):
    """Bad source data: the message is one line (per-kind counts and the first ids); `bad` lists every row."""

    def __init__(self, message: str, bad: list[dict] | None = None):
        super().__init__(message)
        self.bad = list(bad or [])


def bad_row(gbif_id: int | None, kind: str, reason: str, dropped: str) -> dict:
    """The record of one bad source row; `dropped` is "observation" or "vision" (what was left out)."""
    oid = f"{gbif_id}_1" if gbif_id is not None and gbif_id >= 0 else None
    return {"observation_id": oid, "gbif_id": gbif_id, "kind": kind, "reason": reason, "dropped": dropped}


def summarize_bad(bad: list[dict], first: int = 3) -> str:
    """One line: `N bad source row(s): kind count (first: id, id), ...`."""
    by_kind: dict[str, list[dict]] = {}
    for entry in bad:
        by_kind.setdefault(entry["kind"], []).append(entry)
    parts = []
    for kind in sorted(by_kind, key=lambda k: (-len(by_kind[k]), k)):
        entries = by_kind[kind]
        shown = ", ".join(e["observation_id"] or "(no id)" for e in entries[:first])
        more = ", ..." if len(entries) > first else ""
        parts.append(f"{kind} {len(entries)} (first: {shown}{more}; {entries[0]['reason']})")
    return f"{len(bad)} bad source row(s): " + "; ".join(parts)
