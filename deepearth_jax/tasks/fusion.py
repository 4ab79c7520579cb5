"""Vision fused with place and date (`vision_geo`): the learned fusion scored as a species classifier, beside
vision alone, place and date alone and the late fusion rule, with paired intervals of the fusion's gain.

Training: cross-entropy of the fused head plus those of the two single-branch heads (`model.branches`), so
each branch also learns to predict on its own. Evaluation adds, per example, the top-5 of
    vision_only      the vision head alone;
    geo_only         the place-and-date head alone;
    late_fusion      t [a log p(y|image) + (1 - a) log p(y) + w (log p(y|place, date) - log p(y))]: with
                     a = t = 1 the rule of Mac Aodha et al. 2019; a < 1 tempers the image's evidence towards
                     the prior (a = 0, w = 1 ranks by place and date alone); t, a temperature, changes only
                     the confidence. p(y): the smoothed training frequencies; a (VISION_WEIGHTS), w
                     (EXPONENTS) and t (TEMPERATURES) are fitted on the VALIDATION rows (`fit`: highest
                     validation log-likelihood), never on test;
    learned          the learned fusion head itself.
The model's prediction (`top5`, `test/top1`) is the one of the two, learned head or late rule, of higher
validation log-likelihood (`fusion/late_rule` 1.0 when the rule): an uninformative branch (noise images)
makes the learned head memorise training rows, and the rule with a ~ 0 is then what ignores the branch. Per
example, the gains `gain/fused_vs_vision/top1` (prediction hit - vision hit) and
`gain/learned_vs_vision/top1`, whose bootstrap intervals are the paired intervals of the gains
(`metrics.paired_bootstrap_ci`). The evaluator calls `fit` on validation outputs and `apply_fit` on every
subset (tasks/__init__.py); validation itself is scored by the learned head (checkpoint selection).
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
BRANCHES = ("vision_only", "geo_only", "late_fusion", "learned")
GAINS = {
    "fused_vs_vision": ("", "vision_only"),
    "learned_vs_vision": ("learned", "vision_only"),
    "late_fusion_vs_vision": ("late_fusion", "vision_only"),
}
EXPONENTS = np.round(np.linspace(0.0, 2.0, 41), 3)
VISION_WEIGHTS = np.round(np.linspace(0.0, 1.0, 11), 3)
TEMPERATURES = (0.25, 0.5, 0.75, 1.0, 1.5)
VISION_EVIDENCE_SE = 2.0
DEFAULT_FIT = {
    "late_fusion/exponent": 1.0,
    "late_fusion/vision_weight": 1.0,
    "late_fusion/temperature": 1.0,
    "fusion/late_rule": 0.0,
}


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


def late_fusion_log_probs(
    out: dict, prior: np.ndarray, exponent: float, vision_weight: float = 1.0, temperature: float = 1.0
) -> np.ndarray:
    """(N, C) normalised log posterior of t [a log p(y|image) + (1 - a) log p(y) + w (log p(y|place, date) -
    log p(y))], a = `vision_weight`, w = `exponent`, t = `temperature` (a = t = 1: the numpy twin of
    `late_fusion_logits`); t changes only the confidence, not the ranking."""
    vision = out["vision_log_probs"].astype(np.float64)
    z = vision_weight * vision + (1.0 - vision_weight) * prior + exponent * (out["geo_log_probs"] - prior)
    z = temperature * z
    return z - np.logaddexp.reduce(z, axis=-1, keepdims=True)


def fit(out: dict, prior: np.ndarray) -> dict:
    """On `out` (validation outputs): the late rule's `late_fusion/vision_weight` a, `late_fusion/exponent` w
    and `late_fusion/temperature` t of highest mean log-likelihood over VISION_WEIGHTS x EXPONENTS x
    TEMPERATURES (t lets an overconfident branch be followed in ranking without being believed in
    confidence), and `fusion/late_rule` (1.0 when that rule's log-likelihood beats the learned head's, whose
    per-example `loss` is its negative); DEFAULT_FIT (the plain rule, the learned head) when no labelled
    example is there. A rule must earn its complexity: the best rule is kept only when its log-likelihood
    beats the best rule of place and date alone (a = 0, w = 1, any t) by more than VISION_EVIDENCE_SE paired
    standard errors, else that one (a grid of 2,255 rules fitted on a few thousand rows otherwise picks
    spurious image weights for noise images, or a shrink towards training frequencies that a shifted test
    year does not share). Ties: the first in grid order (smallest a, then w, then t)."""
    seen = out["labels"] >= 0
    if not seen.any():
        return dict(DEFAULT_FIT)
    labels = out["labels"][seen]
    vision = out["vision_log_probs"][seen].astype(np.float64)
    geo = out["geo_log_probs"][seen].astype(np.float64)
    best: dict = {}  # "any" / "geo" -> (mean log-likelihood, (a, w, t), per-example log-likelihoods)
    for a in VISION_WEIGHTS:
        base = a * vision + (1.0 - a) * prior
        for w in EXPONENTS:
            z = base + w * (geo - prior)
            z -= z.max(axis=1, keepdims=True)  # t z stays finite in exp for every t
            picked = np.take_along_axis(z, labels[:, None], 1)[:, 0]
            for t in TEMPERATURES:
                per_example = t * picked - np.log(np.exp(t * z).sum(axis=1))
                score = float(np.mean(per_example))
                for side in ("any", "geo") if a == 0 and w == 1 else ("any",):
                    if side not in best or score > best[side][0] + 1e-12:
                        best[side] = (score, (float(a), float(w), float(t)), per_example)
    score, chosen, _ = best["geo"]
    diff = best["any"][2] - best["geo"][2]
    if np.mean(diff) > VISION_EVIDENCE_SE * np.std(diff) / np.sqrt(len(diff)):
        score, chosen, _ = best["any"]
    learned = -float(np.mean(out["loss"][seen]))
    return {
        "late_fusion/exponent": chosen[1],
        "late_fusion/vision_weight": chosen[0],
        "late_fusion/temperature": chosen[2],
        "fusion/late_rule": float(score > learned),
    }


def apply_fit(out: dict, fitted: dict, prior: np.ndarray) -> dict:
    """`out` plus per-example `vision_only_top5`, `geo_only_top5`, `late_fusion_top5`, `learned_top5` (N, k);
    with `fusion/late_rule` the prediction (`top5`, `top5_prob`, `loss`) becomes the late rule's."""
    fitted = {**DEFAULT_FIT, **fitted}  # a fit recorded before the vision weight and the rule existed
    k = min(TOP_K, out["vision_log_probs"].shape[1])
    late = late_fusion_log_probs(
        out,
        prior,
        fitted["late_fusion/exponent"],
        fitted["late_fusion/vision_weight"],
        fitted["late_fusion/temperature"],
    )
    ranked = {"vision_only": out["vision_log_probs"], "geo_only": out["geo_log_probs"], "late_fusion": late}
    extra = {f"{name}_top5": _top(v, k) for name, v in ranked.items()}
    extra["learned_top5"] = out["top5"]
    if fitted["fusion/late_rule"] > 0.5:
        labels = out["labels"]
        loss = -np.take_along_axis(late, np.maximum(labels, 0)[:, None], 1)[:, 0]
        extra["top5"] = extra["late_fusion_top5"]
        extra["top5_prob"] = np.exp(np.take_along_axis(late, extra["top5"], 1)).astype(np.float32)
        extra["loss"] = np.where(labels >= 0, loss, 0.0).astype(np.float32)
    return {**out, **extra}


