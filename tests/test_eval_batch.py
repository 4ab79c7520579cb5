"""The evaluation batch: the training batch, or for one-vector-per-example modes a multiple of it >= 256."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepearth_jax.config_utils import load_config
from deepearth_jax.evaluation import eval_batch_size

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("spec", "overrides", "expected"),
    [
        ("vision.py", [], 256),  # vision_pooled, batch 32: 8 x 32
        ("vision.py", ["--config.batch_size=48"], 288),  # the smallest multiple of 48 >= 256
        ("vision.py", ["--config.batch_size=512"], 512),
        ("vision.py", ["--config.mode=vision"], 32),  # full tokens: the training batch
        ("mae.py", [], 32),
        ("vision.py", ["--config.eval_batch_size=64"], 64),
    ],
)
def test_eval_batch_size(spec, overrides, expected):
    assert eval_batch_size(load_config(f"{ROOT}/configs/{spec}", overrides)) == expected


def test_negative_eval_batch_size_is_refused():
    config = load_config(f"{ROOT}/configs/vision.py", ["--config.eval_batch_size=-8"])
    with pytest.raises(ValueError, match="eval_batch_size must be >= 0"):
        eval_batch_size(config)
