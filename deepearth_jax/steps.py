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

from deepearth_jax import parallel, tasks
from deepearth_jax.errors import ConfigError
from deepearth_jax.models import create_model
from deepearth_jax.models.config_error import ModelConfigError
from deepearth_jax.optim import make_optimizer

Batch = Mapping[str, jax.Array]
State = Any  # an nnx.State pytree: {"model": ..., "optimizer": ...}
Metrics = dict[str, jax.Array]


class TrainState(nnx.Module):
    """The model and its optimizer, split together so one `state` pytree holds everything a step changes."""

    def __init__(self, model: nnx.Module, optimizer: nnx.Optimizer):
        self.model = model
        self.optimizer = optimizer


def build_train_state(
    config: Any, *, input_dims: Mapping[str, int], num_classes: int, total_steps: int, seed: int
) -> TrainState:
    """The unsplit `TrainState` (model in train mode + optimizer) (what `create_train_state` traces)."""
    tx = make_optimizer(config.optimizer, total_steps)
    try:
        model = create_model(
            config.model,
            input_dims=input_dims,
            num_classes=num_classes,
            rngs=nnx.Rngs(seed),
            dtype=str(config.get("dtype", "float32")),
        )
    except ModelConfigError as e:  # a user's config field; any other error from the model is a bug
        raise ConfigError(f"config.model: {e}") from None
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


class FlatState:
    """A train state carried between step calls as its flat leaf list (what the jitted steps take).

    Flattening and rebuilding an `nnx.State` runs Python callbacks per node on every call; a step given a
    `FlatState` skips both and returns a `FlatState`. `.state` rebuilds the `nnx.State` (for evaluation and
    checkpoints), once per `FlatState`. Like the state itself, it is invalid after being passed to a step
    (its arrays are donated).
    """

    __slots__ = ("leaves", "treedef", "_state")

    def __init__(self, leaves: list[jax.Array], treedef: Any, state: State | None = None):
        self.leaves, self.treedef, self._state = leaves, treedef, state

    @classmethod
    def of(cls, state: State) -> FlatState:
        leaves, treedef = jax.tree.flatten(state)
        return cls(leaves, treedef, state)

    @property
    def state(self) -> State:
        if self._state is None:
            self._state = jax.tree.unflatten(self.treedef, self.leaves)
        return self._state


def as_state(state: State | FlatState) -> State:
    """The `nnx.State` of a state or `FlatState`."""
    return state.state if isinstance(state, FlatState) else state


def _flat_jit(fn: Callable, state_sharding: State, mesh: Mesh) -> Callable:
    """jit `fn(state, metrics, *args) -> (state, metrics)` over the state's leaf list, donating state and
    metrics; the returned call takes an `nnx.State` (returns one) or a `FlatState` (returns one)."""
    treedef = jax.tree.structure(state_sharding)

    def flat(leaves, metrics, *args):
        state, metrics = fn(jax.tree.unflatten(treedef, leaves), metrics, *args)
        return jax.tree.leaves(state), metrics

    jitted = jax.jit(
        flat,
        donate_argnums=(0, 1),
        out_shardings=(jax.tree.leaves(state_sharding), parallel.replicated(mesh)),
    )

    def call(state, metrics, *args):
        if type(state) is FlatState:
            leaves, metrics = jitted(state.leaves, metrics, *args)
            return FlatState(leaves, treedef), metrics
        leaves, metrics = jitted(jax.tree.leaves(state), metrics, *args)
        return jax.tree.unflatten(treedef, leaves), metrics

    call.jitted = jitted
    return call


def state_sharding_of(state: State) -> State:
    """The sharding of every leaf of `state` (what `make_train_step` wants as `state_sharding`)."""
    return jax.tree.map(lambda x: x.sharding, state)


def metric_names(config: Any) -> tuple[str, ...]:
    """The device metric sums the train step accumulates: the task's `<name>_sum`, `count`, `steps`."""
    return (*(f"{name}_sum" for name in tasks.from_config(config).TRAIN_METRICS), "count", "steps")


def init_metrics(config: Any, mesh: Mesh | None = None) -> Metrics:
    """Zeroed float32 device scalars, one per `metric_names(config)`; reset by calling again at each log."""
    metrics = {name: jnp.zeros((), jnp.float32) for name in metric_names(config)}
    if mesh is not None:
        metrics = jax.device_put(metrics, parallel.replicated(mesh))
    return metrics


def summarize_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Device sums -> host means over `count`: `loss`, the task's other metrics, `count`, `steps`."""
    host = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
    count = max(host["count"], 1.0)
    out = {"count": host["count"], "steps": host["steps"]}
    out.update({key[: -len("_sum")]: value / count for key, value in host.items() if key.endswith("_sum")})
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
    """The pure single step `(state, metrics, batch) -> (state, metrics)`, not jitted; the task's loss."""
    task = tasks.from_config(config)
    shard_params = bool(config.mesh.get("shard_params", False))

    def loss_fn(model: nnx.Module, batch: Batch, label_map: jax.Array):
        if shard_params:
            _gather_params(model, mesh)
        labels, mask = _labels(batch, label_map)
        return task.loss(model, _model_inputs(batch), labels, mask)

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
    """`train_step(state, metrics, batch) -> (state, metrics)`, jitted, donating state and metrics; `state`
    an `nnx.State` or (cheaper per call) a `FlatState`, returned in the same form.

    steps_per_call K > 1: every batch leaf is `(K, B, ...)` and the K steps run in `lax.scan`, with the same
    result as K calls with K = 1. Metric sums accumulate until the caller resets them (`init_metrics`).
    """
    if steps_per_call < 1:
        raise ConfigError(f"steps_per_call must be >= 1, got {steps_per_call}")
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

    return _flat_jit(step, state_sharding, mesh)


def make_eval_step(
    config: Any,
    graphdef: nnx.GraphDef,
    label_map: Any,
    *,
    mesh: Mesh,
    state_sharding: State,
    constants: Mapping[str, Any] | None = None,
) -> Callable[[State, Batch], dict[str, jax.Array]]:
    """`eval_step(state, batch) -> per-example outputs` (model in eval mode: no dropout, no masking).

    Every task gives `labels` (B,) int32 classes (-1 = species absent from training), `species` (B,) store
    indices and `mask` (B,) bool, plus its own `eval_outputs` (see `deepearth_jax.tasks`); `constants` are
    the task's `eval_constants(store)`, placed replicated once. Nothing is reduced: the caller drops
    `mask == False` rows and aggregates with the task's `summarize`.
    """
    del state_sharding  # the state arrives with its own sharding; outputs follow the batch
    task = tasks.from_config(config)
    label_map_device = _device_label_map(label_map, mesh)
    shard_params = bool(config.mesh.get("shard_params", False))
    device_constants = jax.device_put(
        {k: np.asarray(v) for k, v in (constants or {}).items()}, parallel.replicated(mesh)
    )

    def eval_step(state: State, batch: Batch) -> dict[str, jax.Array]:
        model = nnx.merge(graphdef, state).model
        model.eval()
        if shard_params:
            _gather_params(model, mesh)
        labels, mask = _labels(batch, label_map_device)
        species = jnp.asarray(batch["species"], jnp.int32)
        out = {"labels": labels, "species": species, "mask": mask}
        out.update(task.eval_outputs(model, _model_inputs(batch), labels, species, device_constants))
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

    return _flat_jit(epoch, state_sharding, mesh)
