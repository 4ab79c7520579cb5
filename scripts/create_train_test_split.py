#!/usr/bin/env python3
"""The original DeepEarth script's name, kept as a thin wrapper.

    python scripts/create_train_test_split.py STORE --out split.json [--plot split.png] [...]

is `python -m deepearth_jax.data split STORE ...`; see `--help` for every flag.
"""

import sys

from deepearth_jax.data.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["split", *sys.argv[1:]]))
