"""A species prior from place and date: Earth4D encoding -> residual MLP -> species logits (Flax NNX).

`GeoPrior(batch)` reads `batch["location"]` (B, 3) float32 (latitude, longitude degrees, elevation m, NaN
when unknown) and `batch["time"]` (B, 6) float32 (year, month, day, hour, minute, second) and returns logits
(B, C) float32. `GeoPrior.logits_at(coords)` takes Earth4D coordinates (B, 5) in [0, 1] directly (background
points, range maps). The trunk follows SINR (Cole et al. 2023): Linear -> ReLU, then residual blocks
x + ReLU(W2 dropout(ReLU(W1 x))), then a linear head. With `memory` (Earth4D sizes of a fine encoder), a
`SiteMemory` adds its logits: a linear read-out, without bias, of that fine encoding (a learned lookup of the
places seen in training, ~0 where none was).

Two losses, pure functions of logits:
- `softmax_cross_entropy`: the observed species against all others at each observation;
- `assume_negative_full_loss`: SINR's "assume negative full" with per-species sigmoids: at an observation the
  observed species is positive (weight `positive_weight`, ~C) and every other negative; at uniformly random
  background points in the region (`random_background_coords`) every species is negative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from deepearth_jax.models.config_error import ModelConfigError

from .classifiers import torch_linear, torch_uniform
from .earth4d import Earth4D, Earth4DConfig, Earth4DNormalizer, Z


class ResidualBlock(nnx.Module):
    """x + ReLU(W2 dropout(ReLU(W1 x))): SINR's residual layer, width preserved."""

    def __init__(self, width: int, dropout: float, *, rngs: nnx.Rngs):
        self.first = torch_linear(width, width, rngs=rngs)
        self.second = torch_linear(width, width, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + jax.nn.relu(self.second(self.dropout(jax.nn.relu(self.first(x)))))


class GeoTrunk(nnx.Module):
    """Earth4D coords (B, 5) -> encoding -> Linear -> ReLU -> residual blocks -> features (B, hidden)."""

    def __init__(
        self,
        encoder: Earth4DConfig | Mapping[str, Any] | None,
        hidden: int,
        blocks: int,
        dropout: float,
        *,
        rngs: nnx.Rngs,
    ):
        self.encoder = Earth4D(encoder, rngs=rngs)
        self.input = torch_linear(self.encoder.output_dim, hidden, rngs=rngs)
        self.blocks = nnx.List([ResidualBlock(hidden, dropout, rngs=rngs) for _ in range(blocks)])

    def __call__(self, coords: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.input(self.encoder(coords)))
        for block in self.blocks:
            x = block(x)
        return x


class RowDropout(nnx.Module):
    """In training, zeroes whole rows of `(B, ...)` with probability `rate` (no rescaling: the kept rows
    carry their full value, as every row does in eval mode). Identity in eval mode."""

    def __init__(self, rate: float, *, rngs: nnx.Rngs):
        if not 0.0 <= rate < 1.0:
            raise ModelConfigError(f"row dropout needs 0 <= rate < 1, got {rate}")
        self.rate = rate
        self.deterministic = False
        self.rngs = rngs["dropout"].fork()

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic or self.rate == 0.0:
            return x
        keep = ~jax.random.bernoulli(self.rngs(), self.rate, (x.shape[0],))
        return jnp.where(keep.reshape(-1, *([1] * (x.ndim - 1))), x, 0.0)


class SiteMemory(nnx.Module):
    """Species logits `(B, C)` read linearly (no bias) from a fine Earth4D encoding: a learned lookup of the
    places seen in training, added to the smooth prior's logits.

    Observers revisit the same spots, so a species seen at a site is likely there again; a smooth prior cannot
    say so at ~100 m. Cells never trained hold their initial ~1e-4 features, so at new places the memory adds
    ~0 and the smooth prior speaks alone. `dropout` zeroes the memory on that share of training rows, so the
    smooth prior also learns to predict without it (what held-out places need).
    """

    def __init__(self, encoder: Earth4DConfig | Mapping[str, Any], num_classes: int, dropout: float, *, rngs):
        self.encoder = Earth4D(encoder, rngs=rngs)
        width = self.encoder.output_dim
        self.readout = nnx.Linear(
            width, num_classes, use_bias=False, kernel_init=torch_uniform(1.0 / math.sqrt(width)), rngs=rngs
        )
        self.dropout = RowDropout(dropout, rngs=rngs)

    def __call__(self, coords: jax.Array) -> jax.Array:
        return self.dropout(self.readout(self.encoder(coords)))


def as_normalizer(normalizer: Earth4DNormalizer | Mapping[str, float]) -> Earth4DNormalizer:
    """An `Earth4DNormalizer` from itself or its `to_dict()` form (as a config or a JSON file holds it)."""
    if isinstance(normalizer, Earth4DNormalizer):
        return normalizer
    return Earth4DNormalizer.from_dict(dict(normalizer))


class GeoPrior(nnx.Module):
    """Species logits (B, C) from `batch["location"]` (B, 3) and `batch["time"]` (B, 6), float32.

    normalizer: the region box (`Earth4DNormalizer.fit` on the training rows, or its dict); encoder: the
    Earth4D sizes; hidden, blocks, dropout: the residual MLP; memory: the site memory's Earth4D sizes (None:
    no memory), memory_dropout: the share of training rows on which the memory is silenced.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        normalizer: Earth4DNormalizer | Mapping[str, float],
        encoder: Earth4DConfig | Mapping[str, Any] | None = None,
        hidden: int = 256,
        blocks: int = 2,
        dropout: float = 0.0,
        memory: Earth4DConfig | Mapping[str, Any] | None = None,
        memory_dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        if num_classes < 1 or hidden < 1 or blocks < 0:
            raise ModelConfigError(
                f"GeoPrior needs num_classes, hidden >= 1 and blocks >= 0, got {num_classes}, "
                f"{hidden}, {blocks}"
            )
        self.normalizer = as_normalizer(normalizer)
        self.trunk = GeoTrunk(encoder, hidden, blocks, dropout, rngs=rngs)
        self.head = torch_linear(hidden, num_classes, rngs=rngs)
        self.memory = None if memory is None else SiteMemory(memory, num_classes, memory_dropout, rngs=rngs)

    def coords(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """Earth4D coordinates (B, 5) of the batch's place and date."""
        return self.normalizer(batch["location"], batch["time"])

    def logits_at(self, coords: jax.Array) -> jax.Array:
        """Logits (B, C) at Earth4D coordinates (B, 5) in [0, 1]."""
        logits = self.head(self.trunk(coords))
        return logits if self.memory is None else logits + self.memory(coords)

    def __call__(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        return self.logits_at(self.coords(batch))


def random_background_coords(key: jax.Array, n: int) -> jax.Array:
    """(n, 5) float32 coordinates uniform over the region's box, its time span and the year (z = 0.5, the
    value used when elevation is absent)."""
    return jax.random.uniform(key, (n, 5), jnp.float32).at[:, Z].set(0.5)


def _masked_mean(per_example: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return jnp.mean(per_example)
    weight = jnp.asarray(mask, per_example.dtype)
    return jnp.sum(per_example * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean over valid rows of -log softmax(logits)[label]; logits (B, C), labels (B,) int, mask (B,) bool."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return _masked_mean(-picked, mask)


def assume_negative_full_loss(
    logits: jax.Array,
    labels: jax.Array,
    background_logits: jax.Array,
    positive_weight: float,
    mask: jax.Array | None = None,
) -> jax.Array:
    """SINR's "assume negative full" loss (Cole et al. 2023), per-species sigmoids.

    mean over valid rows of mean over species of: positive_weight * -log sigmoid(z) for the observed species,
    -log(1 - sigmoid(z)) for every other; plus the same mean of -log(1 - sigmoid(z)) over the background
    logits (B', C) (every species absent). log sigmoid via softplus, stable for any logit.
    """
    logits = logits.astype(jnp.float32)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)
    per_species = jnp.where(onehot, positive_weight * jax.nn.softplus(-logits), jax.nn.softplus(logits))
    observed = _masked_mean(jnp.mean(per_species, axis=-1), mask)
    background = jnp.mean(jax.nn.softplus(background_logits.astype(jnp.float32)))
    return observed + background
