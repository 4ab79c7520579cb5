"""`python -m deepearth_jax.benchmark scale`: how each stage's cost grows with the number of observations.

For each size N: a synthetic observation-only store of N observations (the demo's species ranges and
seasons, `synth --no-embeddings`), then `split` with its defaults, one epoch of `configs/geo_prior.py`
(`train`, which ends with its validation and test evaluations, baselines included) and `evaluate` (test
rows, every baseline, per-species tables, range maps). Each stage is its own process, timed by wall clock,
its peak resident memory the child's `ru_maxrss` (os.wait4), so memory is per stage. The exponent of a
stage is the least-squares slope of log(seconds) on log(N) over the sizes (process start-up, about a second
or two of imports, is in every figure, which flattens the slope at small N). `store_to_summary` sums split,
train and evaluate: a store in, an evaluated summary out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from deepearth_jax.errors import CliError

STAGES = ("synth", "split", "train", "evaluate")
TO_SUMMARY = ("split", "train", "evaluate")
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "geo_prior.py"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sizes",
        default="10000,100000,1000000",
        help="comma-separated observation counts (default 10000,100000,1000000)",
    )
    p.add_argument(
        "--species", type=int, default=1000, help="species (at most N / 10 for each size; default 1000)"
    )
    p.add_argument("--seed", type=int, default=0, help="synthetic store seed (default 0)")
    p.add_argument(
        "--config",
        default=str(CONFIG),
        help="training config of the train stage (default configs/geo_prior.py; one epoch)",
    )
    p.add_argument(
        "--workdir", type=Path, help="keep stores, splits, runs and logs here (default: a temp dir)"
    )
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")


def parse_sizes(text: str) -> list[int]:
    """`"10000,100000"` -> [10000, 100000]: at least one size, each >= 100, increasing."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise CliError(f"--sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 100 or sizes != sorted(set(sizes)):
        raise CliError(f"--sizes must be increasing integers >= 100, got {text!r}")
    return sizes


def timed(argv: list[str], log_path: Path) -> dict:
    """Runs one stage as a child process: `{"seconds": wall, "peak_rss_mb": its ru_maxrss}`."""
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=_env())
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise CliError(
            f"{' '.join(argv[2:4])} exited {child.returncode} (log {log_path}): {' | '.join(tail)}"
        )
    return {"seconds": round(seconds, 3), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def _env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # this checkout, whichever is installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def stage_commands(n: int, species: int, seed: int, root: Path, config: str) -> dict[str, list[str]]:
    """The command line of each stage for a store of n observations under `root`."""
    store, split, run = root / f"store-{n}", root / f"split-{n}.json", root / f"run-{n}"
    py = [sys.executable, "-m"]
    return {
        "synth": [*py, "deepearth_jax.data", "synth", "--out", str(store), "--observations", str(n)]
        + ["--species", str(min(species, n // 10)), "--no-embeddings", "--seed", str(seed)],
        "split": [*py, "deepearth_jax.data", "split", str(store), "--out", str(split)],
        "train": [*py, "deepearth_jax.train", "--config", config, "--workdir", str(run)]
        + [f"--config.store={store}", f"--config.split_file={split}", "--config.num_epochs=1"],
        "evaluate": [*py, "deepearth_jax.evaluate", "--workdir", str(run)],
    }


def exponent(sizes: list[int], seconds: list[float]) -> float | None:
    """Least-squares slope of log(seconds) on log(sizes); None for fewer than two sizes."""
    if len(sizes) < 2:
        return None
    return round(float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0]), 3)


def measure(sizes: list[int], species: int, seed: int, root: Path, config: str) -> dict:
    """Every stage at every size, the exponents and the store-to-summary totals."""
    stages: dict = {s: {"seconds": [], "peak_rss_mb": []} for s in STAGES}
    for n in sizes:
        for name, argv in stage_commands(n, species, seed, root, config).items():
            figures = timed(argv, root / f"{name}-{n}.log")
            for key, value in figures.items():
                stages[name][key].append(value)
            print(
                f"  N={n:>9,}  {name:<8} {figures['seconds']:>8.1f} s  {figures['peak_rss_mb']:>8.0f} MB",
                flush=True,
            )
    for figures in stages.values():
        figures["exponent"] = exponent(sizes, figures["seconds"])
    total = [sum(stages[s]["seconds"][i] for s in TO_SUMMARY) for i in range(len(sizes))]
    return {
        "sizes": sizes,
        "species": [min(species, n // 10) for n in sizes],
        "stages": stages,
        "store_to_summary": {
            "seconds": [round(t, 3) for t in total],
            "peak_rss_mb": [max(stages[s]["peak_rss_mb"][i] for s in TO_SUMMARY) for i in range(len(sizes))],
            "exponent": exponent(sizes, total),
        },
        "config": config,
        "cpus": os.cpu_count(),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
    }


def run(args: argparse.Namespace) -> int:
    sizes = parse_sizes(args.sizes)
    if args.species < 1:
        raise CliError(f"--species must be >= 1, got {args.species}")
    load = round(os.getloadavg()[0], 2)
    print(f"scale benchmark: sizes {sizes}, {os.cpu_count()} CPUs, load average {load} before")
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        root = Path(args.workdir) if args.workdir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        result = {
            "load_average_1m_before": load,
            **measure(sizes, args.species, args.seed, root, args.config),
        }
    print(f"{'stage':<17}" + "".join(f"{n:>12,}" for n in sizes) + "    exponent")
    rows = {**result["stages"], "store_to_summary": result["store_to_summary"]}
    for name, figures in rows.items():
        slope = "-" if figures["exponent"] is None else f"{figures['exponent']:.2f}"
        print(f"{name + ' s':<17}" + "".join(f"{t:>12.1f}" for t in figures["seconds"]) + f"    {slope}")
        print(f"{name + ' MB':<17}" + "".join(f"{m:>12.0f}" for m in figures["peak_rss_mb"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0
