"""`python -m deepearth_jax.benchmark quickstart`: the quick start end to end vs the original's PyTorch loop.

Both run as fresh processes, timed wall clock from start-up to exit, one after the other in the same run:
`python -m deepearth_jax.train --config CONFIG` (ours, a new workdir), and a PyTorch loop in the style of the
original's `train_epoch` / `evaluate_model` (one thread): the same MLP (`torch_reference_model`), the same
training and test rows, epochs and batch size (last partial batch dropped, as ours), evaluation on the test
rows after every epoch.

Ours is timed as a user's rerun: with JAX's persistent compilation cache warm. When the first run of ours
compiles programs into the cache (new cache entries), it is reported as `jax_first_wall_s` and ours is run
again; `compile_cache` says whether the timed run found the cache warm.

    python -m deepearth_jax.benchmark quickstart --json /tmp/q.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from deepearth_jax.errors import UserError

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/vision.py", help="config (default configs/vision.py)")
    p.add_argument("--json", type=Path, default=None, help="write the result row to this JSON file")


def torch_loop(config_arg: str, overrides: list[str], workdir: str) -> dict[str, float]:
    """The original's loop in PyTorch over the run's rows: train an epoch, evaluate, repeat (one thread)."""
    import numpy as np
    import torch

    from deepearth_jax import inputs
    from deepearth_jax.benchmarks.torch_reference import torch_optimizer, torch_reference_model
    from deepearth_jax.config_utils import load_config
    from deepearth_jax.data import modes
    from deepearth_jax.data.reader import BatchReader

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = load_config(config_arg, overrides)
    data = inputs.prepare_data(config, Path(workdir))
    (key,) = modes.input_keys(config.mode)

    def arrays(rows):
        batch = BatchReader(data.store, config.mode, len(rows)).read(rows)
        x = torch.from_numpy(np.asarray(batch[key], np.float32))
        return x, torch.from_numpy(data.label_map[batch["species"]].astype(np.int64))

    (x_train, y_train), (x_test, y_test) = arrays(data.train_rows), arrays(data.test_rows)
    model = torch_reference_model(config, data.input_dims, len(data.class_names))
    optimizer = torch_optimizer(config, model.parameters())
    loss_fn, batch_size = torch.nn.CrossEntropyLoss(), int(config.batch_size)
    top1 = 0.0
    for _ in range(int(config.num_epochs)):
        model.train()  # train_epoch
        order = torch.randperm(len(x_train))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model({key: x_train[idx]}), y_train[idx])
            loss.backward()
            optimizer.step()
        model.eval()  # evaluate_model
        with torch.no_grad():
            correct = 0
            for start in range(0, len(x_test), 256):
                logits = model({key: x_test[start : start + 256]})
                correct += int((logits.argmax(-1) == y_test[start : start + 256]).sum())
        top1 = correct / max(len(x_test), 1)
    return {"test_top1": top1}


def _timed(argv: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise UserError(child_failure(argv, done.returncode, done.stderr))
    return wall, done.stdout


def child_failure(argv: list[str], status: int, stderr: str, context: int = 8) -> str:
    """What failed, in whole lines: the child's command, status and its last `error: ...` line (our CLIs'
    one-line errors) or else its last line (a traceback's exception); the last `context` lines of its
    stderr are logged, so a crash's traceback is seen too."""
    lines = [line.rstrip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    last = errors[-1].removeprefix("error: ") if errors else (lines[-1] if lines else "(nothing on stderr)")
    if lines and not errors:
        log.error("the child's last lines on stderr:\n%s", "\n".join(lines[-context:]))
    return f"{' '.join(argv[:4])} ... failed (exit status {status}): {last}"


def _cache_entries() -> int:
    """Files in the train CLI's compilation cache (JAX_COMPILATION_CACHE_DIR or the demo cache's)."""
    from deepearth_jax.train import compilation_cache_dir

    directory = Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or compilation_cache_dir())
    return sum(1 for _ in directory.iterdir()) if directory.is_dir() else 0


def _time_ours(config: str, overrides: list[str], tmp: str) -> tuple[float, float | None, bool]:
    """`(wall s, first run's wall s or None, cache warm)`: reruns once when the first run filled the cache."""
    first = None
    for attempt in ("jax", "jax_rerun"):
        before = _cache_entries()
        argv = [
            sys.executable,
            "-m",
            "deepearth_jax.train",
            "--config",
            config,
            "--workdir",
            f"{tmp}/{attempt}",
        ]
        wall, _ = _timed([*argv, *overrides])
        if _cache_entries() == before:
            return wall, first, True
        first = wall if first is None else first
    return wall, first, False


def run(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401  (the reference loop's; checked before ours runs for a minute)
    except ImportError:
        raise UserError(
            "benchmark quickstart needs PyTorch; the CPU build is enough: "
            "pip install torch --index-url https://download.pytorch.org/whl/cpu"
        ) from None
    overrides = list(getattr(args, "overrides", ()))
    with tempfile.TemporaryDirectory(prefix="quickstart-") as tmp:
        jax_s, first_s, warm = _time_ours(args.config, overrides, tmp)
        workdir = "jax" if first_s is None else "jax_rerun"
        code = (
            "import json, sys; from deepearth_jax.benchmarks.quickstart import torch_loop; "
            "print(json.dumps(torch_loop(sys.argv[1], sys.argv[3:], sys.argv[2])))"
        )
        torch_s, out = _timed([sys.executable, "-c", code, args.config, f"{tmp}/torch", *overrides])
        torch_top1 = json.loads(out.strip().splitlines()[-1])["test_top1"]
        summary: Any = json.loads((Path(tmp) / workdir / "summary.json").read_text())
    row = {
        "config": args.config,
        "jax_wall_s": round(jax_s, 2),
        "torch_wall_s": round(torch_s, 2),
        "ratio": round(torch_s / jax_s, 3),
        "jax_test_top1": summary["final"].get("test/top1"),
        "torch_test_top1": round(torch_top1, 4),
        "compile_cache": "warm" if warm else "cold",
        "jax_first_wall_s": None if first_s is None else round(first_s, 2),
    }
    print(
        f"quick start {args.config}: ours {jax_s:.1f} s, PyTorch loop {torch_s:.1f} s (1 thread), "
        f"ratio {row['ratio']:.2f} (> 1: ours is faster); compile cache {row['compile_cache']}"
        + ("" if first_s is None else f" (the first run, filling it, took {first_s:.1f} s)")
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(row, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0
