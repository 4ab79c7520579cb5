"""Config files load as a package, shrink with :tiny, lock, and take `--config.FIELD=VALUE` overrides with
one-line errors for a missing or raising file, a misspelled field and a value of the wrong type."""

from pathlib import Path

import ml_collections
import pytest

from deepearth_jax.config_utils import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if p.name not in ("common.py", "__init__.py"))


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
    c = load_config(
        f"{ROOT}/configs/vision.py",
        [
            "--config.optimizer.lr=3e-4",
            "--config.batch_size=64",
            "--config.model.hidden=(64, 32)",
            "--config.mesh.shard_params=true",
            "--config.store=/data/store",
        ],
    )
    assert c.optimizer.lr == pytest.approx(3e-4) and isinstance(c.optimizer.lr, float)
    assert c.batch_size == 64
    assert tuple(c.model.hidden) == (64, 32)
    assert c.mesh.shard_params is True
    assert c.store == "/data/store"
    assert load_config(f"{ROOT}/configs/vision.py", ["--config.optimizer.lr=1"]).optimizer.lr == 1.0


def test_misspelled_field_fails_with_a_suggestion():
    spec = f"{ROOT}/configs/vision.py"
    with pytest.raises(ValueError, match=r"unknown config field 'optimizer.lrr'.*did you mean lr"):
        load_config(spec, ["--config.optimizer.lrr=1e-3"])
    with pytest.raises(ValueError, match="did you mean batch_size"):
        load_config(spec, ["--config.batch_sise=3"])


def test_wrong_type_raising_file_and_missing_file_are_one_line_errors():
    spec = f"{ROOT}/configs/vision.py"
    with pytest.raises(ValueError, match=r"^--config\.batch_size=1\.5: invalid literal for int\(\)") as e:
        load_config(spec, ["--config.batch_size=1.5"])
    assert "\n" not in str(e.value)
    with pytest.raises(
        ValueError, match=r"vision.py:huge failed: ValueError: unknown config argument 'huge'"
    ):
        load_config(f"{spec}:huge")
    with pytest.raises(ValueError, match="does not exist"):
        load_config(f"{ROOT}/configs/nope.py")


def test_configs_import_as_a_package():
    from configs import common, vision

    assert vision.get_config("tiny").batch_size == common.tiny(common.base_config()).batch_size
    with pytest.raises(ValueError, match="takes a value"):
        common.parse_arg("size", size=1)
    assert common.parse_arg("tiny,size=3", tiny=False, size=1).to_dict() == {"tiny": True, "size": 3}


def test_common_config_names_every_mode_and_task():
    """configs/common.py's comments list every input mode and task the code knows (they went stale once)."""
    from deepearth_jax import tasks
    from deepearth_jax.data.modes import MODES

    text = (ROOT / "configs" / "common.py").read_text()
    for name in (*MODES, *tasks.names()):
        assert f" {name} " in text.replace("|", " ").replace(".", " ").replace(",", " "), name


def test_config_files_that_are_not_configs_are_one_line_config_errors(tmp_path):
    from deepearth_jax.errors import ConfigError

    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    with pytest.raises(ConfigError, match=r"broken.py failed: SyntaxError: ") as e:
        load_config(str(broken))
    assert "\n" not in str(e.value)
    plain = tmp_path / "plain.py"
    plain.write_text("X = 1\n")
    with pytest.raises(ConfigError, match=r"plain.py failed: AttributeError: .*get_config"):
        load_config(str(plain))
