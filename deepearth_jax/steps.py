"""Pure, jitted train and eval steps over `(graphdef, state)`: the one implementation the trainer and the
step benchmark both use.

The model and its `nnx.Optimizer` live in one `TrainState` module, split ONCE into a static `graphdef` and a
`state` pytree (`state["model"]`, `state["optimizer"]`; the dropout/mask RNG counters are part of the model
state, so they are checkpointed and a resumed run draws the same masks). Each step merges, computes, and
splits again inside plain `jax.jit` (the Flax performance guide: no `nnx.jit`, no object-graph walk per call),
donating the state and the metric sums.

Batches are dicts (see the models): `species` int32 (B,) STORE species indices, mapped to classes inside the
jit by `label_map` int32 (num_store_species,) (-1: absent from training, excluded from the loss); `mask` bool
(B,) (False = padding, contributes nothing; all True when absent); plus the model's inputs. With
`steps_per_call = K > 1` every leaf carries a leading K axis and the K steps run in one `lax.scan`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deepearth_jax import parallel
from deepearth_jax.models import create_model, is_classifier
from deepearth_jax.models.mae import LOSS_NAMES
from deepearth_jax.optim import make_optimizer

Batch = Mapping[str, jax.Array]
State = Any  # an nnx.State pytree: {"model": ..., "optimizer": ...}
Metrics = dict[str, jax.Array]

TOP_K = 5


class TrainState(nnx.Module):
    """The model and its optimizer, split together so one `state` pytree holds everything a step changes."""

    def __init__(self, model: nnx.Module, optimizer: nnx.Optimizer):
        self.model = model
        self.optimizer = optimizer


def _model_name(config: Any) -> str:
    return config.model.name


def build_train_state(
    config: Any, *, input_dims: Mapping[str, int], num_classes: int, total_steps: int, seed: int
) -> TrainState:
    """The unsplit `TrainState` (model in train mode + optimizer) on the default device; tests and tools."""
    tx = make_optimizer(config.optimizer, total_steps)
    model = create_model(config.model, input_dims=input_dims, num_classes=num_classes, rngs=nnx.Rngs(seed))
    model.train()
    return TrainState(model, nnx.Optimizer(model, tx, wrt=nnx.Param))


def state_sharding_for(abstract_state: State, mesh: Mesh, shard_params: bool = False) -> State:
    """Per-leaf NamedSharding: replicated, or with `shard_params` large arrays (kernels and their Adam
    moments) split over the "data" axis on their largest divisible dimension."""
    rule = parallel.param_sharding_rule(mesh, shard_params)
    return jax.tree.map(lambda x: rule(x.shape), abstract_state)


def create_train_state(
    config: Any,
    *,
    input_dims: Mapping[str, int],
    num_classes: int,
    total_steps: int,
    mesh: Mesh,
    seed: int,
) -> tuple[nnx.GraphDef, State]:
    """Builds model + optimizer with parameters CREATED SHARDED on `mesh`; returns `(graphdef, state)`.

    Shapes come from `jax.eval_shape`; the init then runs under `jax.jit` with `out_shardings`, so no device
    ever holds an unsharded copy. `state_sharding = jax.tree.map(lambda x: x.sharding, state)`.
    """

    def build() -> TrainState:
        return build_train_state(
            config, input_dims=input_dims, num_classes=num_classes, total_steps=total_steps, seed=seed
        )

    def init() -> State:
        return nnx.state(build())

    graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
    shardings = state_sharding_for(abstract_state, mesh, bool(config.mesh.get("shard_params", False)))
    state = jax.jit(init, out_shardings=shardings)()
    return graphdef, state


def model_params(state: State) -> nnx.State:
    """The model's parameters (nnx.Param) out of the train state."""
    return nnx.filter_state(state["model"], nnx.Param)


def params_checksum(state: State) -> str:
    """SHA-256 over the bytes of every parameter, in tree order (identical runs give identical sums)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(model_params(state)):
        digest.update(np.ascontiguousarray(parallel.to_host(leaf)).tobytes())
    return digest.hexdigest()


def state_sharding_of(state: State) -> State:
    """The sharding of every leaf of `state` (what `make_train_step` wants as `state_sharding`)."""
    return jax.tree.map(lambda x: x.sharding, state)


def metric_names(config: Any) -> tuple[str, ...]:
    """The device metric sums the train step accumulates for this config's model."""
    if is_classifier(_model_name(config)):
        return ("loss_sum", "correct_sum", "count", "steps")
    return ("loss_sum", *(f"{name}_sum" for name in LOSS_NAMES), "count", "steps")


