"""The masked autoencoder's space-time token: place and date reach the decoders and cross predictors, the
latents stay those of each modality, and without the token the model is the two-modality autoencoder."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import store_and_split, test_seed
from flax import nnx

from deepearth_jax import train as train_lib
from deepearth_jax.config_utils import load_config
from deepearth_jax.data import modes, pipeline
from deepearth_jax.models import create_model
from deepearth_jax.models.earth4d import Earth4DNormalizer

ROOT = Path(__file__).resolve().parents[1]
NORMALIZER = Earth4DNormalizer(lat0=28.5, lon0=-81.4, span_km=120.0, day0=14_000.0, day_span=6_000.0)


def _model(space_time: bool, seed: int = 0):
    config = load_config(f"{ROOT}/configs/mae.py:tiny,space_time={space_time}")
    dims = {"vision": 8, "language": 6, "earth4d_normalizer": NORMALIZER.to_dict()}
    return create_model(config.model, input_dims=dims, num_classes=3, rngs=nnx.Rngs(seed, mask=seed + 1))


def _batch(rng: np.random.Generator, n: int = 5) -> dict:
    return {
        "vision_pooled": jnp.asarray(rng.normal(size=(n, 8)), jnp.float32),
        "language": jnp.asarray(rng.normal(size=(n, 6)), jnp.float32),
        "location": jnp.asarray(
            np.stack([rng.uniform(28.1, 28.9, n), rng.uniform(-81.9, -80.95, n), np.full(n, np.nan)], 1),
            jnp.float32,
        ),
        "time": jnp.asarray(np.tile([2021, 5, 17, 12, 0, 0], (n, 1)), jnp.float32),
    }


def test_token_carries_place_and_date_and_nothing_else():
    rng = np.random.default_rng(test_seed())
    model = _model(True)
    model.eval()
    # A trained-looking token: tables away from their 1e-4 initialisation, so place and date move it.
    table = model.space_time.encoder.table
    table[...] = jnp.asarray(rng.normal(0, 1.0, table.shape), jnp.float32)
    batch = _batch(rng)
    moved = {**batch, "location": batch["location"].at[:, 0].add(0.2), "time": batch["time"].at[:, 1].set(11)}
    forward = nnx.jit(lambda m, x: m(x))
    a, b = forward(model, batch), forward(model, moved)
    # The latents (so the cross-modal targets) are the modalities' own; what is decoded or predicted moves.
    np.testing.assert_array_equal(a["vision_latent"], b["vision_latent"])
    np.testing.assert_array_equal(a["language_latent"], b["language_latent"])
    assert np.max(np.abs(np.asarray(a["predicted_language"] - b["predicted_language"]))) > 1e-3
    assert np.max(np.abs(np.asarray(a["recon_vision"] - b["recon_vision"]))) > 1e-6
    # The token gets gradients from the loss.
    grads = nnx.jit(nnx.grad(lambda m, x: jnp.mean(m(x)["loss"])))(model, batch)
    assert float(jnp.max(jnp.abs(grads.space_time.encoder.table[...]))) > 0.0


def test_without_the_token_the_model_is_the_two_modality_autoencoder():
    rng = np.random.default_rng(test_seed())
    off, on = _model(False), _model(True)
    params_off = nnx.to_flat_state(nnx.state(off, nnx.Param))
    params_on = nnx.to_flat_state(nnx.state(on, nnx.Param))
    assert not any("space_time" in map(str, path) for path, _ in params_off)
    # The token is built after the other modules: they draw exactly the same parameters either way.
    on_shared = {path: v for path, v in params_on if "space_time" not in map(str, path)}
    assert set(on_shared) == {path for path, _ in params_off}
    for path, v in params_off:
        np.testing.assert_array_equal(v[...], on_shared[path][...])
    off.eval()
    batch = _batch(rng)
    del batch["location"], batch["time"]  # the two-modality model does not read them
    assert set(off(batch)) >= {"loss", "predicted_language"}


def test_the_token_needs_a_mode_with_place_and_date():
    config = load_config(f"{ROOT}/configs/mae.py:tiny", ["--config.mode=multimodal"])
    with pytest.raises(ValueError, match="earth4d_normalizer"):
        create_model(config.model, input_dims={"vision": 8, "language": 6}, num_classes=3, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return store_and_split(
        tmp_path_factory.mktemp("mae_st"),
        observations=400,
        species=10,
        vision_shape=(2, 2, 2, 8),
        language_dim=8,
        seed=2,
    )


def test_multimodal_geo_batches_carry_place_and_date(tiny_data):
    from deepearth_jax.data import store as store_lib

    store = store_lib.open_store(tiny_data[0])
    assert modes.input_keys("multimodal_geo") == ("language", "vision", "location", "time")
    rows = np.flatnonzero(store.column("vision_row") >= 0)[:10]
    batch = next(iter(pipeline.eval_batches(store, rows, mode="multimodal_geo", global_batch_size=4)))
    assert batch["location"].shape == (4, 3) and batch["time"].shape == (4, 6)
    assert batch["location"].dtype == np.float32 and batch["vision"].shape == (4, 2, 2, 2, 8)
    np.testing.assert_array_equal(
        batch["location"][:, 0], store.column("latitude")[rows[:4]].astype(np.float32)
    )


def test_token_run_resumes_exactly_k_steps_at_a_time(tiny_data, tmp_path):
    store, split = tiny_data

    def config(steps: int, k: int):
        values = {"store": store, "split_file": split, "num_steps": steps, "steps_per_call": k}
        values["eval_every_steps"] = 100
        return load_config(f"{ROOT}/configs/mae.py:tiny", [f"--config.{a}={b}" for a, b in values.items()])

    one = train_lib.train_and_evaluate(config(6, 3), tmp_path / "k3")["params_checksum"]
    train_lib.train_and_evaluate(config(3, 3), tmp_path / "r")  # 3 steps per call, stopped at 3, resumed
    assert train_lib.train_and_evaluate(config(6, 3), tmp_path / "r")["params_checksum"] == one
