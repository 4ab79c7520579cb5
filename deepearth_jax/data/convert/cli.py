"""`python -m deepearth_jax.data convert SOURCE --out STORE`: its arguments and the command."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from deepearth_jax.data.convert.run import convert
from deepearth_jax.data.sources import parse_shape
from deepearth_jax.io import format_bytes


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        type=Path,
        help="HF dataset directory, or the dashboard's directory (see DATA.md); or an occurrence table: a "
        "GBIF simple download or Darwin Core table (.tsv/.csv/.txt, tab or comma detected), a Parquet file, "
        "or a Darwin Core Archive (.zip, or a directory with meta.xml), which gives a store with place, "
        "date and species and no embeddings (for the geo modes)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="store directory to create; the same command resumes an interrupted conversion",
    )
    p.add_argument(
        "--dtype",
        choices=("float16", "float32"),
        default="float16",
        help="vision dtype in the store (default float16, half the bytes; rows that overflow it are bad); "
        "an occurrence table has no vision, so it does not apply there",
    )
    p.add_argument(
        "--vision-shape",
        default=None,
        help="T,H,W,D of one vision embedding (default: from the HF files' original_shape; 8,24,24,1408 "
        "for the dashboard mmap)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="convert the good rows and record the bad ones (ids, reasons) in the manifest, not fail",
    )


def run_convert(args: argparse.Namespace) -> int:
    shape = parse_shape(args.vision_shape) if args.vision_shape else None
    start = time.perf_counter()
    store = convert(
        args.source, args.out, dtype=args.dtype, vision_shape=shape, skip_bad=args.skip_bad, progress=True
    )
    seconds = time.perf_counter() - start
    counts = store.manifest["counts"]
    skipped = len(store.manifest.get("skipped", []))
    skipped_text = f"; {skipped} bad row(s) skipped (manifest.json 'skipped')" if skipped else ""
    if store.observation_only:
        print(
            f"converted {args.source} -> {args.out}: {counts['observations']} observations, "
            f"{counts['species']} species, no embeddings (an observation-only store: train it with "
            f"configs/geo_prior.py) in {seconds:.1f} s{skipped_text}",
            file=sys.stderr,
        )
        return 0
    vision_bytes = 0 if store.vision is None else store.vision.nbytes
    print(
        f"converted {args.source} -> {args.out}: {counts['observations']} observations "
        f"({counts['observations_with_vision']} with vision), {counts['species']} species, "
        f"{format_bytes(vision_bytes)} of vision in {seconds:.1f} s{skipped_text}",
        file=sys.stderr,
    )
    return 0
