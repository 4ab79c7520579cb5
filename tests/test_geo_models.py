"""GeoPrior and VisionGeoClassifier: shapes, losses against NumPy references, finite gradients."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import test_seed
from flax import nnx

from deepearth_jax.models import earth4d as e4d
from deepearth_jax.models.earth4d import Earth4DConfig, Earth4DNormalizer
from deepearth_jax.models.geo_prior import (
    GeoPrior,
    RowDropout,
    SiteMemory,
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


def test_earth4d_grid_subset_is_the_same_grid_of_the_full_encoder():
    rng = np.random.default_rng(test_seed())
    subset = dataclasses.replace(TINY, grids=("xy", "xy_doy"))
    assert e4d.grid_names(subset) == ("xy", "xy_doy")
    full, part = e4d.build_layouts(TINY), e4d.build_layouts(subset)
    table = rng.uniform(-1, 1, (e4d.table_entries(full), TINY.features)).astype(np.float32)
    coords = jnp.asarray(rng.uniform(0, 1, (64, 5)), jnp.float32)
    encode = jax.jit(e4d.encode, static_argnums=2)  # layouts are hashable constants
    want = np.asarray(encode(jnp.asarray(table), coords, full)).reshape(64, 5, -1)[:, [0, 4]]
    # The subset's table is the full table's rows of those two grids, in order.
    rows = [np.arange(g.offset[0], g.offset[-1] + g.size[-1]) for g in (full[0], full[4])]
    got = np.asarray(encode(jnp.asarray(table[np.concatenate(rows)]), coords, part))
    np.testing.assert_allclose(got.reshape(64, 2, -1), want, rtol=1e-6, atol=1e-7)
    assert e4d.Earth4D(subset, rngs=nnx.Rngs(0)).output_dim == 2 * TINY.levels * TINY.features
    with pytest.raises(ValueError, match=r"unknown Earth4D grids \['xyz'\]; known: \['xy', 'xyt'"):
        Earth4DConfig(grids=("xyz",))


MEMORY = Earth4DConfig(
    levels=2, features=4, log2_table_size=10, spatial_resolution=(64.0, 256.0), grids=("xy",)
)


def test_site_memory_adds_a_linear_readout_of_its_fine_encoding():
    rng = np.random.default_rng(test_seed())
    batch = geo_batch(rng, 16)
    kwargs = dict(normalizer=NORMALIZER, encoder=TINY, hidden=32, blocks=1, rngs=nnx.Rngs(0))
    model = GeoPrior(7, memory=MEMORY, memory_dropout=0.5, **kwargs)
    model.eval()

    @nnx.jit  # eager Earth4D dispatches hundreds of ops
    def parts(m, b):
        coords = m.coords(b)
        return m.head(m.trunk(coords)), m.memory.encoder(coords), m(b)

    smooth, features, full = (np.asarray(a, np.float64) for a in parts(model, batch))
    kernel = np.asarray(model.memory.readout.kernel[...], np.float64)
    assert features.shape == (16, MEMORY.levels * MEMORY.features) and kernel.shape == (8, 7)
    assert model.memory.readout.bias is None  # no bias: an untrained cell adds nothing
    np.testing.assert_allclose(full, smooth + features @ kernel, rtol=1e-5, atol=1e-6)
    # Without a memory the model is the plain prior (same parameters otherwise).
    plain = GeoPrior(7, **{**kwargs, "rngs": nnx.Rngs(0)})
    assert not hasattr(plain, "memory") or plain.memory is None
    with pytest.raises(ValueError, match="row dropout needs 0 <= rate < 1"):
        GeoPrior(7, memory=MEMORY, memory_dropout=1.0, **{**kwargs, "rngs": nnx.Rngs(0)})


def test_row_dropout_zeroes_whole_rows_without_rescaling_in_training_only():
    drop = RowDropout(0.25, rngs=nnx.Rngs(test_seed()))
    x = jnp.ones((4000, 3), jnp.float32)
    out = np.asarray(drop(x))
    kept = out[:, 0] == 1.0
    assert set(np.unique(out).tolist()) <= {0.0, 1.0}  # kept rows unscaled, dropped rows all zero
    np.testing.assert_array_equal(out, np.repeat(kept[:, None], 3, 1).astype(np.float32))
    assert abs(kept.mean() - 0.75) < 0.03  # binomial sd 0.007
    drop.deterministic = True
    np.testing.assert_array_equal(np.asarray(drop(x)), np.asarray(x))


def test_site_memory_remembers_trained_places_and_stays_silent_elsewhere():
    """Fit the memory alone to one species at one site: its logits there grow, while far away (cells no
    training row touches) they stay at the initial scale (~1e-4 features x O(1) kernel)."""
    memory = SiteMemory(MEMORY, 5, 0.0, rngs=nnx.Rngs(0))
    site = jnp.asarray([[0.30, 0.30, 0.5, 0.5, 0.5]] * 8, jnp.float32)
    far = jnp.asarray([[0.80, 0.75, 0.5, 0.5, 0.5]], jnp.float32)
    labels = jnp.full((8,), 3, jnp.int32)
    optimizer = nnx.Optimizer(memory, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt):
        loss, grads = nnx.value_and_grad(lambda m: softmax_cross_entropy(m(site), labels))(m)
        opt.update(m, grads)
        return loss

    for _ in range(100):
        loss = step(memory, optimizer)
    memory.eval()
    at_site, elsewhere = np.asarray(memory(site[:1]))[0], np.asarray(memory(far))[0]
    assert float(loss) < 0.1 and int(np.argmax(at_site)) == 3 and at_site[3] - np.delete(at_site, 3).max() > 2
    assert np.abs(elsewhere).max() < 1e-2