def _top(log_probs: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-log_probs, axis=1, kind="stable")[:, :k].astype(np.int32)


def summarize(out: dict) -> dict:
    """The classifier's metrics of the prediction, top1/top5 of each branch, and the mean gains; before a fit
    (validation) the classifier's metrics of the learned head, and `selection/top1`, the best top-1 of the
    learned head, vision alone and place and date alone: what `configs/vision_geo.py` selects checkpoints by,
    so a run whose useful branch is one head alone (noise images) is not selected by a memorising one."""
    result = classification.summarize(out)
    result.update({k: float(np.mean(v)) for k, v in _branch_scores(out).items()})
    if "vision_only_top5" not in out and "vision_log_probs" in out:
        labels = out["labels"]
        heads = [out["top5"][:, 0]] + [
            np.argmax(out[k], axis=1) for k in ("vision_log_probs", "geo_log_probs")
        ]
        result["selection/top1"] = float(max(np.mean(h == labels) for h in heads))
    return result


def example_scores(out: dict) -> dict:
    """Per-example hits of the fused head and each branch, and the per-example gains (hit differences)."""
    return {**classification.example_scores(out), **_branch_scores(out)}


def _branch_scores(out: dict) -> dict:
    if "vision_only_top5" not in out:  # outputs before `apply_fit`
        return {}
    labels = out["labels"]
    k = min(TOP_K, out["top5"].shape[1])
    hits = {"": classification.example_scores(out)}  # the prediction's (learned head or late rule)
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
