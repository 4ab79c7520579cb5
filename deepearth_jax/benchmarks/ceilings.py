"""What the device can do, measured in the same run as the steps it bounds, and what a compiled step costs.

- `matmul_ceiling(dtype)`: FLOP/s of a large square `jnp.dot` in float32 or bfloat16 (the best of a few
  timed rounds), the compute roof;
- `copy_ceiling()`: bytes/s of a device memory pass (`x + 1` in place over an array far larger than any
  cache, bytes read + written), the memory roof;
- `compiled_costs(jitted, *args)`: FLOPs and bytes accessed of one call from XLA's cost analysis of the
  compiled program, and its peak device memory from the compiled memory analysis.

XLA's cost analysis counts a `lax.scan` body once, not once per iteration, so a K-steps-per-call program's
per-step cost is taken from the K = 1 program of the same step (same math).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _best_seconds(fn: Callable[[], Any], min_time: float, rounds: int = 5) -> float:
    """The fastest of `rounds` timed runs of `fn` (each repeated until it spans min_time / rounds). Every
    call is waited for: the ops timed here are large, and queueing them unwaited would overshoot."""
    jax.block_until_ready(fn())  # compile and warm up
    best = float("inf")
    for _ in range(rounds):
        n, start = 0, time.perf_counter()
        while True:
            jax.block_until_ready(fn())
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time / rounds:
                break
        best = min(best, elapsed / n)
    return best


def _default_matmul_size() -> int:
    return 2048 if jax.default_backend() == "cpu" else 8192


def matmul_ceiling(dtype: str = "float32", n: int | None = None, min_time: float = 1.0) -> float:
    """FLOP/s of an (n, n) @ (n, n) product in `dtype` (2 n^3 FLOPs), on the default device."""
    n = n or _default_matmul_size()
    dt = jnp.dtype(dtype)
    a = jax.random.normal(jax.random.key(0), (n, n), dt)
    b = jax.random.normal(jax.random.key(1), (n, n), dt)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=dt))
    return 2.0 * n**3 / _best_seconds(lambda: matmul(a, b), min_time)


def copy_ceiling(nbytes: int | None = None, min_time: float = 1.0) -> float:
    """Bytes/s (read + written) of an elementwise pass over a float32 array of `nbytes` bytes, in place
    (donated): a fresh output buffer per call would time the allocator's page faults, not memory."""
    nbytes = nbytes or (256 << 20 if jax.default_backend() == "cpu" else 2 << 30)
    state = {"x": jnp.zeros((nbytes // 4,), jnp.float32)}
    step = jax.jit(lambda v: v + 1.0, donate_argnums=0)

    def copy():
        state["x"] = step(state["x"])
        return state["x"]

    return 2.0 * nbytes / _best_seconds(copy, min_time)


def measure_ceilings(
    min_time: float = 1.0, matmul_size: int | None = None, copy_bytes: int | None = None
) -> dict[str, float]:
    """{"matmul_flops_float32", "matmul_flops_bfloat16", "copy_bytes_per_s"} on the default device
    (sizes: see `matmul_ceiling`, `copy_ceiling`; None = the defaults for the backend)."""
    return {
        "matmul_flops_float32": matmul_ceiling("float32", matmul_size, min_time),
        "matmul_flops_bfloat16": matmul_ceiling("bfloat16", matmul_size, min_time),
        "copy_bytes_per_s": copy_ceiling(copy_bytes, min_time),
    }


def compiled_costs(jitted: Callable, *args) -> dict[str, float]:
    """{"flops", "bytes", "peak_memory_bytes"} of one call of `jitted` (a `jax.jit` object) on `args`.

    Lowering and compiling hit the jit cache when the same call already ran; nothing is executed."""
    compiled = jitted.lower(*args).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # one dict per program in some jax versions
        cost = cost[0] if cost else {}
    memory = compiled.memory_analysis()
    peak = getattr(memory, "peak_memory_in_bytes", 0) if memory is not None else 0
    if not peak and memory is not None:  # older jaxlibs: arguments + outputs + temporaries, less aliases
        peak = (
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes
        )
    return {
        "flops": float(cost.get("flops", float("nan"))),
        "bytes": float(cost.get("bytes accessed", float("nan"))),
        "peak_memory_bytes": int(peak),
    }


def utilisation(
    costs: dict[str, float], us_per_step: float, ceilings: dict[str, float], dtype: str
) -> dict[str, Any]:
    """A row's achieved FLOP/s and bytes/s, the fraction of each ceiling, and which roof binds.

    `bound`: "compute" or "memory" by the roofline (arithmetic intensity against the ridge point), or
    "overhead" when the step takes over 3x what the binding roof allows: the time goes to dispatch and
    synchronisation (small steps; the K-steps-per-call rows show the gain) or to kernels far from either roof.
    """
    seconds = us_per_step * 1e-6
    flops_ceiling = ceilings[f"matmul_flops_{dtype}"]
    achieved_flops, achieved_bytes = costs["flops"] / seconds, costs["bytes"] / seconds
    roof_seconds = max(costs["flops"] / flops_ceiling, costs["bytes"] / ceilings["copy_bytes_per_s"])
    intensity = costs["flops"] / max(costs["bytes"], 1.0)
    ridge = flops_ceiling / ceilings["copy_bytes_per_s"]
    bound = "compute" if intensity >= ridge else "memory"
    if seconds > 3.0 * roof_seconds:
        bound = "overhead"
    return {
        "flops_per_step": costs["flops"],
        "bytes_per_step": costs["bytes"],
        "peak_memory_bytes": costs["peak_memory_bytes"],
        "achieved_flops_per_s": achieved_flops,
        "achieved_bytes_per_s": achieved_bytes,
        "utilisation_flops": achieved_flops / flops_ceiling,
        "utilisation_bytes": achieved_bytes / ceilings["copy_bytes_per_s"],
        "bound": bound,
    }


def largest_batch(batch_sizes: list[int], peaks: list[int], memory_bytes: float) -> dict[str, float] | None:
    """Peak memory as a + b * batch (least squares over the measured batch sizes) and the largest batch
    with a + b * batch <= memory_bytes; None with fewer than two distinct batch sizes."""
    if len(set(batch_sizes)) < 2:
        return None
    b, a = np.polyfit(np.asarray(batch_sizes, np.float64), np.asarray(peaks, np.float64), 1)
    if b <= 0:
        return None
    return {
        "fixed_bytes": float(a),
        "bytes_per_example": float(b),
        "memory_bytes": float(memory_bytes),
        "largest_batch": int(max(0.0, np.floor((memory_bytes - a) / b + 1e-6))),  # fit noise: +1e-6
    }


def device_memory_bytes() -> float:
    """The default device's memory: its allocator's limit on accelerators, the host's RAM on CPU."""
    stats = jax.devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return float(stats["bytes_limit"])
    import os

    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
