"""Vision fused with place and date in one model, and the standard late fusion rule (Flax NNX / JAX).

`VisionGeoClassifier(batch)`: pooled vision features (`batch["vision_pooled"]` (B, D) float32, or the mean
over (T, H, W) of `batch["vision"]` (B, T, H, W, D)) and the Earth4D trunk of `batch["location"]` (B, 3),
`batch["time"]` (B, 6) -> logits (B, C) float32. Learned fusion: each branch is projected to `hidden`, a
per-feature gate sigmoid(W [v, g] + b) decides how much of the geo features to add to the vision ones,
h = v + gate * g, then an MLP head. The gate's bias starts at -2 (gate ~0.12): the model starts close to
vision alone and learns how far to trust place and date. Two linear heads read each branch alone
(`branches`): vision alone and place-and-date alone, trained beside the fused head (task `fusion`), so one run
scores the fusion against its own single-modality predictions on the same rows, and the late fusion rule
below combines them.

`late_fusion_logits`: log p(y | image) + exponent * (log p(y | place, date) - log p(y)), the rule of Mac Aodha
et al. 2019 (independence of image and place given the species), with an exponent to be fitted on data that
is not the test set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from deepearth_jax.models.config_error import ModelConfigError

from .classifiers import MLP, pooled_vision, torch_layer_norm, torch_linear
from .earth4d import Earth4DConfig, Earth4DNormalizer
from .geo_prior import GeoTrunk, as_normalizer

GATE_BIAS_INIT = -2.0


class VisionGeoClassifier(nnx.Module):
    """Species logits (B, C) from pooled vision (B, D) and place and date, fused by a learned gate.

    vision_dim: D; normalizer, encoder, geo_hidden, geo_blocks: the geo trunk (as `GeoPrior`); hidden: the
    fused width; head: the hidden widths of the MLP head after fusion; dropout: in the trunk and head.
    """

    def __init__(
        self,
        vision_dim: int,
        num_classes: int,
        *,
        normalizer: Earth4DNormalizer | Mapping[str, float],
        encoder: Earth4DConfig | Mapping[str, Any] | None = None,
        hidden: int = 256,
        geo_blocks: int = 2,
        head: Sequence[int] = (256,),
        dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        if min(vision_dim, num_classes, hidden) < 1:
            raise ModelConfigError(
                f"VisionGeoClassifier needs positive widths, got {vision_dim}, {num_classes}, {hidden}"
            )
        self.normalizer = as_normalizer(normalizer)
        self.vision_norm = torch_layer_norm(vision_dim, rngs=rngs)
        self.vision = torch_linear(vision_dim, hidden, rngs=rngs)
        self.geo = GeoTrunk(encoder, hidden, geo_blocks, dropout, rngs=rngs)
        self.gate = torch_linear(2 * hidden, hidden, rngs=rngs)
        self.gate.bias[...] = jnp.full((hidden,), GATE_BIAS_INIT, jnp.float32)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.head = MLP(hidden, tuple(head), num_classes, dropout, rngs=rngs)
        self.vision_head = torch_linear(hidden, num_classes, rngs=rngs)
        self.geo_head = torch_linear(hidden, num_classes, rngs=rngs)

    def _branch_features(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(vision features, geo features, gate), each (B, hidden)."""
        v = jax.nn.relu(self.vision(self.vision_norm(pooled_vision(batch))))
        g = self.geo(self.normalizer(batch["location"], batch["time"]))
        gate = jax.nn.sigmoid(self.gate(jnp.concatenate([v, g], axis=-1)))
        return v, g, gate

    def fused(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """(fused features (B, hidden), gate (B, hidden) in (0, 1))."""
        v, g, gate = self._branch_features(batch)
        return v + gate * g, gate

    def __call__(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        return self.branches(batch)[0]

    def branches(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Logits (B, C) of the fused head, of vision alone and of place and date alone."""
        v, g, gate = self._branch_features(batch)
        fused = self.head(self.dropout(v + gate * g))
        return fused, self.vision_head(self.dropout(v)), self.geo_head(self.dropout(g))


def late_fusion_logits(
    vision_logits: jax.Array, geo_logits: jax.Array, log_prior: jax.Array, exponent: float | jax.Array = 1.0
) -> jax.Array:
    """log p(y|image) + exponent * (log p(y|place, date) - log p(y)), (B, C): softmax gives the posterior.

    vision_logits, geo_logits: (B, C) softmax logits; log_prior: (C,) log training frequencies, smoothed so
    that none is -inf.
    """
    vision = jax.nn.log_softmax(vision_logits.astype(jnp.float32), axis=-1)
    geo = jax.nn.log_softmax(geo_logits.astype(jnp.float32), axis=-1)
    return vision + exponent * (geo - log_prior)
