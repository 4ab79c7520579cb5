"""`python -m deepearth_jax.benchmark step`: the jitted train step vs PyTorch eager and vs the hardware.

For each (batch size, steps per call) it builds the REAL step (`steps.create_train_state` +
`steps.make_train_step` from the config), feeds random inputs of the config's shapes already on device, and
reports compile time (first call: trace + compile + one run), us/step and samples/s. With `--compare-torch`,
the same model (PyTorch's nn.Linear layers, same widths and dropout) and optimizer run eagerly on the same
device in the same process, and the ratio torch_us / jax_us is reported (> 1: JAX is faster).

Against the hardware (`ceilings.py`), measured in the same run on the same device: a large matmul's FLOP/s in
float32 and bfloat16 and a memory copy's bytes/s; each row reports the step's FLOPs and bytes (XLA's cost
analysis of the compiled step), achieved FLOP/s and bytes/s, their utilisation of the ceilings, which roof
binds (or "overhead" when neither explains the time), and the compiled step's peak memory. Over the K = 1
rows, peak memory is fitted as a + b * batch, giving the largest batch that fits this device.

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

from deepearth_jax.benchmarks import ceilings
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
    p.add_argument(
        "--matmul-size",
        type=int,
        default=0,
        help="side of the square matmul that measures the FLOP/s ceiling (0: 2048 on CPU, 8192 elsewhere)",
    )
    p.add_argument(
        "--copy-mb",
        type=int,
        default=0,
        help="MiB of the array whose copy measures the memory ceiling (0: 256 on CPU, 2048 elsewhere)",
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


def _time_jax(
    config, dims, num_classes, batch_size, steps_per_call, min_time, mesh
) -> tuple[float, float, dict]:
    """(compile seconds, us per step, costs of one step) of the trainer's step, inputs already on device.

    The costs (`ceilings.compiled_costs`: FLOPs, bytes, peak memory) are of the K = 1 program of the same
    step and batch (XLA counts a scan's body once), compiled but not run."""
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
    costs = _step_costs(config, graphdef, label_map, mesh, state, metrics, host, train_step, steps_per_call)
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
    return compile_s, elapsed / (calls * steps_per_call) * 1e6, costs


def _step_costs(config, graphdef, label_map, mesh, state, metrics, host, train_step, steps_per_call) -> dict:
    """`ceilings.compiled_costs` of one K = 1 step on one batch of `host` (compiled, not run)."""
    from deepearth_jax import parallel, steps

    def spec(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)

    if steps_per_call > 1:
        host = {k: v[0] for k, v in host.items()}
        train_step = steps.make_train_step(
            config,
            graphdef,
            label_map,
            mesh=mesh,
            state_sharding=jax.tree.unflatten(state.treedef, [x.sharding for x in state.leaves]),
            steps_per_call=1,
        )
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=parallel.batch_sharding(mesh))
        for k, v in host.items()
    }
    leaves = [spec(x) for x in state.leaves]
    return ceilings.compiled_costs(train_step.jitted, leaves, jax.tree.map(spec, metrics), batch)


def _check_torch(config, args) -> None:
    """Fails early (one line) when --compare-torch cannot run: no torch, another model, an accelerator."""
    try:
        import torch
    except ImportError:
        raise CliError("--compare-torch needs PyTorch: pip install torch (CPU build is enough)") from None
    torch_reference_model(config, input_dims_of(config), args.num_classes)  # fails early for other models
    if jax.default_backend() != "cpu":
        if not torch.cuda.is_available():
            raise CliError(f"JAX runs on {jax.default_backend()} but PyTorch sees no CUDA device")
        raise CliError("--compare-torch on an accelerator is not supported yet: run it on CPU")


def _print_ceilings(ceiling: dict[str, float]) -> None:
    f32, bf16 = ceiling["matmul_flops_float32"] / 1e9, ceiling["matmul_flops_bfloat16"] / 1e9
    copy = ceiling["copy_bytes_per_s"] / 1e9
    kind = jax.devices()[0].device_kind
    print(
        f"ceilings on {kind}: matmul float32 {f32:.1f} GFLOP/s, bfloat16 {bf16:.1f} GFLOP/s; "
        f"memory copy {copy:.1f} GB/s",
        flush=True,
    )


def _row(
    batch_size: int, k: int, compile_s: float, us: float, costs: dict, ceiling: dict, dtype: str
) -> dict:
    row = {
        "batch_size": batch_size,
        "steps_per_call": k,
        "dtype": dtype,
        "us_per_step": round(us, 2),
        "samples_per_s": round(batch_size / us * 1e6, 1),
        "compile_s": round(compile_s, 3),
    }
    row.update(ceilings.utilisation(costs, us, ceiling, dtype))
    row["ceiling_flops_per_s"] = ceiling[f"matmul_flops_{dtype}"]
    row["ceiling_bytes_per_s"] = ceiling["copy_bytes_per_s"]
    return row


