"""`python -m deepearth_jax.benchmark step`: the trainer's jitted train step vs PyTorch eager.

For each (batch size, steps per call) it builds the REAL step (`steps.create_train_state` +
`steps.make_train_step` from the config), feeds random inputs of the config's shapes already on device, and
reports compile time (first call: trace + compile + one run), us/step and samples/s. With `--compare-torch`,
the same model (PyTorch's nn.Linear layers, same widths and dropout) and optimizer run eagerly on the same
device in the same process, and the ratio torch_us / jax_us is reported (> 1: JAX is faster).

    python -m deepearth_jax.benchmark step --config configs/language.py --batch-sizes 32 \\
        --steps-per-call 1,100 --compare-torch --json /tmp/s.json

The PyTorch reference models live in `deepearth_jax/benchmarks/torch_reference.py` (the parity tests use
them too).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from deepearth_jax.benchmarks.torch_reference import torch_optimizer, torch_reference_model
from deepearth_jax.data import modes
from deepearth_jax.errors import CliError

log = logging.getLogger(__name__)

DEFAULT_NUM_CLASSES = 227  # the published split's species count (DATA.md section 3)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        required=True,
        help="config file, optionally with an argument: configs/language.py:tiny; override fields as for "
        "train: --config.mode=vision --config.demo.vision_shape='(8,24,24,1408)'",
    )
    p.add_argument(
        "--batch-sizes", type=_int_list, default=[32, 256], help="comma-separated (default 32,256)"
    )
    p.add_argument(
        "--steps-per-call", type=_int_list, default=[1, 16, 100], help="K steps per jit call, comma-separated"
    )
    p.add_argument("--compare-torch", action="store_true", help="also time PyTorch eager (needs torch)")
    p.add_argument(
        "--overhead",
        action="store_true",
        help="add a row: the trainer's K=1 step vs a bare jax.jit of the same math (shrunk model)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the result rows to this JSON file")
    p.add_argument(
        "--num-classes",
        type=int,
        default=DEFAULT_NUM_CLASSES,
        help=f"classes C (default {DEFAULT_NUM_CLASSES})",
    )
    p.add_argument(
        "--max-batch-gb",
        type=float,
        default=4.0,
        help="skip settings whose K stacked batches exceed this (4)",
    )
    p.add_argument(
        "--min-time", type=float, default=2.0, help="seconds of timed steps per setting (default 2)"
    )


# Place and date of random batches: the Central Florida box over 2010..2025 (the demo's region).
_BOX = {"south": 28.03, "north": 28.98, "west": -81.93, "east": -80.90}
_NORMALIZER = {"lat0": 28.5, "lon0": -81.4, "span_km": 120.0, "day0": 14_610.0, "day_span": 5_844.0}


def input_dims_of(config: Any) -> dict[str, Any]:
    """{"language": L, "vision": D, "vision_shape": (T, H, W, D)} from the config's demo-store shapes, and the
    Earth4D normaliser of the demo's region when the mode reads place and date."""
    vision_shape = tuple(int(v) for v in config.demo.vision_shape)
    dims = {
        "language": int(config.demo.language_dim),
        "vision": vision_shape[-1],
        "vision_shape": vision_shape,
    }
    if modes.needs_place_and_date(config.mode):
        dims["earth4d_normalizer"] = dict(_NORMALIZER)
    return dims


