"""GeoPrior and VisionGeoClassifier: shapes, losses against NumPy references, finite gradients."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import test_seed
from flax import nnx

from deepearth_jax.models.earth4d import Earth4DConfig, Earth4DNormalizer
from deepearth_jax.models.geo_prior import (
    GeoPrior,
    assume_negative_full_loss,
    random_background_coords,
    softmax_cross_entropy,
)
from deepearth_jax.models.vision_geo import GATE_BIAS_INIT, VisionGeoClassifier, late_fusion_logits

TINY = Earth4DConfig(levels=3, log2_table_size=8, spatial_resolution=(4.0, 32.0), time_resolution=(4.0, 16.0))
NORMALIZER = Earth4DNormalizer(lat0=28.0, lon0=-81.4, span_km=120.0, day0=14600.0, day_span=5500.0)


def geo_batch(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    location = np.stack([rng.uniform(27.6, 28.4, n), rng.uniform(-81.8, -81.0, n), np.full(n, np.nan)], 1)
    time = np.stack(
        [rng.integers(2010, 2025, n), rng.integers(1, 13, n), rng.integers(1, 29, n)]
        + [np.full(n, np.nan)] * 3,
        1,
    )
    return {
        "location": location.astype(np.float32),
        "time": time.astype(np.float32),
        "species": rng.integers(0, 7, n).astype(np.int32),
        "mask": np.arange(n) < n - 2,
    }


def _sigmoid_log(z):
    return -np.log1p(np.exp(-z))  # log sigmoid(z) in float64


def test_geo_prior_shapes_and_finite_gradients_of_both_losses():
    rng = np.random.default_rng(test_seed())
    batch = geo_batch(rng, 16)
    model = GeoPrior(7, normalizer=NORMALIZER.to_dict(), encoder=TINY, hidden=32, blocks=2, rngs=nnx.Rngs(0))
    logits = nnx.jit(lambda m, b: m(b))(model, batch)
    assert logits.shape == (16, 7) and logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
    background = random_background_coords(jax.random.key(test_seed()), 16)
    assert background.shape == (16, 5) and float(background.min()) >= 0 and float(background.max()) < 1
    np.testing.assert_array_equal(np.asarray(background[:, 2]), 0.5)

    def loss(m, kind):
        logits = m(batch)
        if kind == "softmax":
            return softmax_cross_entropy(logits, batch["species"], batch["mask"])
        return assume_negative_full_loss(
            logits, batch["species"], m.logits_at(background), 7.0, batch["mask"]
        )

    for kind in ("softmax", "an_full"):  # jitted: an eager Earth4D backward dispatches hundreds of ops
        grads = nnx.jit(nnx.grad(loss), static_argnums=1)(model, kind)
        leaves = jax.tree.leaves(grads)
        assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
        assert np.abs(np.asarray(grads["trunk"]["encoder"]["table"][...])).sum() > 0, kind


def test_losses_equal_numpy_reference():
    rng = np.random.default_rng(test_seed())
    logits = rng.normal(0, 3, (12, 9)).astype(np.float32)
    background = rng.normal(0, 3, (12, 9)).astype(np.float32)
    labels = rng.integers(0, 9, 12).astype(np.int32)
    mask = rng.random(12) < 0.7
    z = logits.astype(np.float64)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    want_ce = -(log_probs[np.arange(12), labels] * mask).sum() / mask.sum()
    got_ce = softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
    np.testing.assert_allclose(float(got_ce), want_ce, rtol=1e-5)
    weight = 9.0
    per = -_sigmoid_log(-z)  # -log(1 - sigmoid(z)): every species negative
    per[np.arange(12), labels] = -weight * _sigmoid_log(z[np.arange(12), labels])
    want_an = (per.mean(-1) * mask).sum() / mask.sum() + (
        -_sigmoid_log(-background.astype(np.float64))
    ).mean()
    got_an = assume_negative_full_loss(
        jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(background), weight, jnp.asarray(mask)
    )
    np.testing.assert_allclose(float(got_an), want_an, rtol=1e-5)
    # Extreme logits stay finite (softplus form, no log(0)).
    big = jnp.asarray(np.where(rng.random((12, 9)) < 0.5, 200.0, -200.0), jnp.float32)
    assert np.isfinite(float(assume_negative_full_loss(big, jnp.asarray(labels), big, weight)))


@pytest.mark.parametrize("vision_key", ["vision_pooled", "vision"])
def test_vision_geo_fuses_both_inputs_with_a_learned_gate(vision_key):
    rng = np.random.default_rng(test_seed())
    batch = geo_batch(rng, 8)
    if vision_key == "vision_pooled":
        batch["vision_pooled"] = rng.standard_normal((8, 24)).astype(np.float32)
    else:
        batch["vision"] = rng.standard_normal((8, 2, 2, 2, 24)).astype(np.float16)
    as_config_dict = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(TINY).items()}
    model = VisionGeoClassifier(
        24,
        7,
        normalizer=NORMALIZER,
        encoder=as_config_dict,
        hidden=16,
        geo_blocks=1,
        head=(16,),
        rngs=nnx.Rngs(0),
    )
    moved = dict(batch, location=batch["location"] + np.float32([0.3, 0.3, 0.0]))

    def loss(m):
        return softmax_cross_entropy(m(batch), batch["species"], batch["mask"])

    @nnx.jit
    def run(m):
        return m(batch), m(moved), m.fused(batch)[1], nnx.grad(loss)(m)

    logits, moved_logits, gate, grads = run(model)
    assert logits.shape == (8, 7) and np.isfinite(np.asarray(logits)).all()
    assert gate.shape == (8, 16)
    np.testing.assert_allclose(np.asarray(model.gate.bias[...]), GATE_BIAS_INIT)
    # Place and date change the logits (the geo branch is wired in).
    assert not np.allclose(np.asarray(moved_logits), np.asarray(logits))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert np.abs(np.asarray(grads["geo"]["encoder"]["table"][...])).sum() > 0
    assert np.abs(np.asarray(grads["gate"]["kernel"][...])).sum() > 0


def test_late_fusion_equals_the_independence_rule():
    rng = np.random.default_rng(test_seed())
    vision, geo = (rng.normal(0, 2, (5, 6)).astype(np.float32) for _ in range(2))
    prior = rng.dirichlet(np.ones(6))
    fused = np.asarray(late_fusion_logits(jnp.asarray(vision), jnp.asarray(geo), jnp.log(prior), 1.0))

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    want = softmax(vision.astype(np.float64)) * softmax(geo.astype(np.float64)) / prior
    np.testing.assert_allclose(
        softmax(fused.astype(np.float64)), want / want.sum(-1, keepdims=True), rtol=1e-5
    )
    alone = np.asarray(late_fusion_logits(jnp.asarray(vision), jnp.asarray(geo), jnp.log(prior), 0.0))
    np.testing.assert_allclose(softmax(alone), softmax(vision.astype(np.float64)), rtol=1e-5)


def test_geo_prior_rejects_bad_sizes():
    with pytest.raises(ValueError, match="GeoPrior needs num_classes"):
        GeoPrior(0, normalizer=NORMALIZER, encoder=TINY, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"unknown Earth4D config fields \['level'\]"):
        GeoPrior(3, normalizer=NORMALIZER, encoder={"level": 3}, rngs=nnx.Rngs(0))
