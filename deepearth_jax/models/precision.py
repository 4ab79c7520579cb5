"""Mixed precision: the compute dtype of a model's matmuls and activations, its parameters kept in float32.

MaxText's split of `dtype` (activations, matmuls) from `weight_dtype` (parameters): every `nnx.Linear`,
`nnx.LayerNorm` and `nnx.Embed` of a model is told to compute in `dtype` after the model is built, so no
constructor takes a dtype and the parameters (and so the optimizer state) are created exactly as in float32.
LayerNorm statistics are still accumulated in float32 (flax promotes them); the tasks take the logits and
losses in float32. `float32` leaves the model untouched (the same program as before this module existed).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from .config_error import ModelConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_CASTABLE = (nnx.Linear, nnx.LayerNorm, nnx.Embed)


def compute_dtype(name: str):
    """The jnp dtype named `name` (float32 | bfloat16); ModelConfigError (a ValueError) for any other."""
    if name not in DTYPES:
        raise ModelConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def set_compute_dtype(model: nnx.Module, name: str) -> nnx.Module:
    """Sets every layer of `model` to compute in the dtype `name` (in place; returns `model`).

    Layers with their own explicit matmuls read `model.compute_dtype` (see `dtype_of`). float32: nothing.
    """
    dtype = compute_dtype(name)
    if dtype == jnp.float32:
        return model
    for _, module in nnx.iter_modules(model):
        if isinstance(module, _CASTABLE):
            module.dtype = dtype
        elif hasattr(module, "compute_dtype"):
            module.compute_dtype = dtype
    return model


def dtype_of(module: nnx.Module):
    """The compute dtype a module with explicit matmuls should use: its `compute_dtype`, float32 default."""
    return getattr(module, "compute_dtype", jnp.float32)
