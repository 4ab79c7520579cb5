"""Species classification: logits (B, C) over the species seen in training, cross-entropy, top-k accuracy."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from deepearth_jax import metrics as metrics_lib

TRAIN_METRICS = ("loss", "top1")
SPECIES_COLUMNS = ("top1", "top5")
TOP_K = 5
# Species predictions: scored beside the frequency and kNN-in-space baselines on the same rows.
BASELINES = True


def loss(model, inputs, labels, mask):
    """Mean cross-entropy over labelled, unmasked examples, and the sums of loss and top-1 hits."""
    return cross_entropy(model(inputs), labels, mask)


def cross_entropy(logits, labels, mask):
    """`loss` for given logits (B, C): (mean cross-entropy, {"loss_sum", "top1_sum", "count"})."""
    logits = logits.astype(jnp.float32)
    weight = (mask & (labels >= 0)).astype(jnp.float32)
    # One-hot rather than a gather: the gather's gradient is a scatter whose output sharding is ambiguous
    # under explicit mesh axes (jax >= 0.12 refuses it inside the on-device epoch).
    one_hot = jax.nn.one_hot(jnp.maximum(labels, 0), logits.shape[-1], dtype=logits.dtype)
    per_example = -jnp.sum(jax.nn.log_softmax(logits) * one_hot, axis=-1)
    count = jnp.sum(weight)
    loss_sum = jnp.sum(per_example * weight)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32) * weight
    sums = {"loss_sum": loss_sum, "top1_sum": jnp.sum(correct), "count": count}
    return loss_sum / jnp.maximum(count, 1.0), sums


def eval_constants(store) -> dict:
    return {}


def eval_outputs(model, inputs, labels, species, constants) -> dict:
    """`top5` (B, k) int32 classes best first (k = min(5, C)), `top5_prob` (B, k) float32 softmax
    probabilities, `loss` (B,) cross-entropy (0 where the label is -1)."""
    return outputs_of_logits(model(inputs), labels)


def outputs_of_logits(logits, labels) -> dict:
    """`eval_outputs` for given logits (B, C)."""
    logits = logits.astype(jnp.float32)
    k = min(TOP_K, logits.shape[-1])
    log_probs = jax.nn.log_softmax(logits)
    top_log_probs, top = jax.lax.top_k(log_probs, k)
    ce = -jnp.sum(jax.nn.one_hot(labels, logits.shape[-1]) * log_probs, axis=-1)
    return {
        "top5": top.astype(jnp.int32),
        "top5_prob": jnp.exp(top_log_probs),
        "loss": jnp.where(labels >= 0, ce, 0.0),
    }


def summarize(out: dict) -> dict:
    """top1, top5, balanced accuracy, and the loss over examples of species seen in training."""
    labels, top = out["labels"], out["top5"]
    result = {
        "top1": metrics_lib.topk_accuracy(top, labels, k=1),
        "top5": metrics_lib.topk_accuracy(top, labels, k=min(TOP_K, top.shape[1])),
        "balanced_accuracy": metrics_lib.balanced_accuracy(top[:, 0], labels),
    }
    seen = out["loss"][labels >= 0]
    if len(seen):
        result["loss"] = float(np.mean(seen))
    return result


def example_scores(out: dict) -> dict:
    """Per-example 0/1 hits of top1 and top5 (the means `summarize` reports), for bootstrap intervals."""
    labels, top = out["labels"], out["top5"]
    return {
        "top1": metrics_lib.topk_correct(top, labels, k=1),
        "top5": metrics_lib.topk_correct(top, labels, k=min(TOP_K, top.shape[1])),
    }


def prediction_columns(out: dict, species_names: np.ndarray, class_names: np.ndarray) -> dict:
    top = out["top5"]
    return {
        "seen_in_training": out["labels"] >= 0,
        "predicted": class_names[top[:, 0]].tolist(),
        "top5": [list(class_names[t]) for t in top],
        "correct": top[:, 0] == out["labels"],
        "loss": out["loss"],
    }


def species_scores(out: dict, select: np.ndarray, species: int) -> list:
    hits = out["top5"][select] == out["labels"][select][:, None]
    return [round(float(hits[:, 0].mean()), 4), round(float(hits.any(axis=1).mean()), 4)]


def write_figures(out: dict, class_names: list[str], out_dir: Path, step: int) -> None:
    from deepearth_jax import plots  # matplotlib: only the evaluation report needs it

    seen = out["labels"] >= 0
    plots.plot_confusion(
        out["labels"][seen],
        out["top5"][seen, 0],
        class_names,
        out_dir / "confusion.png",
        title=f"confusion matrix, step {step} ({int(seen.sum())} test examples of training species)",
    )
