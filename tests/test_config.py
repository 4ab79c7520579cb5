"""Config files load, shrink with :tiny, lock, and take overrides with one-line errors for typos."""

from pathlib import Path

import ml_collections
import pytest

from deepearth_jax.config_utils import apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if p.name != "common.py")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads_locked_and_tiny_is_smaller(path):
    full = load_config(str(path))
    tiny = load_config(f"{path}:tiny")
    assert isinstance(full, ml_collections.ConfigDict) and full.is_locked
    assert tiny.batch_size <= full.batch_size
    assert tiny.demo.observations < full.demo.observations
    assert "python -m deepearth_jax.train --config configs/" in (path.read_text())
    with pytest.raises(AttributeError):
        full.not_a_field = 1  # locked: new fields are refused


def test_overrides_parse_as_the_field_type():
    c = load_config(f"{ROOT}/configs/vision.py")
    apply_overrides(
        c,
        {"optimizer.lr": "3e-4", "batch_size": "64", "model.hidden": "(64, 32)", "mesh.shard_params": "true"},
    )
    assert c.optimizer.lr == pytest.approx(3e-4) and isinstance(c.optimizer.lr, float)
    assert c.batch_size == 64
    assert tuple(c.model.hidden) == (64, 32)
    assert c.mesh.shard_params is True


def test_misspelled_field_fails_with_a_suggestion():
    c = load_config(f"{ROOT}/configs/vision.py")
    with pytest.raises(ValueError, match=r"unknown config field 'optimizer.lrr'.*did you mean lr"):
        apply_overrides(c, {"optimizer.lrr": "1e-3"})
    with pytest.raises(ValueError, match="did you mean batch_size"):
        apply_overrides(c, {"batch_sise": "3"})


def test_bad_config_argument_and_missing_file():
    with pytest.raises(ValueError, match="takes no argument or 'tiny'"):
        load_config(f"{ROOT}/configs/vision.py:huge")
    with pytest.raises(ValueError, match="does not exist"):
        load_config(f"{ROOT}/configs/nope.py")
