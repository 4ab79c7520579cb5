"""`python -m deepearth_jax.benchmark BENCHMARK ...`: our speed beside a reference, one subcommand each.

Each benchmark lives in `deepearth_jax/benchmarks/<name>.py`, which provides `add_arguments(parser)` and
`run(args) -> int`; config overrides (`--config.FIELD=VALUE`, as for train) arrive in `args.overrides`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from deepearth_jax.cli import run_command, setup_logging

BENCHMARKS = {
    "data": "input pipeline vs a raw np.memmap gather of the same rows (samples/s, GB/s)",
    "step": "jit train step of a config (us/step, samples/s); --compare-torch: vs PyTorch eager for the same "
    "model and optimizer; --overhead: the trainer's step vs a bare jax.jit",
    "convert": "store conversion vs a plain pyarrow read of the same files (MB/s, peak RSS)",
    "encoder": "Earth4D forward+backward under jit (us/call); --compare-torch: vs the PyTorch implementation",
    "quickstart": "python -m deepearth_jax.train end to end vs the original's PyTorch loop (wall s)",
    "field": "fit a synthetic f(x, y, t) with Earth4D + MLP vs random Fourier features (held-out PSNR)",
    "preemption": "the loop's per-call stop question on two jax.distributed processes (us/call)",
    "scale": "synth, split, one geo_prior epoch and evaluate at growing N (wall s, peak RSS, exponents)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deepearth_jax.benchmark",
        description="Measure our speed side by side with a reference, one benchmark per subcommand.",
        epilog="Each prints its figures and writes them with --json FILE; `BENCHMARK --help` explains its "
        "flags. quickstart needs PyTorch; step and encoder time PyTorch too with --compare-torch. "
        "BENCHMARKS.md gives the figures and the commands that made them.",
    )
    commands = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, help_text in BENCHMARKS.items():
        module = importlib.import_module(f"deepearth_jax.benchmarks.{name}")
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, args.overrides = parser.parse_known_args(argv)
    if args.overrides and not hasattr(args, "config"):
        parser.error(f"unrecognized arguments: {' '.join(args.overrides)}")
    setup_logging()
    return run_command(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
