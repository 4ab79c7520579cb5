"""A multimodal masked autoencoder over vision and language embeddings (Flax NNX).

Per modality an encoder (Linear + LayerNorm + ReLU) maps the input into a shared `shared_dim` space; a
decoder per modality reconstructs its input from the latent, and two predictors map each latent to the other
modality's latent (vision -> language, language -> vision).

Training masks a random `mask_ratio` of the input features of each modality (set to 0). Losses, per example:
- `recon_vision`, `recon_language`: mean squared error in the INPUT space over the masked features (all
  features when nothing is masked, as in evaluation), so the model must infer what it did not see;
- `vision_to_language`, `language_to_vision`: cosine distance (1 - cos) between the predicted latent and the
  other modality's latent of its UNMASKED input, held fixed (stop-gradient) so the target cannot collapse
  toward the prediction; the reconstruction losses keep the latents informative.
- `loss`: the sum of the four.

Space-time token (`space_time=True`): the Earth4D encoding of the observation's place and date
(`batch["location"]` (B, 3), `batch["time"]` (B, 6)) is projected into the shared space (Linear + LayerNorm +
ReLU) and added to each modality's latent where it is decoded or predicted across, so reconstructing the
masked features and predicting the other modality can use where and when the observation was made. The token
is context, never masked and never reconstructed; the latents themselves (and so the cross-modal targets)
stay those of the modality alone. Off, the model is exactly the two-modality autoencoder.

Vision enters pooled: `batch["vision_pooled"]` (B, D), else the mean over (T, H, W) of `batch["vision"]`.
Retrieval names a species from vision alone: the predicted language latent against the latents of ALL species'
language vectors (cosine similarity), so it can name species never seen in training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from deepearth_jax.models.config_error import ModelConfigError

from .classifiers import MLP, pooled_vision, torch_layer_norm, torch_linear
from .earth4d import Earth4D, Earth4DConfig, Earth4DNormalizer
from .geo_prior import as_normalizer

LOSS_NAMES = ("recon_vision", "recon_language", "vision_to_language", "language_to_vision")


class Encoder(nnx.Module):
    """Linear + LayerNorm + ReLU: (B, in) -> (B, shared)."""

    def __init__(self, in_features: int, shared_dim: int, *, rngs: nnx.Rngs):
        self.linear = torch_linear(in_features, shared_dim, rngs=rngs)
        self.norm = torch_layer_norm(shared_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.norm(self.linear(x)))


def _cosine_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """(B, E), (B, E) -> (B,): 1 - cos(a, b)."""
    a = a * jax.lax.rsqrt(jnp.sum(a * a, axis=-1, keepdims=True) + 1e-12)
    b = b * jax.lax.rsqrt(jnp.sum(b * b, axis=-1, keepdims=True) + 1e-12)
    return 1.0 - jnp.sum(a * b, axis=-1)


def _masked_mse(reconstruction: jax.Array, target: jax.Array, masked: jax.Array) -> jax.Array:
    """(B, F) x3 -> (B,): mean squared error over the masked features, or over all when none is masked."""
    weight = jnp.where(jnp.any(masked, axis=-1, keepdims=True), masked, True).astype(jnp.float32)
    return jnp.sum(weight * (reconstruction - target) ** 2, axis=-1) / jnp.sum(weight, axis=-1)


class SpaceTimeToken(nnx.Module):
    """Place and date -> Earth4D -> Linear + LayerNorm + ReLU: (B, shared), the MAE's space-time token."""

    def __init__(
        self,
        normalizer: Earth4DNormalizer | Mapping[str, float],
        encoder: Earth4DConfig | Mapping[str, Any] | None,
        shared_dim: int,
        *,
        rngs: nnx.Rngs,
    ):
        self.normalizer = as_normalizer(normalizer)
        self.encoder = Earth4D(encoder, rngs=rngs)
        self.projection = Encoder(self.encoder.output_dim, shared_dim, rngs=rngs)

    def __call__(self, location: jax.Array, time: jax.Array) -> jax.Array:
        return self.projection(self.encoder(self.normalizer(location, time)))


