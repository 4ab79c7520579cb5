"""Mixed precision (config.dtype) and the attentive probe's attention through jax.nn.dot_product_attention."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import store_and_split, test_seed
from flax import nnx

from deepearth_jax import train as train_lib
from deepearth_jax.config_utils import load_config
from deepearth_jax.inputs import TrainError
from deepearth_jax.models import create_model, precision
from deepearth_jax.models.classifiers import _multi_query_attention

ROOT = Path(__file__).resolve().parents[1]


def _probe(dtype: str, fused: bool = False) -> nnx.Module:
    config = {"name": "attentive_probe", "hidden": (), "num_heads": 4, "fused_attention": fused}
    return create_model(config, input_dims={"vision": 32}, num_classes=7, rngs=nnx.Rngs(0), dtype=dtype)


def _tokens(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"vision": jnp.asarray(rng.standard_normal((3, 2, 4, 4, 32)), jnp.float16)}


def test_fused_attention_equals_the_einsums():
    rng = np.random.default_rng(test_seed())
    x = jnp.asarray(rng.standard_normal((3, 50, 64)), jnp.float32)
    queries = jnp.asarray(rng.standard_normal((2, 4, 64)) / 8, jnp.float32)
    fused = _multi_query_attention(x, queries, fused=True)
    einsums = _multi_query_attention(x, queries, fused=False)
    assert fused.shape == (3, 2, 4, 64)
    np.testing.assert_allclose(np.asarray(fused), np.asarray(einsums), atol=1e-5, rtol=1e-5)
    batch = _tokens(test_seed("tokens"))
    np.testing.assert_allclose(
        np.asarray(_probe("float32", fused=True)(batch)), np.asarray(_probe("float32")(batch)), atol=1e-5
    )


@pytest.mark.parametrize("name", ["attentive_probe", "vision_classifier", "language_classifier"])
def test_bfloat16_keeps_float32_parameters_and_close_logits(name):
    dims = {"vision": 32, "language": 24}
    config = {"name": name, "hidden": (16,), "num_heads": 4}
    full = create_model(config, input_dims=dims, num_classes=7, rngs=nnx.Rngs(0), dtype="float32")
    half = create_model(config, input_dims=dims, num_classes=7, rngs=nnx.Rngs(0), dtype="bfloat16")
    leaves = jax.tree.leaves(nnx.state(half, nnx.Param))
    assert leaves and all(leaf.dtype == jnp.float32 for leaf in leaves)
    for a, b in zip(jax.tree.leaves(nnx.state(full, nnx.Param)), leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the same parameters, drawn in float32
    batch = {**_tokens(test_seed()), "language": jnp.ones((3, 24), jnp.float32)}
    lo, hi = half(batch), full(batch)
    assert lo.dtype == jnp.bfloat16 and hi.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(lo, np.float32), np.asarray(hi), atol=0.05, rtol=0.05)


def test_float32_leaves_the_model_as_built():
    model = _probe("float32")
    linears = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Linear)]
    assert linears and all(m.dtype is None for m in linears)
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, got 'float16'"):
        precision.compute_dtype("float16")


def test_bfloat16_run_trains_with_float32_state_and_a_bad_dtype_is_one_line(tmp_path):
    store, split = store_and_split(tmp_path)
    overrides = [f"--config.store={store}", f"--config.split_file={split}", "--config.num_steps=4"]
    config = load_config(f"{ROOT}/configs/attentive_probe.py:tiny", [*overrides, "--config.dtype=bfloat16"])
    summary = train_lib.train_and_evaluate(config, tmp_path / "w")
    assert summary["complete"] and np.isfinite(summary["final"]["train/loss"])
    bad = load_config(f"{ROOT}/configs/vision.py:tiny", [*overrides, "--config.dtype=half"])
    with pytest.raises(TrainError, match="config: dtype must be one of float32, bfloat16, got 'half'"):
        train_lib.train_and_evaluate(bad, tmp_path / "bad")