def init_metrics(config: Any | None = None, mesh: Mesh | None = None) -> Metrics:
    """Zeroed float32 device scalars: `loss_sum`, `correct_sum` (top-1 hits), `count` (labelled examples),
    `steps`; for the MAE (`config.model.name == "mae"`) the per-loss sums instead of `correct_sum`.

    Without a config: the classifier sums. Reset by calling again at each log interval.
    """
    names = metric_names(config) if config is not None else ("loss_sum", "correct_sum", "count", "steps")
    metrics = {name: jnp.zeros((), jnp.float32) for name in names}
    if mesh is not None:
        metrics = jax.device_put(metrics, parallel.replicated(mesh))
    return metrics


def summarize_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Device sums -> host means: `loss`, `top1` (classifiers), each MAE loss, `count`, `steps`."""
    host = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
    count = max(host.get("count", 0.0), 1.0)
    out = {"count": host.get("count", 0.0), "steps": host.get("steps", 0.0)}
    for key, value in host.items():
        if key.endswith("_sum"):
            name = "top1" if key == "correct_sum" else key[: -len("_sum")]
            out[name] = value / count
    return out


def _labels(batch: Batch, label_map: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(labels (B,) int32 with -1 for species absent from training, mask (B,) bool)."""
    species = jnp.asarray(batch["species"], jnp.int32)
    # A one-hot select, not a gather: a gather of sharded indices is ambiguous under explicit sharding.
    hit = species[:, None] == jnp.arange(label_map.shape[0], dtype=jnp.int32)[None, :]
    labels = jnp.sum(jnp.where(hit, label_map[None, :] + 1, 0), axis=-1) - 1  # -1 also when out of range
    mask = jnp.asarray(batch["mask"], bool) if "mask" in batch else jnp.ones(species.shape, bool)
    return labels, mask


def _model_inputs(batch: Batch) -> dict[str, jax.Array]:
    return {k: v for k, v in batch.items() if k not in ("species", "mask")}


def _classifier_loss(model: nnx.Module, batch: Batch, label_map: jax.Array) -> tuple[jax.Array, Metrics]:
    logits = model(_model_inputs(batch)).astype(jnp.float32)
    labels, mask = _labels(batch, label_map)
    weight = (mask & (labels >= 0)).astype(jnp.float32)
    # One-hot rather than a gather: the gather's gradient is a scatter whose output sharding is ambiguous
    # under explicit mesh axes (jax >= 0.12 refuses it inside the on-device epoch).
    one_hot = jax.nn.one_hot(jnp.maximum(labels, 0), logits.shape[-1], dtype=logits.dtype)
    per_example = -jnp.sum(jax.nn.log_softmax(logits) * one_hot, axis=-1)
    count = jnp.sum(weight)
    loss_sum = jnp.sum(per_example * weight)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32) * weight
    sums = {"loss_sum": loss_sum, "correct_sum": jnp.sum(correct), "count": count}
    return loss_sum / jnp.maximum(count, 1.0), sums


def _mae_loss(model: nnx.Module, batch: Batch, label_map: jax.Array) -> tuple[jax.Array, Metrics]:
    out = model(_model_inputs(batch))
    _, mask = _labels(batch, label_map)
    weight = mask.astype(jnp.float32)
    count = jnp.sum(weight)
    sums = {f"{name}_sum": jnp.sum(out[name] * weight) for name in LOSS_NAMES}
    sums["loss_sum"] = jnp.sum(out["loss"] * weight)
    sums["count"] = count
    return sums["loss_sum"] / jnp.maximum(count, 1.0), sums


def make_loss_fn(config: Any) -> Callable[[nnx.Module, Batch, jax.Array], tuple[jax.Array, Metrics]]:
    """`loss_fn(model, batch, label_map) -> (mean loss over counted examples, metric sums)` for the model."""
    return _classifier_loss if is_classifier(_model_name(config)) else _mae_loss


def _device_label_map(label_map: Any, mesh: Mesh) -> jax.Array:
    """The label map replicated on the mesh; a device array is moved device-side (no host round trip)."""
    if not isinstance(label_map, jax.Array):
        label_map = np.asarray(label_map)
    if label_map.ndim != 1 or not jnp.issubdtype(label_map.dtype, jnp.integer):
        raise ValueError(f"label_map must be a 1-D integer array, got {label_map.dtype} {label_map.shape}")
    return jax.device_put(label_map.astype(jnp.int32), parallel.replicated(mesh))


def _gather_params(model: nnx.Module, mesh: Mesh) -> None:
    """Replaces split parameters by full copies for the forward pass (FSDP); their gradient is split back."""
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda p: _constrain(p, parallel.replicated(mesh)), params))