def random_batch(config: Any, dims: dict[str, Any], batch_size: int, num_species: int, seed: int = 0) -> dict:
    """A host batch of the config's mode: species, mask and the model's inputs (float16 vision tokens)."""
    rng = np.random.default_rng(seed)
    batch = {
        "species": rng.integers(0, num_species, batch_size).astype(np.int32),
        "mask": np.ones(batch_size, bool),
    }
    shapes = {
        "language": (dims["language"],),
        "vision": dims["vision_shape"],
        "vision_pooled": (dims["vision"],),
    }
    for key in modes.embedding_keys(config.mode):
        values = rng.standard_normal((batch_size, *shapes[key]), np.float32)
        batch[key] = values.astype(np.float16) if key == "vision" else values  # tokens stored as float16
    if modes.needs_place_and_date(config.mode):
        lat = rng.uniform(_BOX["south"], _BOX["north"], batch_size)
        lon = rng.uniform(_BOX["west"], _BOX["east"], batch_size)
        batch["location"] = np.stack([lat, lon, np.full(batch_size, np.nan)], axis=1).astype(np.float32)
        date = np.datetime64("2010-01-01") + rng.integers(0, 5_844, batch_size).astype("timedelta64[D]")
        year = date.astype("datetime64[Y]").astype(np.int64) + 1970
        month = date.astype("datetime64[M]").astype(np.int64) % 12 + 1
        day = (date - date.astype("datetime64[M]")).astype(np.int64) + 1
        clock = rng.integers(0, [24, 60, 60], (batch_size, 3))
        batch["time"] = np.column_stack([year, month, day, clock]).astype(np.float32)
    return batch


def _time_torch(config, dims, num_classes, batch_size, min_time) -> tuple[float, int]:
    """(us per PyTorch eager train step, threads): the faster of PyTorch's default thread count and 1.

    On a busy shared CPU PyTorch's multi-threaded kernels can be many times slower than one thread, so the
    reference gets its best setting (zero_grad, forward, cross-entropy, backward, optimizer step).
    """
    import torch

    default_threads = torch.get_num_threads()
    results = []
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        results.append((_time_torch_once(config, dims, num_classes, batch_size, min_time), threads))
    torch.set_num_threads(default_threads)
    return min(results)


def _time_torch_once(config, dims, num_classes, batch_size, min_time) -> float:
    import torch

    model = torch_reference_model(config, dims, num_classes)
    model.train()
    optimizer = torch_optimizer(config, model.parameters())
    host = random_batch(config, dims, batch_size, num_classes)
    batch = {k: torch.from_numpy(v) for k, v in host.items()}
    labels = batch["species"].long()
    cross_entropy = torch.nn.CrossEntropyLoss()
    loss_fn = (lambda out, _: out) if config.model.name == "mae" else cross_entropy

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch), labels)
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    n, start = 0, time.perf_counter()
    while True:
        for _ in range(10):
            step()
        n += 10
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / n * 1e6


# --- JAX --------------------------------------------------------------------------------------------------


