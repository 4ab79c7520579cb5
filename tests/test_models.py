"""Models: shapes, PyTorch-style initialisation, pooling, dropout modes, the attentive probe's exact shortcut,
the MAE's masking and losses, registry errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import test_seed
from flax import nnx

from deepearth_jax.models import create_model
from deepearth_jax.models.classifiers import AttentiveProbeClassifier
from deepearth_jax.models.mae import LOSS_NAMES

DIMS = {"language": 24, "vision": 8}


@nnx.jit
def forward(model, inputs):
    """One compiled call instead of op-by-op dispatch (much faster on a busy CPU)."""
    return model(inputs)


def model_config(name: str, **fields) -> ml_collections.ConfigDict:
    base = {"name": name, "hidden": (16, 12), "dropout": 0.3}
    base.update(fields)
    return ml_collections.ConfigDict(base)


def batch(rng: np.random.Generator, b: int = 5) -> dict[str, np.ndarray]:
    return {
        "language": rng.standard_normal((b, DIMS["language"])).astype(np.float32),
        "vision": rng.standard_normal((b, 2, 3, 3, DIMS["vision"])).astype(np.float16),
    }


@pytest.mark.parametrize("name", ["language_classifier", "vision_classifier", "attentive_probe"])
def test_classifiers_return_logits(name):
    rng = np.random.default_rng(1)
    model = create_model(
        model_config(name, num_heads=2),
        input_dims=DIMS,
        num_classes=7,
        rngs=nnx.Rngs(int(rng.integers(1000))),
    )
    model.eval()
    logits = forward(model, batch(rng))
    assert logits.shape == (5, 7) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


def test_linear_init_matches_pytorch_default():
    seed = test_seed()
    model = create_model(
        model_config("language_classifier", hidden=(256, 128)),
        input_dims={"language": 512},
        num_classes=64,
        rngs=nnx.Rngs(seed),
    )
    layers = [*model.mlp.hidden, model.mlp.head]
    assert [layer.kernel.shape for layer in layers] == [(512, 256), (256, 128), (128, 64)]
    for layer in layers:
        bound = 1.0 / math.sqrt(layer.kernel.shape[0])
        for values in (np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])):
            assert np.abs(values).max() <= bound
            assert np.abs(values).max() > 0.9 * bound  # spread over the whole interval, not a narrower one
        # U(-b, b) has standard deviation b / sqrt(3).
        np.testing.assert_allclose(np.asarray(layer.kernel[...]).std(), bound / math.sqrt(3), rtol=0.05)


def test_vision_tokens_and_pooled_give_the_same_logits():
    rng = np.random.default_rng(2)
    model = create_model(model_config("vision_classifier"), input_dims=DIMS, num_classes=4, rngs=nnx.Rngs(3))
    model.eval()
    tokens = batch(rng)["vision"]
    pooled = tokens.astype(np.float32).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(
        forward(model, {"vision": tokens}), forward(model, {"vision_pooled": pooled}), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="neither 'vision' nor 'vision_pooled'"):
        model({"language": pooled})


def test_dropout_active_in_train_mode_only():
    rng = np.random.default_rng(4)
    model = create_model(
        model_config("language_classifier", dropout=0.5), input_dims=DIMS, num_classes=3, rngs=nnx.Rngs(0)
    )
    x = batch(rng)
    model.train()
    a, b = forward(model, x), forward(model, x)
    assert not np.allclose(a, b)  # a fresh mask per call
    model.eval()
    np.testing.assert_array_equal(forward(model, x), forward(model, x))


def test_attentive_probe_equals_plain_multihead_attention():
    """The key/value shortcut must equal projecting every token, as nn.MultiheadAttention does."""
    rng = np.random.default_rng(5)
    heads, d = 4, 16
    model = AttentiveProbeClassifier(d, 6, hidden=(), num_heads=heads, num_queries=3, rngs=nnx.Rngs(7))
    tokens = rng.standard_normal((2, 2, 3, 4, d)).astype(np.float32)
    got = forward(model, {"vision": tokens})
    np.testing.assert_allclose(
        got, nnx.jit(plain_attention, static_argnums=2)(model, tokens, heads), rtol=1e-5, atol=1e-5
    )


def plain_attention(model: AttentiveProbeClassifier, tokens: jax.Array, heads: int) -> jax.Array:
    d = tokens.shape[-1]
    x = model.token_norm(jnp.asarray(tokens.reshape(2, -1, d)))
    q = model.query_proj(model.queries[...])  # (Q, D)
    k, v = model.key_proj(x), model.value_proj(x)  # (B, N, D)
    split = lambda t: t.reshape(*t.shape[:-1], heads, d // heads)
    scores = jnp.einsum("qhe,bnhe->bqhn", split(q), split(k)) / math.sqrt(d // heads)
    attended = jnp.einsum("bqhn,bnhe->bqhe", jax.nn.softmax(scores, -1), split(v)).reshape(2, 3, d)
    y = model.queries[...][None] + model.out_proj(attended)
    y = y + model.mlp_out(jax.nn.gelu(model.mlp_in(model.mlp_norm(y)), approximate=False))
    return model.head(y.mean(axis=1))


def test_mae_losses_masks_and_eval_determinism():
    rng = np.random.default_rng(6)
    model = create_model(
        model_config("mae", hidden=(32,), dropout=0.0, shared_dim=16, mask_ratio=0.5),
        input_dims=DIMS,
        num_classes=0,
        rngs=nnx.Rngs(1),
    )
    x = batch(rng, 6)
    model.train()
    out = forward(model, x)
    for name in (*LOSS_NAMES, "loss"):
        assert out[name].shape == (6,) and np.all(np.asarray(out[name]) >= 0)
    np.testing.assert_allclose(out["loss"], sum(out[n] for n in LOSS_NAMES), rtol=1e-6)
    assert out["predicted_language"].shape == (6, 16)
    assert not np.allclose(forward(model, x)["recon_vision"], out["recon_vision"])  # a fresh mask per call
    model.eval()
    first = forward(model, x)
    np.testing.assert_array_equal(first["loss"], forward(model, x)["loss"])
    # Unmasked: the cross-modal targets are the latents themselves, and recon covers every feature.
    pooled = x["vision"].astype(np.float32).mean(axis=(1, 2, 3))
    recon = nnx.jit(lambda m, z: m.vision_decoder(z))(model, first["vision_latent"])
    np.testing.assert_allclose(first["recon_vision"], ((recon - pooled) ** 2).mean(-1), rtol=1e-5)
    scores = nnx.jit(lambda m, p, lang: m.retrieval_scores(p, lang))(
        model, first["predicted_language"], x["language"]
    )
    assert scores.shape == (6, 6) and np.all(np.abs(scores) <= 1 + 1e-5)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet'; known: language_classifier"):
        create_model(model_config("resnet"), input_dims=DIMS, num_classes=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"model vision_classifier needs input_dims\['vision'\]"):
        create_model(
            model_config("vision_classifier"), input_dims={"language": 4}, num_classes=3, rngs=nnx.Rngs(0)
        )
    with pytest.raises(ValueError, match="not divisible by num_heads 3"):
        create_model(
            model_config("attentive_probe", num_heads=3), input_dims=DIMS, num_classes=3, rngs=nnx.Rngs(0)
        )
