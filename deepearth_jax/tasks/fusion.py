"""Vision fused with place and date (`vision_geo`): the learned fusion scored as a species classifier, beside
vision alone, place and date alone and the late fusion rule, with paired intervals of the fusion's gain.

Training: cross-entropy of the fused head plus those of the two single-branch heads (`model.branches`), so
each branch also learns to predict on its own. Evaluation adds, per example, the top-5 of
    vision_only      the vision head alone;
    geo_only         the place-and-date head alone;
    late_fusion      log p(y|image) + w (log p(y|place, date) - log p(y)) (Mac Aodha et al. 2019), with
                     p(y) the smoothed training frequencies and the exponent w fitted on the VALIDATION rows
                     (`fit`: the w in EXPONENTS of highest validation log-likelihood), never on test;
and the per-example gains `gain/fused_vs_vision/top1` (fused hit - vision hit), whose bootstrap interval is
the paired interval of the gain (`metrics.paired_bootstrap_ci`). The evaluator calls `fit` on validation
outputs and `apply_fit` on every subset (tasks/__init__.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from deepearth_jax import metrics as metrics_lib

from . import classification
from .classification import (  # noqa: F401  (the classifier's report: same columns, same figures)
    SPECIES_COLUMNS,
    TOP_K,
    eval_constants,
    prediction_columns,
    species_scores,
    write_figures,
)

TRAIN_METRICS = classification.TRAIN_METRICS
BASELINES = True
BRANCHES = ("vision_only", "geo_only", "late_fusion")
GAINS = {"fused_vs_vision": ("", "vision_only"), "late_fusion_vs_vision": ("late_fusion", "vision_only")}
EXPONENTS = np.round(np.linspace(0.0, 2.0, 41), 3)


def loss(model, inputs, labels, mask):
    """Cross-entropy of the fused head plus those of the vision-only and geo-only heads; metrics of the
    fused head."""
    fused, vision, geo = model.branches(inputs)
    mean, sums = classification.cross_entropy(fused, labels, mask)
    vision_mean, _ = classification.cross_entropy(vision, labels, mask)
    geo_mean, _ = classification.cross_entropy(geo, labels, mask)
    return mean + vision_mean + geo_mean, sums


def eval_outputs(model, inputs, labels, species, constants) -> dict:
    """The classifier's outputs of the fused head, plus `vision_log_probs`, `geo_log_probs` (B, C)."""
    fused, vision, geo = model.branches(inputs)
    out = classification.outputs_of_logits(fused, labels)
    out["vision_log_probs"] = jax.nn.log_softmax(vision.astype(jnp.float32), axis=-1)
    out["geo_log_probs"] = jax.nn.log_softmax(geo.astype(jnp.float32), axis=-1)
    return out


def log_prior(train_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) log training frequencies with add-one smoothing (no class at -inf)."""
    counts = np.bincount(train_labels[train_labels >= 0], minlength=num_classes).astype(np.float64) + 1.0
    return np.log(counts / counts.sum())


def late_fusion_log_probs(out: dict, prior: np.ndarray, exponent: float) -> np.ndarray:
    """(N, C) normalised log posterior of the late fusion rule (numpy twin of `late_fusion_logits`)."""
    z = out["vision_log_probs"].astype(np.float64) + exponent * (out["geo_log_probs"] - prior)
    return z - np.logaddexp.reduce(z, axis=-1, keepdims=True)


def fit(out: dict, prior: np.ndarray) -> dict:
    """`{"late_fusion/exponent": w}`: the exponent of highest mean log-likelihood on `out` (validation
    outputs) over EXPONENTS; 1 (the plain rule) when no labelled example is there."""
    seen = out["labels"] >= 0
    if not seen.any():
        return {"late_fusion/exponent": 1.0}
    part = {k: out[k][seen] for k in ("vision_log_probs", "geo_log_probs")}
    labels = out["labels"][seen]
    scores = [
        np.mean(np.take_along_axis(late_fusion_log_probs(part, prior, w), labels[:, None], 1))
        for w in EXPONENTS
    ]
    return {"late_fusion/exponent": float(EXPONENTS[int(np.argmax(scores))])}


def apply_fit(out: dict, fitted: dict, prior: np.ndarray) -> dict:
    """`out` plus per-example `vision_only_top5`, `geo_only_top5`, `late_fusion_top5` (N, k)."""
    k = min(TOP_K, out["vision_log_probs"].shape[1])
    late = late_fusion_log_probs(out, prior, fitted["late_fusion/exponent"])
    ranked = {"vision_only": out["vision_log_probs"], "geo_only": out["geo_log_probs"], "late_fusion": late}
    extra = {f"{name}_top5": _top(v, k) for name, v in ranked.items()}
    return {**out, **extra}


def _top(log_probs: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-log_probs, axis=1, kind="stable")[:, :k].astype(np.int32)


def summarize(out: dict) -> dict:
    """The classifier's metrics of the fused head, top1/top5 of each branch, and the mean gains."""
    result = classification.summarize(out)
    result.update({k: float(np.mean(v)) for k, v in _branch_scores(out).items()})
    return result


def example_scores(out: dict) -> dict:
    """Per-example hits of the fused head and each branch, and the per-example gains (hit differences)."""
    return {**classification.example_scores(out), **_branch_scores(out)}


def _branch_scores(out: dict) -> dict:
    if "vision_only_top5" not in out:  # outputs before `apply_fit`
        return {}
    labels = out["labels"]
    k = min(TOP_K, out["top5"].shape[1])
    hits = {"": classification.example_scores(out)}  # the fused head's
    scores = {}
    for name in BRANCHES:
        top = out[f"{name}_top5"]
        hits[name] = {"top1": metrics_lib.topk_correct(top, labels, k=1)}
        hits[name]["top5"] = metrics_lib.topk_correct(top, labels, k=k)
        scores.update({f"{name}/{m}": v for m, v in hits[name].items()})
    for gain, (a, b) in GAINS.items():
        for m in ("top1", "top5"):
            scores[f"gain/{gain}/{m}"] = hits[a][m].astype(np.float64) - hits[b][m].astype(np.float64)
    return scores
