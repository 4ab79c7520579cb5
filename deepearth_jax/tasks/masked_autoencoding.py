"""Cross-modal masked autoencoding: reconstruction and cross-prediction losses, scored by retrieval.

Retrieval ranks every store species by its language vector against the vision-predicted one, so it can name
species never seen in training.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from deepearth_jax import metrics as metrics_lib
from deepearth_jax.models.mae import LOSS_NAMES

TRAIN_METRICS = ("loss", *LOSS_NAMES)
SPECIES_COLUMNS = ("retrieval_top1", "retrieval_top5")
TOP_K = 5


def loss(model, inputs, labels, mask):
    """Mean total loss over unmasked examples, and the sums of each loss."""
    out = model(inputs)
    weight = mask.astype(jnp.float32)
    count = jnp.sum(weight)
    sums = {f"{name}_sum": jnp.sum(out[name] * weight) for name in LOSS_NAMES}
    sums["loss_sum"] = jnp.sum(out["loss"] * weight)
    sums["count"] = count
    return sums["loss_sum"] / jnp.maximum(count, 1.0), sums


def eval_constants(store) -> dict:
    """`species_language` (num_store_species, L) float32: row s is the language vector of store species s."""
    rows = store.species.column("language_row").to_numpy()
    return {"species_language": np.asarray(store.language[rows], np.float32)}


def eval_outputs(model, inputs, labels, species, constants) -> dict:
    """Each loss (B,), `loss`; `retrieval_top5` (B, 5) store species best first and `retrieval_rank` (B,)
    int32 (0 = the true species ranked first)."""
    out = model(inputs)
    result = {name: out[name] for name in (*LOSS_NAMES, "loss")}
    scores = model.retrieval_scores(out["predicted_language"], constants["species_language"])  # (B, S)
    k = min(TOP_K, scores.shape[-1])
    _, top = jax.lax.top_k(scores, k)
    true_score = jnp.sum(jax.nn.one_hot(species, scores.shape[-1]) * scores, -1, keepdims=True)
    result["retrieval_top5"] = top.astype(jnp.int32)
    result["retrieval_rank"] = jnp.sum(scores > true_score, axis=-1).astype(jnp.int32)
    return result


def summarize(out: dict) -> dict:
    """retrieval_top1, retrieval_top5 and the mean of each loss."""
    species, top = out["species"], out["retrieval_top5"]
    result = {
        "retrieval_top1": metrics_lib.topk_accuracy(top, species, k=1),
        "retrieval_top5": metrics_lib.topk_accuracy(top, species, k=min(TOP_K, top.shape[1])),
    }
    for name in (*LOSS_NAMES, "loss"):
        if len(out[name]):
            result[name] = float(np.mean(out[name]))
    return result


def example_scores(out: dict) -> dict:
    """Per-example 0/1 hits of retrieval_top1 and retrieval_top5, for bootstrap intervals."""
    species, top = out["species"], out["retrieval_top5"]
    return {
        "retrieval_top1": metrics_lib.topk_correct(top, species, k=1),
        "retrieval_top5": metrics_lib.topk_correct(top, species, k=min(TOP_K, top.shape[1])),
    }


def prediction_columns(out: dict, species_names: np.ndarray, class_names: np.ndarray) -> dict:
    top = out["retrieval_top5"]
    return {
        "retrieved_top5": [list(species_names[t]) for t in top],
        "retrieval_correct": top[:, 0] == out["species"],
        "loss": out["loss"],
    }


def species_scores(out: dict, select: np.ndarray, species: int) -> list:
    hits = out["retrieval_top5"][select] == species
    return [round(float(hits[:, 0].mean()), 4), round(float(hits.any(axis=1).mean()), 4)]


def write_figures(out: dict, class_names: list[str], out_dir: Path, step: int) -> None:
    """No figure beyond the common report."""
