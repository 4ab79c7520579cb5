"""The trainer's K = 1 step vs a bare `jax.jit` of the same math: what the wrapper costs per call.

The language classifier is shrunk to 16 -> 8 -> 8 -> 10 (dropout 0) at batch 8, so compute is nil and the
figures are dispatch overhead: `steps.make_train_step` (the trainer's step, its state carried as a
`steps.FlatState` as the trainer does, plus the loop's per-call `StopOnSigterm.reached` question) against
plain pytree params + `optax.adam` in one donated `jax.jit`. Both are timed alternately in the same process.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

IN, HIDDEN, CLASSES, BATCH = 16, (8, 8), 10, 8


def _shrunk(config: Any) -> Any:
    config = config.copy_and_resolve_references()
    config.unlock()
    config.model.hidden = HIDDEN
    config.model.dropout = 0.0
    config.demo.language_dim = IN
    config.batch_size = BATCH
    return config


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "species": rng.integers(0, CLASSES, BATCH).astype(np.int32),
        "mask": np.ones(BATCH, bool),
        "language": rng.standard_normal((BATCH, IN), np.float32),
    }


def _trainer_step(config: Any, mesh: Any, host: dict) -> Any:
    from deepearth_jax import parallel, steps
    from deepearth_jax.checkpoint import StopOnSigterm

    graphdef, state = steps.create_train_state(
        config,
        input_dims={"language": IN, "vision": 1},
        num_classes=CLASSES,
        total_steps=10**6,
        mesh=mesh,
        seed=0,
    )
    train_step = steps.make_train_step(
        config,
        graphdef,
        np.arange(CLASSES, dtype=np.int32),
        mesh=mesh,
        state_sharding=steps.state_sharding_of(state),
    )
    batch = jax.device_put(host, parallel.batch_sharding(mesh))
    carry = [steps.FlatState.of(state), steps.init_metrics(config, mesh)]  # as the trainer carries it
    stopper = StopOnSigterm()  # the loop asks it once per call (processes agree on stopping)

    def call() -> None:
        carry[0], carry[1] = train_step(carry[0], carry[1], batch)
        stopper.reached(0)

    return call, carry


def _bare_step(lr: float, host: dict) -> Any:
    sizes = [IN, *HIDDEN, CLASSES]
    rng = np.random.default_rng(0)
    params = [
        {
            "kernel": jnp.asarray(rng.uniform(-0.3, 0.3, (a, b)), jnp.float32),
            "bias": jnp.zeros((b,), jnp.float32),
        }
        for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    tx = optax.adam(lr)

    def loss_fn(params, batch):
        x = batch["language"]
        for layer in params[:-1]:
            x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
        logits = x @ params[-1]["kernel"] + params[-1]["bias"]
        labels = batch["species"]
        weight = batch["mask"].astype(jnp.float32)
        per_example = -jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(labels, CLASSES), axis=-1)
        loss_sum = jnp.sum(per_example * weight)
        count = jnp.sum(weight)
        correct = jnp.sum((jnp.argmax(logits, -1) == labels) * weight)
        return loss_sum / jnp.maximum(count, 1.0), (loss_sum, correct, count)

    def step(params, opt_state, sums, batch):
        grads, aux = jax.grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (
            optax.apply_updates(params, updates),
            opt_state,
            tuple(s + a for s, a in zip(sums, aux, strict=True)),
        )

    jitted = jax.jit(step, donate_argnums=(0, 1, 2))
    batch = jax.device_put(host)
    carry = [params, tx.init(params), tuple(jnp.zeros((), jnp.float32) for _ in range(3))]

    def call() -> None:
        carry[0], carry[1], carry[2] = jitted(carry[0], carry[1], carry[2], batch)

    return call, carry


def _time(call: Any, carry: list, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    jax.block_until_ready([getattr(c, "leaves", c) for c in carry])  # a FlatState: its leaves
    return (time.perf_counter() - start) / calls * 1e6


def measure(config: Any, mesh: Any, min_time: float = 2.0) -> dict[str, Any]:
    """{"trainer_us_per_step", "bare_jit_us_per_step", "overhead_ratio", ...}: best of alternating rounds."""
    config = _shrunk(config)
    host = _batch()
    trainer, trainer_carry = _trainer_step(config, mesh, host)
    bare, bare_carry = _bare_step(float(config.optimizer.lr), host)
    for call, carry in ((trainer, trainer_carry), (bare, bare_carry)):
        _time(call, carry, 20)  # compile + warm up
    best_trainer, best_bare, start = float("inf"), float("inf"), time.perf_counter()
    while time.perf_counter() - start < min_time or best_trainer == float("inf"):
        best_trainer = min(best_trainer, _time(trainer, trainer_carry, 200))
        best_bare = min(best_bare, _time(bare, bare_carry, 200))
    return {
        "overhead": True,
        "model": f"language_classifier {IN}->{'->'.join(map(str, HIDDEN))}->{CLASSES}",
        "batch_size": BATCH,
        "steps_per_call": 1,
        "trainer_us_per_step": round(best_trainer, 2),
        "bare_jit_us_per_step": round(best_bare, 2),
        "overhead_ratio": round(best_trainer / best_bare, 3),
    }