def _train_step_fn(config: Any, graphdef: nnx.GraphDef, label_map: jax.Array, mesh: Mesh) -> Callable:
    """The pure single step `(state, metrics, batch) -> (state, metrics)`, not jitted."""
    base_loss_fn = make_loss_fn(config)
    shard_params = bool(config.mesh.get("shard_params", False))

    def loss_fn(model: nnx.Module, batch: Batch, label_map: jax.Array):
        if shard_params:
            _gather_params(model, mesh)
        return base_loss_fn(model, batch, label_map)

    def step(state: State, metrics: Metrics, batch: Batch) -> tuple[State, Metrics]:
        train_state = nnx.merge(graphdef, state)
        grad_fn = nnx.value_and_grad(lambda model: loss_fn(model, batch, label_map), has_aux=True)
        (_, sums), grads = grad_fn(train_state.model)
        train_state.optimizer.update(train_state.model, grads)
        sums["steps"] = jnp.ones((), jnp.float32)
        metrics = {k: v + sums[k].astype(jnp.float32) for k, v in metrics.items()}
        return nnx.state(train_state), metrics

    return step


def make_train_step(
    config: Any,
    graphdef: nnx.GraphDef,
    label_map: Any,
    *,
    mesh: Mesh,
    state_sharding: State,
    steps_per_call: int = 1,
) -> Callable[[State, Metrics, Batch], tuple[State, Metrics]]:
    """`train_step(state, metrics, batch) -> (state, metrics)`, jitted, donating state and metrics.

    steps_per_call K > 1: every batch leaf is `(K, B, ...)` and the K steps run in `lax.scan`, with the same
    result as K calls with K = 1. Metric sums accumulate until the caller resets them (`init_metrics`).
    """
    if steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}")
    step = _train_step_fn(config, graphdef, _device_label_map(label_map, mesh), mesh)
    if steps_per_call > 1:
        single = step

        def step(state: State, metrics: Metrics, batches: Batch) -> tuple[State, Metrics]:
            for name, leaf in batches.items():
                if leaf.shape[0] != steps_per_call:
                    raise ValueError(
                        f"steps_per_call={steps_per_call} but batch[{name!r}] has shape {leaf.shape}"
                    )

            def body(carry, batch):
                return single(*carry, batch), None

            (state, metrics), _ = jax.lax.scan(body, (state, metrics), batches)
            return state, metrics

    replicated = parallel.replicated(mesh)
    return jax.jit(step, donate_argnums=(0, 1), out_shardings=(state_sharding, replicated))


def make_eval_step(
    config: Any,
    graphdef: nnx.GraphDef,
    label_map: Any,
    *,
    mesh: Mesh,
    state_sharding: State,
    retrieval_language: Any | None = None,
) -> Callable[[State, Batch], dict[str, jax.Array]]:
    """`eval_step(state, batch) -> per-example outputs` (model in eval mode: no dropout, no masking).

    Classifiers: `top5` (B, k) int32 class indices best first (k = min(5, C)), `top5_prob` (B, k) float32
    softmax probabilities, `loss` (B,) cross-entropy (0 where the label is -1), `labels` (B,) int32 classes
    (-1 = species absent from training), `species` (B,) store indices, `mask` (B,) bool.
    MAE: `loss` and each of `recon_vision`, `recon_language`, `vision_to_language`, `language_to_vision` (B,),
    plus `labels`, `species`, `mask`; with `retrieval_language` ((num_store_species, L) float32, row s = the
    language vector of store species s) also `retrieval_top5` (B, 5) store species indices and
    `retrieval_rank` (B,) int32 (0 = the true species ranked first).
    Nothing is reduced: the caller drops `mask == False` rows and aggregates with `deepearth_jax.metrics`.
    """
    del state_sharding  # the state arrives with its own sharding; outputs follow the batch
    label_map_device = _device_label_map(label_map, mesh)
    classifier = is_classifier(_model_name(config))
    shard_params = bool(config.mesh.get("shard_params", False))
    species_language = None
    if not classifier and retrieval_language is not None:
        if not isinstance(retrieval_language, jax.Array):
            retrieval_language = np.asarray(retrieval_language)
        species_language = jax.device_put(retrieval_language.astype(jnp.float32), parallel.replicated(mesh))

    def eval_step(state: State, batch: Batch) -> dict[str, jax.Array]:
        model = nnx.merge(graphdef, state).model
        model.eval()
        if shard_params:
            _gather_params(model, mesh)
        labels, mask = _labels(batch, label_map_device)
        out = {"labels": labels, "species": jnp.asarray(batch["species"], jnp.int32), "mask": mask}
        if classifier:
            logits = model(_model_inputs(batch)).astype(jnp.float32)
            k = min(TOP_K, logits.shape[-1])
            log_probs = jax.nn.log_softmax(logits)
            top_log_probs, top = jax.lax.top_k(log_probs, k)
            ce = -jnp.sum(jax.nn.one_hot(labels, logits.shape[-1]) * log_probs, axis=-1)
            out.update(
                top5=top.astype(jnp.int32),
                top5_prob=jnp.exp(top_log_probs),
                loss=jnp.where(labels >= 0, ce, 0.0),
            )
            return out
        mae_out = model(_model_inputs(batch))
        out.update({name: mae_out[name] for name in (*LOSS_NAMES, "loss")})
        if species_language is not None:
            scores = model.retrieval_scores(mae_out["predicted_language"], species_language)  # (B, S)
            k = min(TOP_K, scores.shape[-1])
            _, top = jax.lax.top_k(scores, k)
            true_score = jnp.sum(jax.nn.one_hot(out["species"], scores.shape[-1]) * scores, -1, keepdims=True)
            out["retrieval_top5"] = top.astype(jnp.int32)
            out["retrieval_rank"] = jnp.sum(scores > true_score, axis=-1).astype(jnp.int32)
        return out

    return jax.jit(eval_step)


