"""What the end of a run and an evaluation must say out loud, from the metrics they already computed.

Two facts a headline of top-1 numbers can hide:

- a model that does no better than the frequency baseline (always the training set's most frequent
  species) on validation has learned nothing a count could not tell; a geo prior on a small store does that
  silently (one species everywhere). `versus_frequency` compares them; the trainer writes the comparison into
  summary.json (`baseline_check`) and logs a WARNING when the model does not beat the baseline.
- test rows whose species never occur in training cannot be named by any classifier; when they are many, the
  test score is bounded far below 1. `unseen_line` counts them (rows and species) for the console.
"""

from __future__ import annotations

BASELINE = "baseline_frequency"


def versus_frequency(row: dict, subset: str = "validation", metric: str = "top1") -> dict | None:
    """`{"metric", "model", "baseline_frequency", "beats_frequency_baseline"}` for `<subset>/<metric>` of a
    metrics dict, or None when the task has no frequency baseline (masked autoencoding) or no such value."""
    model = row.get(f"{subset}/{metric}")
    base = row.get(f"{subset}/{BASELINE}/{metric}")
    if not isinstance(model, int | float) or not isinstance(base, int | float):
        return None
    return {
        "metric": f"{subset}/{metric}",
        "model": float(model),
        BASELINE: float(base),
        "beats_frequency_baseline": bool(model > base),
    }


def baseline_warning(check: dict | None, what: str = "the selected checkpoint") -> str | None:
    """The one-line warning when `check` (versus_frequency) says the model does not beat the baseline."""
    if check is None or check["beats_frequency_baseline"]:
        return None
    return (
        f"{what} does no better than the frequency baseline on {check['metric'].split('/')[0]} "
        f"({check['metric']}={check['model']:.4f} <= {check[BASELINE]:.4f} for always predicting the most "
        "frequent training species): it has learned nothing beyond species counts; train longer, give it "
        "more training rows, or use another model"
    )


def unseen_line(row: dict, subset: str = "test") -> str | None:
    """`test: 30 of 111 rows (27.0%) are of 5 species never seen in training ...`, or None without counts."""
    count, total = row.get(f"{subset}/unseen_species/count"), row.get(f"{subset}/count")
    if count is None or not total:
        return None
    species = int(row.get(f"{subset}/unseen_species/species/count", 0))
    if not count:
        return f"{subset}: every one of the {int(total)} rows is of a species seen in training"
    return (
        f"{subset}: {int(count)} of {int(total)} rows ({100 * count / total:.1f}%) are of {species} "
        f"species never seen in training (no classifier can name them; {subset}/seen_species/... scores "
        "the rest)"
    )
