"""Species presence from place and date with SINR's "assume negative full" loss (Cole et al. 2023).

Scored like `classification` (top-k of the logits, which rank species as their sigmoids do); only the loss
differs: per-species sigmoids, the observed species positive (weighted by the number of classes C, as SINR's
lambda), every other species negative, and at as many uniformly random background points in the region as the
batch has rows, every species negative. The background points come from a key folded from the batch's own
coordinates, so a step stays a pure function of (state, batch) and resumes reproduce it. Needs a model with
`logits_at(coords)` and `coords(batch)` (`geo_prior`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from deepearth_jax.errors import ConfigError
from deepearth_jax.models.geo_prior import assume_negative_full_loss, random_background_coords
from deepearth_jax.tasks.classification import (  # noqa: F401  (the task interface, scored as classification)
    BASELINES,
    SPECIES_COLUMNS,
    eval_constants,
    eval_outputs,
    example_scores,
    prediction_columns,
    species_scores,
    summarize,
    write_figures,
)

TRAIN_METRICS = ("loss", "top1")


def background_key(coords: jax.Array) -> jax.Array:
    """A PRNG key from the bits of a batch's coordinates (B, 5): differs between batches, no state needed."""
    bits = jax.lax.bitcast_convert_type(jnp.nan_to_num(coords.astype(jnp.float32)), jnp.uint32)
    return jax.random.fold_in(jax.random.key(0), jnp.sum(bits, dtype=jnp.uint32))


def loss(model, inputs, labels, mask):
    """The assume-negative-full loss over labelled, unmasked rows and the sums of loss and top-1 hits."""
    if not hasattr(model, "logits_at"):
        raise ConfigError("task geo_presence needs a model with logits_at (model.name=geo_prior)")
    coords = model.coords(inputs)
    logits = model.logits_at(coords).astype(jnp.float32)
    weight = mask & (labels >= 0)
    background = model.logits_at(random_background_coords(background_key(coords), coords.shape[0]))
    num_classes = logits.shape[-1]
    value = assume_negative_full_loss(
        logits, jnp.maximum(labels, 0), background, float(num_classes), mask=weight
    )
    count = jnp.sum(weight.astype(jnp.float32))
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32) * weight
    sums = {"loss_sum": value * count, "top1_sum": jnp.sum(correct), "count": count}
    return value, sums
