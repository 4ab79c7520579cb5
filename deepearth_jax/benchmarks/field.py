"""`python -m deepearth_jax.benchmark field`: fit a synthetic field f(x, y, t) with Earth4D + MLP, and with
random Fourier features (RFF) + MLP of the same parameter count; report held-out PSNR.

The field on [0, 1]^3 (t: a 15-year span) mixes smooth waves of several frequencies in space and time, a
seasonal cycle (day of year = frac(15 t)) and a sharp edge: a disc whose radius grows with t. Training on
`--points` uniform points, testing on 2^14 other uniform points; both models take `--steps` Adam steps of
`--batch` points (lr decays by cosine to 10%). PSNR = 10 log10(peak-to-peak^2 / MSE) over the test targets.
The RFF frequency scale is chosen among (1, 2, 4, 8) on a validation set disjoint from the test set.

    python -m deepearth_jax.benchmark field --json /tmp/f.json
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from deepearth_jax.errors import CliError
from deepearth_jax.io import write_json_atomic
from deepearth_jax.models import earth4d as e4d

log = logging.getLogger(__name__)

YEARS = 15.0
TEST_POINTS = 1 << 14
RFF_SCALES = (1.0, 2.0, 4.0, 8.0)
FIELD_ENCODER = e4d.Earth4DConfig(
    levels=8,
    features=2,
    log2_table_size=12,
    spatial_resolution=(8.0, 256.0),
    time_resolution=(4.0, 128.0),
    doy_resolution=(2.0, 32.0),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--points", type=int, default=1 << 16, help="training points (default 65536)")
    p.add_argument("--steps", type=int, default=2000, help="Adam steps per model (default 2000)")
    p.add_argument("--batch", type=int, default=4096, help="points per step (default 4096)")
    p.add_argument("--hidden", type=int, default=64, help="Earth4D MLP width (default 64)")
    p.add_argument("--interpolation", choices=e4d.INTERPOLATIONS, default=FIELD_ENCODER.interpolation)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")


def field(xyt: np.ndarray) -> np.ndarray:
    """f(x, y, t) float32 for points `(N, 3)` in [0, 1]: waves, a season and a sharp moving edge."""
    x, y, t = (xyt[:, i].astype(np.float64) for i in range(3))
    doy = np.mod(t * YEARS, 1.0)
    value = 0.15 * np.sin(2 * np.pi * (3 * x + 2 * y))
    value += 0.10 * np.sin(2 * np.pi * 7 * x) * np.cos(2 * np.pi * 5 * y)
    value += 0.05 * np.sin(2 * np.pi * (11 * y + 3 * t))
    value += 0.10 * np.sin(2 * np.pi * doy)
    value += 0.05 * np.sin(2 * np.pi * 2 * t)
    radius = 0.15 + 0.1 * t
    value += np.where((x - 0.55) ** 2 + (y - 0.45) ** 2 < radius**2, 0.3, 0.0)
    return value.astype(np.float32)


def earth4d_coords(xyt: jax.Array) -> jax.Array:
    """(N, 5) encoder coordinates of (x, y, t): no elevation, day of year from t over 15 years."""
    x, y, t = xyt[:, 0], xyt[:, 1], xyt[:, 2]
    return jnp.stack([x, y, jnp.full_like(x, 0.5), t, jnp.mod(t * YEARS, 1.0)], axis=-1)


class Earth4DField(nnx.Module):
    """(N, 3) -> (N,): Earth4D encoding -> MLP (two hidden ReLU layers)."""

    def __init__(self, config: e4d.Earth4DConfig, hidden: int, *, rngs: nnx.Rngs):
        self.encoder = e4d.Earth4D(config, rngs=rngs)
        self.mlp = _mlp(self.encoder.output_dim, hidden, rngs)

    def __call__(self, xyt: jax.Array) -> jax.Array:
        return _apply(self.mlp, self.encoder(earth4d_coords(xyt)))


class FourierField(nnx.Module):
    """(N, 3) -> (N,): [sin, cos](2 pi B xyt), B ~ N(0, scale^2) fixed, -> MLP (two hidden ReLU layers)."""

    def __init__(self, frequencies: int, scale: float, hidden: int, *, rngs: nnx.Rngs):
        self.frequencies = nnx.Variable(scale * jax.random.normal(rngs.params(), (3, frequencies)))
        self.mlp = _mlp(2 * frequencies, hidden, rngs)

    def __call__(self, xyt: jax.Array) -> jax.Array:
        phase = 2 * jnp.pi * xyt @ self.frequencies[...]
        return _apply(self.mlp, jnp.concatenate([jnp.sin(phase), jnp.cos(phase)], axis=-1))


def _mlp(inputs: int, hidden: int, rngs: nnx.Rngs) -> nnx.List:
    return nnx.List(
        [nnx.Linear(inputs, hidden, rngs=rngs), nnx.Linear(hidden, hidden, rngs=rngs)]
        + [nnx.Linear(hidden, 1, rngs=rngs)]
    )


def _apply(layers: nnx.List, h: jax.Array) -> jax.Array:
    for layer in layers[:-1]:
        h = jax.nn.relu(layer(h))
    return layers[-1](h)[:, 0]


def parameter_count(model: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def rff_size_for(parameters: int, hidden: int = 256) -> int:
    """Frequencies m so that an RFF MLP (2m -> hidden -> hidden -> 1) has about `parameters` parameters."""
    fixed = hidden * hidden + 2 * hidden + hidden + 1
    return max(1, round((parameters - fixed) / (2 * hidden)))


def fit(model: nnx.Module, xyt: np.ndarray, target: np.ndarray, steps: int, batch: int, lr: float, seed: int):
    """Adam (b2 0.99, eps 1e-15), cosine decay to 10%, minibatches drawn with replacement; returns the model
    and the seconds spent (after compiling)."""
    schedule = optax.cosine_decay_schedule(lr, steps, alpha=0.1)
    tx = optax.adam(schedule, b1=0.9, b2=0.99, eps=1e-15)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)
    xyt, target = jnp.asarray(xyt), jnp.asarray(target)
    chunk = math.gcd(steps, 100)

    @jax.jit
    def run_chunk(params, opt_state, key):
        def step(carry, key):
            params, opt_state = carry
            rows = jax.random.randint(key, (batch,), 0, xyt.shape[0])

            def loss_fn(p):
                pred = nnx.merge(graphdef, p, rest)(xyt[rows])
                return jnp.mean((pred - target[rows]) ** 2)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), jax.random.split(key, chunk))
        return params, opt_state, losses[-1]

    key = jax.random.key(seed)
    jax.block_until_ready(run_chunk.lower(params, opt_state, key).compile())
    start = time.perf_counter()
    for _ in range(steps // chunk):
        key, sub = jax.random.split(key)
        params, opt_state, loss = run_chunk(params, opt_state, sub)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    log.info("final training loss %.3g", float(loss))
    return nnx.merge(graphdef, params, rest), seconds


def psnr(model: nnx.Module, xyt: np.ndarray, target: np.ndarray) -> float:
    pred = np.asarray(jax.jit(lambda m, v: m(v))(model, jnp.asarray(xyt)))
    mse = float(np.mean((pred - target) ** 2))
    return 10 * math.log10(float(np.ptp(target)) ** 2 / mse)


def run(args: argparse.Namespace) -> int:
    if min(args.points, args.steps, args.batch, args.hidden) < 1:
        raise CliError("--points, --steps, --batch and --hidden must be >= 1")
    rng = np.random.default_rng(args.seed)
    train_x, val_x, test_x = (rng.random((n, 3)).astype(np.float32) for n in (args.points, 4096, TEST_POINTS))
    train_y, val_y, test_y = field(train_x), field(val_x), field(test_x)
    config = dataclasses.replace(FIELD_ENCODER, interpolation=args.interpolation)
    earth = Earth4DField(config, args.hidden, rngs=nnx.Rngs(args.seed))
    size = parameter_count(earth)
    print(
        f"field: {args.points} training points, {TEST_POINTS} test points, {args.steps} steps of {args.batch}"
    )
    earth, earth_s = fit(earth, train_x, train_y, args.steps, args.batch, 1e-2, args.seed)
    earth_psnr = psnr(earth, test_x, test_y)
    print(f"Earth4D + MLP: {size:,} parameters, test PSNR {earth_psnr:.2f} dB ({earth_s:.1f} s)")
    frequencies = rff_size_for(size)
    best = None
    for scale in RFF_SCALES:
        rff = FourierField(frequencies, scale, 256, rngs=nnx.Rngs(args.seed))
        rff, rff_s = fit(rff, train_x, train_y, args.steps, args.batch, 1e-3, args.seed)
        val = psnr(rff, val_x, val_y)
        print(f"RFF scale {scale:g}: validation PSNR {val:.2f} dB ({rff_s:.1f} s)")
        if best is None or val > best[0]:
            best = (val, scale, rff, rff_s)
    _, scale, rff, rff_s = best
    rff_psnr = psnr(rff, test_x, test_y)
    rff_size = parameter_count(rff)
    print(f"RFF + MLP (scale {scale:g}): {rff_size:,} parameters, test PSNR {rff_psnr:.2f} dB")
    print(f"Earth4D - RFF: {earth_psnr - rff_psnr:+.2f} dB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            args.json,
            {
                "points": args.points,
                "steps": args.steps,
                "batch": args.batch,
                "earth4d": {
                    "config": dataclasses.asdict(config),
                    "parameters": size,
                    "test_psnr_db": round(earth_psnr, 3),
                    "train_s": round(earth_s, 2),
                },
                "rff": {
                    "frequencies": frequencies,
                    "scale": scale,
                    "parameters": rff_size,
                    "test_psnr_db": round(rff_psnr, 3),
                    "train_s": round(rff_s, 2),
                },
                "psnr_gain_db": round(earth_psnr - rff_psnr, 3),
            },
        )
        print(f"wrote {args.json}")
    return 0
