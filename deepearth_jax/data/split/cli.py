"""`python -m deepearth_jax.data split STORE --out SPLIT.json`: make, write, summarise and draw a split."""

from __future__ import annotations

import argparse
from pathlib import Path

from deepearth_jax.data.split.assemble import make_split
from deepearth_jax.data.split.file_format import write_split
from deepearth_jax.data.split.options import DEFAULTS
from deepearth_jax.data.split.stats import summary

# Flags whose values --regions-from takes from the file (flag -> SplitOptions field).
_FROM_FILE = {
    "--test-years": "test_years",
    "--regions": "num_regions",
    "--region-km": "region_km",
    "--min-distance-km": "min_distance_km",
    "--region-share": "region_share",
    "--buffer-km": "buffer_km",
    "--all-observations": "all_observations",
    "--validation-years": "validation_years",
    "--validation-regions": "validation_regions",
}
_OTHER = {"--folds": "folds", "--block-km": "block_km", "--seed": "seed"}


def _years_arg(text: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"test years must be integers like 2025 or 2024,2025, got {text!r}"
        ) from None


def _add_region_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument(
        "--regions",
        type=int,
        default=None,
        help=f"number of spatial test regions (default {d.num_regions}; 0 for none)",
    )
    p.add_argument(
        "--region-km",
        type=float,
        default=None,
        help=f"side of a square test region, km (default {d.region_km:g})",
    )
    p.add_argument(
        "--min-distance-km",
        type=float,
        default=None,
        help=f"minimum geodesic distance between region centres (default {d.min_distance_km:g})",
    )
    p.add_argument(
        "--region-share",
        type=float,
        default=None,
        help="target share of the pool in one region box, e.g. 0.01: boxes must then hold half to twice this "
        "(default: prefer, not require, half to twice the median box share over candidate centres)",
    )
    p.add_argument(
        "--buffer-km",
        type=float,
        default=None,
        help="exclude training observations within this distance of a test region (or of fold k's blocks, "
        f"for fold k) (default {d.buffer_km:g})",
    )


def add_split_arguments(p: argparse.ArgumentParser) -> None:
    """The split subcommand's flags; every default comes from SplitOptions."""
    d = DEFAULTS
    p.add_argument("store", type=Path, help="store directory")
    p.add_argument("--out", required=True, type=Path, help="split file to write (JSON)")
    p.add_argument("--plot", type=Path, help="also draw the split map to this PNG")
    p.add_argument(
        "--regions-from",
        type=Path,
        help="re-apply the test years, region bounds, buffer, pool and folds of this split file (ours or the "
        "original central_florida_split.json); the assignment must come out the same for every shared id",
    )
    p.add_argument(
        "--test-years",
        type=_years_arg,
        default=None,
        help="temporal test years, e.g. 2025 or 2024,2025 or none "
        f"(default {','.join(map(str, d.test_years)) or 'none'}; when the store has no observation in it, "
        "its most recent year, said on the console and recorded in the file)",
    )
    _add_region_arguments(p)
    p.add_argument(
        "--all-observations",
        action="store_true",
        default=None,
        help="split every observation, not only those with a vision embedding (the original split only "
        "those with one)",
    )
    p.add_argument(
        "--folds",
        type=int,
        default=None,
        help=f"spatial block cross-validation folds K (default {d.folds}: none)",
    )
    p.add_argument(
        "--block-km",
        type=float,
        default=None,
        help=f"side of a cross-validation block, km (default {d.block_km:g})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"seed for region centres and fold balancing (default {d.seed})",
    )
    p.add_argument(
        "--validation-years",
        type=int,
        default=None,
        help="hold out the N most recent training years as temporal validation "
        f"(default {d.validation_years}; 0 for none)",
    )
    p.add_argument(
        "--validation-regions",
        type=int,
        default=None,
        help="spatial validation regions carved from the training rows like the test regions (default: as "
        "many as --regions, or as many as fit; 0 for none)",
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="with --regions-from: drop ids of that file this store lacks instead of failing",
    )


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def run_split(args: argparse.Namespace) -> int:
    """Makes the split the flags describe, writes it (and the map), prints the summary."""
    from deepearth_jax.data.store import open_store

    given = {flag: getattr(args, _dest(flag)) for flag in (*_FROM_FILE, *_OTHER)}
    given = {flag: value for flag, value in given.items() if value is not None}
    if args.regions_from is not None:
        clash = [flag for flag in _FROM_FILE if flag in given]
        if clash:
            raise ValueError(
                f"{', '.join(clash)} come(s) from {args.regions_from} with --regions-from; drop them"
            )
    for flag in ("--out", "--plot"):
        path = getattr(args, _dest(flag))
        if path is not None and path.is_dir():
            raise ValueError(f"{flag} {path} is a directory; give a file name such as split.json")
    options = DEFAULTS.replace(**{({**_FROM_FILE, **_OTHER})[flag]: value for flag, value in given.items()})
    options.check()  # before opening the store: a bad flag fails at once
    store = open_store(args.store)
    payload = make_split(
        store,
        options,
        regions_from=args.regions_from,
        allow_missing=args.allow_missing,
        test_years_given="--test-years" in given,
    )
    write_split(payload, args.out)
    print(summary(payload))
    print(f"wrote {args.out} ({len(payload['observation_mappings'])} observations)")
    if args.plot is not None:
        from deepearth_jax.data.split.map import plot_split

        try:
            plot_split(payload, args.plot)
        except OSError as e:
            raise ValueError(f"cannot write --plot {args.plot}: {e.strerror or e}") from None
        print(f"wrote {args.plot}")
    return 0