class MultimodalMaskedAutoencoder(nnx.Module):
    """Vision (B, D) and language (B, L) -> a dict of latents, reconstructions, predictions and losses.

    `model(batch)` returns per-example losses (B,) under the names of `LOSS_NAMES` and `loss`, and the
    latents `vision_latent`, `language_latent`, `predicted_language` (B, shared_dim). `model.eval()` turns
    masking off.
    """

    def __init__(
        self,
        vision_dim: int,
        language_dim: int,
        *,
        shared_dim: int = 512,
        hidden: Sequence[int] = (512,),
        mask_ratio: float = 0.5,
        dropout: float = 0.0,
        space_time: SpaceTimeToken | None = None,
        rngs: nnx.Rngs,
    ):
        """`space_time`: the space-time token (built by the caller, after the modules below, so that a model
        without it draws exactly the parameters it always did), or None."""
        if not 0.0 <= mask_ratio < 1.0:
            raise ModelConfigError(f"mae: mask_ratio must be in [0, 1), got {mask_ratio}")
        self.mask_ratio = mask_ratio
        self.deterministic = False  # set by model.train() / model.eval(): no masking when True
        self.vision_encoder = Encoder(vision_dim, shared_dim, rngs=rngs)
        self.language_encoder = Encoder(language_dim, shared_dim, rngs=rngs)
        self.vision_decoder = MLP(shared_dim, hidden, vision_dim, dropout, rngs=rngs)
        self.language_decoder = MLP(shared_dim, hidden, language_dim, dropout, rngs=rngs)
        self.vision_to_language = MLP(shared_dim, hidden, shared_dim, dropout, rngs=rngs)
        self.language_to_vision = MLP(shared_dim, hidden, shared_dim, dropout, rngs=rngs)
        self.mask_rngs = rngs["mask"].fork()
        self.space_time = nnx.data(space_time)  # a submodule or None (no leaves: the tree is unchanged)

    def _mask(self, x: jax.Array) -> jax.Array:
        """(B, F) bool, True = masked: a Bernoulli(mask_ratio) draw per feature in training, none in eval."""
        if self.deterministic or self.mask_ratio == 0.0:
            return jnp.zeros(x.shape, bool)
        return jax.random.bernoulli(self.mask_rngs(), self.mask_ratio, x.shape)

    def encode_language(self, language: jax.Array) -> jax.Array:
        """(S, L) float32 language vectors -> (S, shared_dim) latents (unmasked)."""
        return self.language_encoder(jnp.asarray(language, jnp.float32))

    def __call__(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        vision = pooled_vision(batch)
        language = jnp.asarray(batch["language"], jnp.float32)
        vision_masked, language_masked = self._mask(vision), self._mask(language)
        vision_latent = self.vision_encoder(jnp.where(vision_masked, 0.0, vision))
        language_latent = self.language_encoder(jnp.where(language_masked, 0.0, language))
        if self.deterministic or self.mask_ratio == 0.0:
            vision_target, language_target = vision_latent, language_latent
        else:
            vision_target, language_target = self.vision_encoder(vision), self.language_encoder(language)
        # With the space-time token, decoders and cross predictors read each latent in its place and date.
        vision_in, language_in = vision_latent, language_latent
        if self.space_time is not None:
            context = self.space_time(batch["location"], batch["time"])
            vision_in, language_in = vision_latent + context, language_latent + context
        predicted_language = self.vision_to_language(vision_in)
        predicted_vision = self.language_to_vision(language_in)
        out = {
            "recon_vision": _masked_mse(self.vision_decoder(vision_in), vision, vision_masked),
            "recon_language": _masked_mse(self.language_decoder(language_in), language, language_masked),
            "vision_to_language": _cosine_distance(
                predicted_language, jax.lax.stop_gradient(language_target)
            ),
            "language_to_vision": _cosine_distance(predicted_vision, jax.lax.stop_gradient(vision_target)),
            "vision_latent": vision_latent,
            "language_latent": language_latent,
            "predicted_language": predicted_language,
        }
        out["loss"] = sum(out[name] for name in LOSS_NAMES)
        return out

    def retrieval_scores(self, predicted_language: jax.Array, species_language: jax.Array) -> jax.Array:
        """(B, E) predicted language latents, (S, L) all species' language vectors -> (B, S) cosine."""
        species_latent = self.encode_language(species_language)
        a = predicted_language * jax.lax.rsqrt(jnp.sum(predicted_language**2, -1, keepdims=True) + 1e-12)
        b = species_latent * jax.lax.rsqrt(jnp.sum(species_latent**2, -1, keepdims=True) + 1e-12)
        return a @ b.T