def _time_jax(config, dims, num_classes, batch_size, steps_per_call, min_time, mesh) -> tuple[float, float]:
    """(compile seconds, us per step) of the trainer's step, inputs already on device."""
    from deepearth_jax import parallel, steps

    graphdef, state = steps.create_train_state(
        config,
        input_dims={k: v for k, v in dims.items() if k != "vision_shape"},
        num_classes=num_classes,
        total_steps=1_000_000,
        mesh=mesh,
        seed=0,
    )
    label_map = np.arange(num_classes, dtype=np.int32)
    train_step = steps.make_train_step(
        config,
        graphdef,
        label_map,
        mesh=mesh,
        state_sharding=steps.state_sharding_of(state),
        steps_per_call=steps_per_call,
    )
    host = random_batch(config, dims, batch_size, num_classes)
    if steps_per_call > 1:
        host = {k: np.broadcast_to(v, (steps_per_call, *v.shape)).copy() for k, v in host.items()}
        sharding = parallel.stacked_batch_sharding(mesh)
    else:
        sharding = parallel.batch_sharding(mesh)
    batch = jax.device_put(host, sharding)
    metrics = steps.init_metrics(config, mesh)
    state = steps.FlatState.of(state)  # as the trainer carries it
    start = time.perf_counter()
    state, metrics = train_step(state, metrics, batch)
    jax.block_until_ready(state.leaves)
    compile_s = time.perf_counter() - start
    for _ in range(2):
        state, metrics = train_step(state, metrics, batch)
    jax.block_until_ready(state.leaves)
    calls_per_round = max(1, 100 // steps_per_call)
    calls, start = 0, time.perf_counter()
    while True:
        for _ in range(calls_per_round):
            state, metrics = train_step(state, metrics, batch)
        jax.block_until_ready((state.leaves, metrics))
        calls += calls_per_round
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            break
    loss = steps.summarize_metrics(metrics).get("loss", float("nan"))
    if not np.isfinite(loss):
        raise ValueError(f"the benchmark step produced a non-finite loss ({loss})")
    return compile_s, elapsed / (calls * steps_per_call) * 1e6


def run(args: argparse.Namespace) -> int:
    from deepearth_jax import parallel
    from deepearth_jax.config_utils import load_config

    config = load_config(args.config, getattr(args, "overrides", ()))
    if args.num_classes < 1:
        raise CliError(f"--num-classes must be >= 1, got {args.num_classes}")
    if args.min_time <= 0:
        raise CliError(f"--min-time must be > 0, got {args.min_time}")
    if args.compare_torch:
        try:
            import torch
        except ImportError:
            raise CliError("--compare-torch needs PyTorch: pip install torch (CPU build is enough)") from None
        torch_reference_model(config, input_dims_of(config), args.num_classes)  # fails early for other models
        torch_device = "cpu"
        if jax.default_backend() != "cpu":
            if not torch.cuda.is_available():
                raise CliError(f"JAX runs on {jax.default_backend()} but PyTorch sees no CUDA device")
            raise CliError("--compare-torch on an accelerator is not supported yet: run it on CPU")
    dims = input_dims_of(config)
    mesh = parallel.make_mesh(int(config.mesh.get("data", -1)))
    print(parallel.describe(mesh))
    print(
        f"model {config.model.name}, mode {config.mode}, input dims {dims}, classes {args.num_classes}, "
        f"optimizer {config.optimizer.name} lr {config.optimizer.lr}"
    )
    rows = []
    header = f"{'batch':>6} {'K':>5} {'compile_s':>9} {'us/step':>10} {'samples/s':>11}"
    if args.compare_torch:
        header += f" {'torch us/step':>13} {'ratio':>6}"
    print(header)
    for batch_size in args.batch_sizes:
        torch_us = None
        if args.compare_torch:
            torch_us, torch_threads = _time_torch(config, dims, args.num_classes, batch_size, args.min_time)
            print(
                f"torch {torch.__version__} {torch_device}: {torch_us:.1f} us/step, {torch_threads} threads"
            )
        batch_gb = sum(v.nbytes for v in random_batch(config, dims, batch_size, 1).values()) / 2**30
        for k in args.steps_per_call:
            if batch_gb * k > args.max_batch_gb:
                print(f"{batch_size:>6} {k:>5} skipped: {k} batches of {batch_gb:.2f} GiB > --max-batch-gb")
                continue
            compile_s, us = _time_jax(config, dims, args.num_classes, batch_size, k, args.min_time, mesh)
            row = {
                "batch_size": batch_size,
                "steps_per_call": k,
                "us_per_step": round(us, 2),
                "samples_per_s": round(batch_size / us * 1e6, 1),
                "compile_s": round(compile_s, 3),
                "torch_us_per_step": None if torch_us is None else round(torch_us, 2),
                "ratio": None if torch_us is None else round(torch_us / us, 3),
            }
            rows.append(row)
            line = f"{batch_size:>6} {k:>5} {compile_s:>9.2f} {us:>10.1f} {row['samples_per_s']:>11.0f}"
            if torch_us is not None:
                line += f" {torch_us:>13.1f} {row['ratio']:>6.2f}"
            print(line, flush=True)
    if getattr(args, "overhead", False):
        from deepearth_jax.benchmarks import overhead

        row = overhead.measure(config, mesh, args.min_time)
        rows.append(row)
        print(
            f"overhead ({row['model']}, batch {row['batch_size']}, K=1): trainer "
            f"{row['trainer_us_per_step']:.1f} us/step, bare jit {row['bare_jit_us_per_step']:.1f} us/step, "
            f"ratio {row['overhead_ratio']:.2f}",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0
