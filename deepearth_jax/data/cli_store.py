"""The `synth`, `verify` and `info` subcommands of `python -m deepearth_jax.data`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from deepearth_jax.data import sources, synthetic, synthetic_layouts
from deepearth_jax.data import store as store_lib
from deepearth_jax.data.store_check import store_info, verify_store
from deepearth_jax.errors import CliError
from deepearth_jax.io import format_bytes, progress_bar


def add_synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="directory to create (must not exist or be empty)")
    p.add_argument(
        "--layout",
        choices=("hf", "dashboard", "store"),
        default="store",
        help="hf: the published Hugging Face layout; dashboard: observations.parquet + embeddings.mmap + "
        "embeddings_index.db as the original dashboard wrote; store: a deepearth_jax store (default)",
    )
    p.add_argument("--observations", type=int, required=True, help="number of observations")
    p.add_argument("--species", type=int, required=True, help="number of species (<= observations)")
    p.add_argument(
        "--vision-shape",
        default="8,24,24,1408",
        help="T,H,W,D of one vision embedding (default: the real V-JEPA 2 shape 8,24,24,1408)",
    )
    p.add_argument("--language-dim", type=int, default=7168, help="language embedding size (default 7168)")
    p.add_argument("--vision-fraction", type=float, default=0.9, help="share of observations with vision")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="vision dtype (store)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes")
    p.add_argument(
        "--no-embeddings",
        action="store_true",
        help="write an observation-only store (--layout store): the same places, dates and species (ranges "
        "and seasons), no vision or language embeddings; for the geo modes and scale benchmarks",
    )


def run_synth(args: argparse.Namespace) -> int:
    if args.no_embeddings and args.layout != "store":
        raise CliError(f"--no-embeddings writes a store; it cannot be combined with --layout {args.layout}")
    config = synthetic.SyntheticConfig(
        observations=args.observations,
        species=args.species,
        vision_shape=sources.parse_shape(args.vision_shape),
        language_dim=args.language_dim,
        seed=args.seed,
        vision_fraction=args.vision_fraction,
    )
    dataset = synthetic.SyntheticDataset(config)
    if args.no_embeddings:
        print(
            f"synth: observation-only store, {config.observations} observations, {config.species} species "
            f"-> {args.out}",
            file=sys.stderr,
        )
        synthetic.write_store(dataset, args.out, embeddings=False)
        print(f"wrote {args.out}", file=sys.stderr)
        return 0
    itemsize = 2 if args.layout == "store" and args.dtype == "float16" else 4
    row_bytes = int(np.prod(config.vision_shape)) * itemsize
    n_vision = int(dataset.has_vision.sum())
    print(
        f"synth: {args.layout} layout, {config.observations} observations ({n_vision} with vision), "
        f"{config.species} species, vision {config.vision_shape}: "
        f"{format_bytes(n_vision * row_bytes)} of vision embeddings -> {args.out}",
        file=sys.stderr,
    )
    if args.layout == "store":
        synthetic.write_store(dataset, args.out, dtype=args.dtype, progress=True)
    elif args.layout == "hf":
        synthetic_layouts.write_hf(dataset, args.out, progress=True)
    else:
        synthetic_layouts.write_dashboard(dataset, args.out, progress=True)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", type=Path, help="store directory")


def run_verify(args: argparse.Namespace) -> int:
    try:
        arrays = store_lib.read_manifest(args.store).get("arrays", {})
    except store_lib.StoreError:
        arrays = {}  # verify_store reports it
    total = sum(int(np.prod(a["shape"])) * np.dtype(a["dtype"]).itemsize for a in arrays.values())
    bar = progress_bar(total, "verify", unit="B", unit_scale=True)
    try:
        problems = verify_store(args.store, progress=bar.update)
    finally:
        bar.close()
    if problems:
        for problem in problems:
            print(f"FAIL {problem}", file=sys.stderr)
        print(f"error: store {args.store} failed verification ({len(problems)} problem(s))", file=sys.stderr)
        return 1
    store = store_lib.open_store(args.store)
    checked = (
        "no embeddings (an observation-only store)"
        if store.observation_only
        else f"{format_bytes(total)} of embeddings checked"
    )
    print(f"OK {args.store}: {store.num_observations} observations, {store.num_species} species, {checked}")
    return 0


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", type=Path, help="store directory")
    p.add_argument("--top", type=int, default=10, help="species to show in the histogram (default 10)")


def run_info(args: argparse.Namespace) -> int:
    print(store_info(store_lib.open_store(args.store), top_species=args.top))
    return 0
