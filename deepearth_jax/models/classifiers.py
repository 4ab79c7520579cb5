"""Species classifiers over precomputed embeddings (Flax NNX), initialised like PyTorch's `nn.Linear`.

Every model is called as `model(batch)` on the batch dict and returns logits `(B, C)` float32:
- `LanguageClassifier`: `batch["language"]` (B, L) -> hidden MLP -> C (the original's 7168 -> 128 -> 128 -> C)
- `VisionClassifier`: mean over (T, H, W) of `batch["vision"]` (B, T, H, W, D) float16, or
  `batch["vision_pooled"]` (B, D), -> hidden MLP -> C (the original's 1408 -> 128 -> 128 -> C)
- `AttentiveProbeClassifier`: learned queries cross-attend the T*H*W vision tokens (the V-JEPA probe)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from deepearth_jax.models.config_error import ModelConfigError

from .precision import dtype_of

# PyTorch's nn.LayerNorm default; flax's is 1e-6.
TORCH_LAYER_NORM_EPS = 1e-5


def torch_uniform(bound: float) -> nnx.Initializer:
    """U(-bound, bound): PyTorch's nn.Linear kernel and bias distribution (bound = 1/sqrt(fan_in))."""

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def torch_linear(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """An `nnx.Linear` initialised as PyTorch's `nn.Linear`: kernel (in, out) and bias U(+-1/sqrt(in))."""
    init = torch_uniform(1.0 / math.sqrt(in_features))
    return nnx.Linear(in_features, out_features, kernel_init=init, bias_init=init, rngs=rngs)


def torch_layer_norm(features: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """An `nnx.LayerNorm` with PyTorch's defaults: scale 1, bias 0, epsilon 1e-5."""
    return nnx.LayerNorm(features, epsilon=TORCH_LAYER_NORM_EPS, rngs=rngs)


def pooled_vision(batch: Mapping[str, jax.Array]) -> jax.Array:
    """(B, D) float32: `batch["vision_pooled"]`, else the mean over (T, H, W) of `batch["vision"]`.

    The float16 tokens are summed in float32 (cast inside the jit, fused into the reduction).
    """
    if "vision_pooled" in batch:
        return jnp.asarray(batch["vision_pooled"], jnp.float32)
    if "vision" in batch:
        tokens = batch["vision"]
        if tokens.ndim != 5:
            raise ValueError(f"vision tokens must be (B, T, H, W, D), got shape {tokens.shape}")
        return jnp.mean(tokens.astype(jnp.float32), axis=(1, 2, 3))
    raise ValueError(f"the batch has neither 'vision' nor 'vision_pooled' (keys: {sorted(batch)})")


class MLP(nnx.Module):
    """in -> hidden[0] -> ... -> hidden[-1] -> out; ReLU then dropout after each hidden layer."""

    def __init__(
        self, in_features: int, hidden: Sequence[int], out_features: int, dropout: float, *, rngs: nnx.Rngs
    ):
        sizes = [in_features, *hidden]
        self.hidden = nnx.List(
            [torch_linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.dropouts = nnx.List([nnx.Dropout(dropout, rngs=rngs) for _ in hidden])
        self.head = torch_linear(sizes[-1], out_features, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer, dropout in zip(self.hidden, self.dropouts, strict=True):
            x = dropout(jax.nn.relu(layer(x)))
        return self.head(x)


class LanguageClassifier(nnx.Module):
    """Species from the language embedding: `batch["language"]` (B, L) float32 -> logits (B, C)."""

    def __init__(
        self, language_dim: int, num_classes: int, *, hidden: Sequence[int], dropout: float, rngs: nnx.Rngs
    ):
        self.mlp = MLP(language_dim, hidden, num_classes, dropout, rngs=rngs)

    def __call__(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        return self.mlp(jnp.asarray(batch["language"], jnp.float32))


class VisionClassifier(nnx.Module):
    """Species from mean-pooled vision tokens: (B, T, H, W, D) or pooled (B, D) -> logits (B, C)."""

    def __init__(
        self, vision_dim: int, num_classes: int, *, hidden: Sequence[int], dropout: float, rngs: nnx.Rngs
    ):
        self.mlp = MLP(vision_dim, hidden, num_classes, dropout, rngs=rngs)

    def __call__(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        return self.mlp(pooled_vision(batch))


def _multi_query_attention(x: jax.Array, queries: jax.Array, fused: bool) -> jax.Array:
    """Every head's query (Q, h, D) attends the same keys and values, the tokens x (B, N, D), with the scale
    already in the queries: (B, Q, h, D). `fused`: through `jax.nn.dot_product_attention` (one key/value
    head shared by h query heads), which selects a fused kernel where the device has one; else einsums."""
    if fused:
        # The queries along the batch, sharded as x is (a product with ones of x's batch, not broadcast_to:
        # under explicit sharding an unsharded batch against x's would be refused).
        query = queries[None] * jnp.ones_like(x[:, :1, None, :1])  # (B, Q, h, D)
        return jax.nn.dot_product_attention(query, x[:, :, None, :], x[:, :, None, :], scale=1.0)
    weights = jax.nn.softmax(jnp.einsum("bnd,qhd->bqhn", x, queries), axis=-1)  # (B, Q, h, N)
    return jnp.einsum("bqhn,bnd->bqhd", weights, x)


class AttentiveProbeClassifier(nnx.Module):
    """The V-JEPA attentive probe: `num_queries` learned queries cross-attend the T*H*W tokens, then a head.

    One cross-attention block (pre-LayerNorm, `num_heads` heads, residual, then LayerNorm + MLP with ratio
    `mlp_ratio`, residual), the queries averaged, then an MLP head (`hidden`, may be empty) to C logits.
    Input: `batch["vision"]` (B, T, H, W, D) float16/float32 (or `vision_pooled` (B, D), one token each).

    Exact but cheaper than projecting every token: a query's score against token x is
    (q Wk^T) . LN(x) + const, and the attention output is (sum_i a_i LN(x_i)) Wv + bv, so keys and values
    are never materialised: O(N D heads) per example instead of O(N D^2).
    """

    def __init__(
        self,
        vision_dim: int,
        num_classes: int,
        *,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        num_heads: int = 16,
        num_queries: int = 1,
        mlp_ratio: float = 4.0,
        fused_attention: bool = False,
        rngs: nnx.Rngs,
    ):
        """fused_attention: attend through `jax.nn.dot_product_attention` also in float32 (equal to the
        einsums to ~1e-6, not bit for bit, so float32 runs keep the einsums by default); other compute
        dtypes always use it."""
        if vision_dim % num_heads:
            raise ModelConfigError(
                f"attentive probe: vision dim {vision_dim} is not divisible by num_heads {num_heads}"
            )
        if num_queries < 1:
            raise ModelConfigError(f"attentive probe: num_queries must be >= 1, got {num_queries}")
        self.num_heads = num_heads
        self.compute_dtype = jnp.float32  # matmuls below; models.precision.set_compute_dtype changes it
        self.fused_attention = fused_attention
        self.queries = nnx.Param(
            jax.random.truncated_normal(rngs.params(), -2.0, 2.0, (num_queries, vision_dim)) * 0.02
        )
        self.token_norm = torch_layer_norm(vision_dim, rngs=rngs)
        self.query_proj = torch_linear(vision_dim, vision_dim, rngs=rngs)
        self.key_proj = torch_linear(vision_dim, vision_dim, rngs=rngs)
        self.value_proj = torch_linear(vision_dim, vision_dim, rngs=rngs)
        self.out_proj = torch_linear(vision_dim, vision_dim, rngs=rngs)
        self.mlp_norm = torch_layer_norm(vision_dim, rngs=rngs)
        mlp_dim = max(1, int(round(vision_dim * mlp_ratio)))
        self.mlp_in = torch_linear(vision_dim, mlp_dim, rngs=rngs)
        self.mlp_out = torch_linear(mlp_dim, vision_dim, rngs=rngs)
        self.head = MLP(vision_dim, hidden, num_classes, dropout, rngs=rngs)

    def _fused_attention(self, tokens: jax.Array, q_in_token_space: jax.Array, dtype) -> jax.Array:
        """(B, Q, h, D): the queries attend LayerNorm(tokens), the norm's scale and shift folded out.

        With x = g * xhat + b (xhat the tokens standardised, no parameters): scores x . q = xhat . (g * q) +
        b . q, whose second term is constant over tokens and cancels in the softmax, and sum_n a_n x_n =
        g * (sum_n a_n xhat_n) + b. So the keys and values are the parameter-free xhat, computed once in
        `dtype` and never differentiated: the backward pass touches no (B, N, D) tensor but the scores'.
        """
        norm = self.token_norm
        t = tokens.astype(jnp.float32)
        mean = jnp.mean(t, axis=-1, keepdims=True)
        var = jnp.maximum(jnp.mean(jnp.square(t), axis=-1, keepdims=True) - jnp.square(mean), 0.0)
        xhat = ((t - mean) * jax.lax.rsqrt(var + norm.epsilon)).astype(dtype)
        scale, shift = norm.scale[...], norm.bias[...]
        pooled = _multi_query_attention(xhat, (q_in_token_space * scale).astype(dtype), fused=True)
        return pooled * scale.astype(dtype) + shift.astype(dtype)

    def __call__(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        if "vision" in batch:
            tokens = batch["vision"]
            tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])  # (B, N, D)
        else:
            tokens = jnp.asarray(batch["vision_pooled"])[:, None, :]
        d = tokens.shape[-1]
        heads, head_dim = self.num_heads, d // self.num_heads
        queries = self.queries[...]  # (Q, D)
        q = self.query_proj(queries).reshape(-1, heads, head_dim)  # (Q, h, dh)
        wk = self.key_proj.kernel[...].reshape(d, heads, head_dim)  # (D, h, dh)
        # Per head, the query mapped back to token space: scores = x . (Wk_h q_h) / sqrt(dh); bias cancels.
        q_in_token_space = jnp.einsum("qhe,dhe->qhd", q, wk) / math.sqrt(head_dim)  # (Q, h, D)
        dtype = dtype_of(self)
        if self.fused_attention or dtype != jnp.float32:
            pooled = self._fused_attention(tokens, q_in_token_space, dtype)
        else:
            x = self.token_norm(tokens)  # (B, N, D); float16 tokens cast inside, statistics in float32
            pooled = _multi_query_attention(x, q_in_token_space, fused=False)  # (B, Q, h, D)
        wv = self.value_proj.kernel[...].reshape(d, heads, head_dim).astype(dtype)
        values = jnp.einsum("bqhd,dhe->bqhe", pooled, wv) + self.value_proj.bias[...].reshape(heads, head_dim)
        attended = self.out_proj(values.reshape(values.shape[0], values.shape[1], d))  # (B, Q, D)
        y = queries[None] + attended
        y = y + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(y)), approximate=False))
        return self.head(jnp.mean(y, axis=1))