def epoch_batches(key: jax.Array, num_examples: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """One epoch's order: `(index (S, B) int32, valid (S, B) bool)`, S = ceil(N / B).

    A `jax.random.permutation(key, N)` cut into batches; the last batch is padded with index 0 and valid
    False, so every example is seen once per epoch. Deterministic in `key`; usable inside or outside jit.
    """
    steps = math.ceil(num_examples / batch_size)
    order = jax.random.permutation(key, num_examples).astype(jnp.int32)
    pad = steps * batch_size - num_examples
    index = jnp.concatenate([order, jnp.zeros((pad,), jnp.int32)]).reshape(steps, batch_size)
    valid = (jnp.arange(steps * batch_size) < num_examples).reshape(steps, batch_size)
    return index, valid


def gather_batches(data: Batch, index: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
    """Rows `index` (..., B) of each array of `data` (N, ...) -> (..., B, ...); `mask` = data mask & valid."""
    batch = {k: jnp.take(v, index, axis=0) for k, v in data.items() if k != "mask"}
    batch["mask"] = valid & (jnp.take(data["mask"], index, axis=0) if "mask" in data else True)
    return batch


def _constrain(x: jax.Array, sharding: NamedSharding) -> jax.Array:
    explicit = any(t == jax.sharding.AxisType.Explicit for t in sharding.mesh.axis_types)
    return jax.sharding.reshard(x, sharding) if explicit else jax.lax.with_sharding_constraint(x, sharding)


def make_device_epoch(
    config: Any,
    graphdef: nnx.GraphDef,
    label_map: Any,
    *,
    mesh: Mesh,
    state_sharding: State,
) -> Callable[[State, Metrics, Batch, jax.Array], tuple[State, Metrics]]:
    """`epoch(state, metrics, data, key) -> (state, metrics)`: a whole epoch in one call, for data that fits.

    `data`: the whole training arrays already on device (replicated), e.g. `species` (N,), `language` (N, L)
    or `vision_pooled` (N, D), optional `mask` (N,). The order is `epoch_batches(key, N, config.batch_size)`,
    shuffled on device; batches are gathered on device (split over the "data" axis) and the steps run in
    `lax.scan`. Same parameters as feeding those batches one by one to `make_train_step`.
    """
    step = _train_step_fn(config, graphdef, _device_label_map(label_map, mesh), mesh)
    batch_size = int(config.batch_size)
    batch_sharding = NamedSharding(mesh, PartitionSpec(parallel.DATA_AXIS))

    def epoch(state: State, metrics: Metrics, data: Batch, key: jax.Array) -> tuple[State, Metrics]:
        num_examples = data["species"].shape[0]
        index, valid = epoch_batches(key, num_examples, batch_size)

        def body(carry, inputs):
            batch = gather_batches(data, *inputs)
            batch = {k: _constrain(v, batch_sharding) for k, v in batch.items()}
            return step(*carry, batch), None

        (state, metrics), _ = jax.lax.scan(body, (state, metrics), (index, valid))
        return state, metrics

    return jax.jit(epoch, donate_argnums=(0, 1), out_shardings=(state_sharding, parallel.replicated(mesh)))
