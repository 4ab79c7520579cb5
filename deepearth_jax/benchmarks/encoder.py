"""`python -m deepearth_jax.benchmark encoder`: Earth4D forward + backward, JAX vs the PyTorch implementation.

One call = encode `--points` random coordinates, then the gradient of sum(encoding * cotangent) with respect
to the whole table: JAX as one jitted `value_and_grad`, PyTorch eagerly (`index_select`, autograd's
`index_add_`), same layouts, table and points, in one process. Reports us per call and the ratio
torch_us / jax_us (> 1: JAX is faster).

    python -m deepearth_jax.benchmark encoder --points 65536 --compare-torch --json /tmp/e.json
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from deepearth_jax.errors import CliError
from deepearth_jax.io import write_json_atomic
from deepearth_jax.models import earth4d as e4d


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--points", type=int, default=65536, help="points per call (default 65536)")
    p.add_argument("--compare-torch", action="store_true", help="also time the PyTorch implementation")
    p.add_argument("--elevation", action="store_true", help="use the elevation axis (3-D grids throughout)")
    p.add_argument("--interpolation", choices=e4d.INTERPOLATIONS, default="linear")
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of timed calls per setting (3)")
    p.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")


def _timed(fn, min_time: float) -> float:
    """Microseconds per call of fn() (which blocks), after two warm-up calls."""
    fn()
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and calls >= 3:
            return elapsed / calls * 1e6


def time_jax(layouts, config, table, coords, cotangent, min_time) -> tuple[float, float]:
    """(compile seconds, us per forward + backward call)."""

    @jax.jit
    def step(t, c, g):
        def loss(t):
            return jnp.sum(e4d.encode(t, c, layouts, config.interpolation) * g)

        return jax.value_and_grad(loss)(t)

    args = [jax.device_put(v) for v in (table, coords, cotangent)]
    start = time.perf_counter()
    jax.block_until_ready(step(*args))
    compile_s = time.perf_counter() - start
    return compile_s, _timed(lambda: jax.block_until_ready(step(*args)), min_time)


def time_torch(layouts, config, table, coords, cotangent, min_time) -> tuple[float, int]:
    """(us per forward + backward call, threads): the faster of PyTorch's default thread count and 1."""
    import torch

    from deepearth_jax.benchmarks.torch_earth4d import TorchEarth4D

    encoder = TorchEarth4D(layouts, config.interpolation)
    t_table = torch.from_numpy(table).requires_grad_(True)
    t_coords, t_cot = torch.from_numpy(coords), torch.from_numpy(cotangent)

    def step():
        t_table.grad = None
        loss = (encoder.encode(t_table, t_coords) * t_cot).sum()
        loss.backward()

    default_threads, results = torch.get_num_threads(), []
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        results.append((_timed(step, min_time), threads))
    torch.set_num_threads(default_threads)
    return min(results)


def run(args: argparse.Namespace) -> int:
    if args.points < 1 or args.min_time <= 0:
        raise CliError(f"--points must be >= 1 and --min-time > 0, got {args.points}, {args.min_time}")
    if args.compare_torch:
        try:
            import torch
        except ImportError:
            raise CliError("--compare-torch needs PyTorch: pip install torch (CPU build is enough)") from None
        if jax.default_backend() != "cpu":
            raise CliError("--compare-torch compares on CPU only: run with JAX_PLATFORMS=cpu")
    config = e4d.Earth4DConfig(use_elevation=args.elevation, interpolation=args.interpolation)
    layouts = e4d.build_layouts(config)
    rng = np.random.default_rng(0)
    entries = e4d.table_entries(layouts)
    table = rng.uniform(-1e-4, 1e-4, (entries, config.features)).astype(np.float32)
    coords = rng.random((args.points, 5), np.float32)
    cotangent = rng.standard_normal((args.points, len(layouts) * config.levels * config.features), np.float32)
    print(
        f"Earth4D {', '.join(layout.name for layout in layouts)}: {config.levels} levels x "
        f"{config.features} features, table 2^{config.log2_table_size}, "
        f"{entries * config.features:,} parameters"
        f"; {args.points} points; JAX {jax.__version__} on {jax.default_backend()}"
    )
    compile_s, jax_us = time_jax(layouts, config, table, coords, cotangent, args.min_time)
    result = {
        "points": args.points,
        "config": dataclasses.asdict(config),
        "parameters": entries * config.features,
        "jax_backend": jax.default_backend(),
        "jax_compile_s": round(compile_s, 3),
        "jax_us_per_call": round(jax_us, 1),
        "torch_us_per_call": None,
        "torch_threads": None,
        "ratio": None,
    }
    print(f"JAX   forward+backward: {jax_us:12.0f} us/call (compile {compile_s:.2f} s)")
    if args.compare_torch:
        torch_us, threads = time_torch(layouts, config, table, coords, cotangent, args.min_time)
        result.update(
            torch_version=torch.__version__,
            torch_us_per_call=round(torch_us, 1),
            torch_threads=threads,
            ratio=round(torch_us / jax_us, 3),
        )
        print(f"torch forward+backward: {torch_us:12.0f} us/call ({threads} threads)")
        print(f"ratio torch / JAX: {torch_us / jax_us:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    return 0
