"""Optimizers from `config.optimizer`: Adam/AdamW, constant/cosine schedule, warmup, clipping, accumulation.

Fields: `name` (adam | adamw), `lr`, `weight_decay`, `schedule` (constant | cosine), `warmup_steps`,
`grad_clip` (global-norm clip, 0 = off), `accumulate_steps` (optax.MultiSteps, 1 = off); optional `eps`
(Adam's epsilon, default 1e-8 as in PyTorch).

`adam` with weight_decay > 0 adds L2 to the gradient before Adam (PyTorch's `Adam(weight_decay=...)`);
`adamw` decays decoupled from the gradient (PyTorch's `AdamW`), on kernels only (arrays of rank >= 2), not on
biases and LayerNorm scales.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from deepearth_jax.errors import ConfigError

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")


def _kernels_only(params: Any) -> Any:
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_schedule(opt_config: Any, total_updates: int) -> optax.Schedule:
    """Learning rate per update: linear warmup from 0 over `warmup_steps`, then constant or cosine to 0."""
    lr = float(opt_config["lr"])
    warmup = int(opt_config.get("warmup_steps", 0))
    schedule = opt_config.get("schedule", "constant")
    if lr <= 0:
        raise ConfigError(f"optimizer.lr must be > 0, got {lr}")
    if warmup < 0:
        raise ConfigError(f"optimizer.warmup_steps must be >= 0, got {warmup}")
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown optimizer.schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if schedule == "cosine":
        decay_steps = max(total_updates, warmup + 1)
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, decay_steps, end_value=0.0)
    if warmup == 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], boundaries=[warmup]
    )


def make_optimizer(opt_config: Any, total_steps: int) -> optax.GradientTransformation:
    """The optax transformation for `config.optimizer`; `total_steps` = train steps of the run (for cosine).

    With accumulate_steps = k > 1, the parameters change every k steps (optax.MultiSteps averages the k
    gradients) and the schedule counts those updates: total_steps // k of them.
    """
    name = opt_config["name"]
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    weight_decay = float(opt_config.get("weight_decay", 0.0))
    grad_clip = float(opt_config.get("grad_clip", 0.0))
    accumulate = int(opt_config.get("accumulate_steps", 1))
    eps = float(opt_config.get("eps", 1e-8))
    if weight_decay < 0 or grad_clip < 0:
        raise ConfigError(
            f"optimizer weight_decay and grad_clip must be >= 0, got {weight_decay}, {grad_clip}"
        )
    if accumulate < 1:
        raise ConfigError(f"optimizer.accumulate_steps must be >= 1, got {accumulate}")
    schedule = make_schedule(opt_config, max(1, total_steps // accumulate))
    parts = []
    if grad_clip > 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    if name == "adam":
        if weight_decay > 0:
            parts.append(optax.add_decayed_weights(weight_decay))
        parts.append(optax.adam(schedule, eps=eps))
    else:
        parts.append(optax.adamw(schedule, eps=eps, weight_decay=weight_decay, mask=_kernels_only))
    tx = parts[0] if len(parts) == 1 else optax.chain(*parts)
    if accumulate > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate).gradient_transformation()
    return tx