def _print_row(row: dict) -> None:
    timing = f"{row['batch_size']:>6} {row['steps_per_call']:>5} {row['compile_s']:>9.2f}"
    timing += f" {row['us_per_step']:>10.1f}"
    use = f"{row['utilisation_flops']:>7.1%} {row['utilisation_bytes']:>7.1%}"
    peak = row["peak_memory_bytes"] / 2**20
    line = f"{timing} {row['samples_per_s']:>11.0f} {row['flops_per_step'] / 1e9:>9.3f} {use} {peak:>9.1f}"
    line += f" {row['bound']:>8}"
    if row.get("torch_us_per_step") is not None:
        line += f" {row['torch_us_per_step']:>13.1f} {row['ratio']:>6.2f}"
    print(line, flush=True)


def _memory_fit(rows: list[dict]) -> dict | None:
    """The peak memory's linear fit in the batch size over the K = 1 rows, and the largest batch that fits
    this device (`ceilings.largest_batch`)."""
    single = [r for r in rows if r["steps_per_call"] == 1]
    fit = ceilings.largest_batch(
        [r["batch_size"] for r in single],
        [r["peak_memory_bytes"] for r in single],
        ceilings.device_memory_bytes(),
    )
    if fit is not None:
        fixed, per, memory = fit["fixed_bytes"], fit["bytes_per_example"], fit["memory_bytes"]
        print(
            f"peak memory ~ {fixed / 2**20:.0f} MiB + {per / 2**20:.1f} MiB x batch: the largest batch in "
            f"{memory / 2**30:.0f} GiB is {fit['largest_batch']}; on a device of M GiB: "
            f"(M x 2^30 - {fixed:.3g}) / {per:.3g}",
            flush=True,
        )
    return fit


def run(args: argparse.Namespace) -> int:
    from deepearth_jax import parallel
    from deepearth_jax.config_utils import load_config

    config = load_config(args.config, getattr(args, "overrides", ()))
    if args.num_classes < 1:
        raise CliError(f"--num-classes must be >= 1, got {args.num_classes}")
    if not args.min_time > 0 or not np.isfinite(args.min_time):
        raise CliError(f"--min-time must be a finite number > 0, got {args.min_time}")
    if args.compare_torch:
        _check_torch(config, args)
    dtype = str(config.get("dtype", "float32"))
    dims = input_dims_of(config)
    mesh = parallel.make_mesh(int(config.mesh.get("data", -1)))
    print(parallel.describe(mesh))
    print(
        f"model {config.model.name}, mode {config.mode}, dtype {dtype}, input dims {dims}, classes "
        f"{args.num_classes}, optimizer {config.optimizer.name} lr {config.optimizer.lr}"
    )
    ceiling = ceilings.measure_ceilings(
        min(args.min_time, 1.0), args.matmul_size or None, (args.copy_mb << 20) or None
    )
    _print_ceilings(ceiling)
    header = (
        f"{'batch':>6} {'K':>5} {'compile_s':>9} {'us/step':>10} {'samples/s':>11} {'GFLOP':>9} "
        f"{'%flops':>7} {'%bytes':>7} {'peak MiB':>9} {'bound':>8}"
    )
    print(header + (f" {'torch us/step':>13} {'ratio':>6}" if args.compare_torch else ""))
    rows = []
    for batch_size in args.batch_sizes:
        torch_us = None
        if args.compare_torch:
            import torch

            torch_us, torch_threads = _time_torch(config, dims, args.num_classes, batch_size, args.min_time)
            print(f"torch {torch.__version__} cpu: {torch_us:.1f} us/step, {torch_threads} threads")
        batch_gb = sum(v.nbytes for v in random_batch(config, dims, batch_size, 1).values()) / 2**30
        for k in args.steps_per_call:
            if batch_gb * k > args.max_batch_gb:
                print(f"{batch_size:>6} {k:>5} skipped: {k} batches of {batch_gb:.2f} GiB > --max-batch-gb")
                continue
            compile_s, us, costs = _time_jax(
                config, dims, args.num_classes, batch_size, k, args.min_time, mesh
            )
            row = _row(batch_size, k, compile_s, us, costs, ceiling, dtype)
            row["torch_us_per_step"] = None if torch_us is None else round(torch_us, 2)
            row["ratio"] = None if torch_us is None else round(torch_us / us, 3)
            rows.append(row)
            _print_row(row)
    fit = _memory_fit(rows)
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
    if fit is not None:
        rows.append({"memory_fit": fit})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0
