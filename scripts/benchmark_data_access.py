#!/usr/bin/env python3
"""The original DeepEarth script's name, kept as a thin wrapper.

    python scripts/benchmark_data_access.py --store STORE [--batch-size 16] [--runs 10] [--mode vision] [...]

is `python -m deepearth_jax.benchmark data --store STORE ...`; see `--help` for every flag.
"""

import sys

from deepearth_jax.benchmark import main

if __name__ == "__main__":
    sys.exit(main(["data", *sys.argv[1:]]))
