"""`python -m deepearth_jax.data synth|convert|verify|info|split`: build, check and split stores.

Each subcommand lives in its own module, which provides `add_arguments(parser)` and `run_cli(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from deepearth_jax.errors import CliError

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "synth": (
        "deepearth_jax.data.cli_store",
        "write a synthetic dataset (HF or dashboard layout, or a store)",
    ),
    "convert": (
        "deepearth_jax.data.convert.cli",
        "convert an HF or dashboard dataset, or an occurrence table (GBIF / Darwin Core), into a store",
    ),
    "verify": ("deepearth_jax.data.cli_store", "re-read a store and check checksums, shapes and values"),
    "info": ("deepearth_jax.data.cli_store", "print a store's counts, shapes, bytes and species"),
    "split": ("deepearth_jax.data.split.cli", "make a spatiotemporal train/test split (or block CV folds)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deepearth_jax.data",
        description="Build, check and split DeepEarth stores (memory-mapped embeddings, observation tables).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(
            name, help=help_text, description=help_text[0].upper() + help_text[1:] + "."
        )
        getattr(module, f"add_{name}_arguments")(sub)
        sub.set_defaults(handler=getattr(module, f"run_{name}"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from deepearth_jax.cli import run_command, setup_logging

    setup_logging(args.verbose)
    return run_command(lambda: args.handler(args), (CliError,))


if __name__ == "__main__":
    sys.exit(main())
