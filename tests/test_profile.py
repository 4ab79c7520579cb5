"""--config.profile_steps=START,COUNT writes a jax.profiler trace of those steps; off by default."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import store_and_split

from deepearth_jax import profiling
from deepearth_jax import train as train_lib
from deepearth_jax.config_utils import load_config
from deepearth_jax.inputs import TrainError

ROOT = Path(__file__).resolve().parents[1]


def test_profile_steps_parse():
    assert profiling.parse_profile_steps("") is None
    assert profiling.parse_profile_steps("5,3") == (5, 3)
    assert profiling.parse_profile_steps("(0, 1)") == (0, 1)
    for bad, message in [
        ("5", "START,COUNT"),
        ("a,b", "START,COUNT"),
        ("-1,2", ">= 0"),
        ("2,0", "COUNT >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            profiling.parse_profile_steps(bad)


def test_profiled_run_writes_a_trace_and_a_plain_run_none(tmp_path):
    store, split = store_and_split(tmp_path)
    base = [f"--config.store={store}", f"--config.split_file={split}", "--config.num_steps=8"]
    config = load_config(f"{ROOT}/configs/language.py:tiny", [*base, "--config.profile_steps=2,3"])
    summary = train_lib.train_and_evaluate(config, tmp_path / "p")
    assert summary["complete"]
    traces = list((tmp_path / "p" / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    plain = train_lib.train_and_evaluate(
        load_config(f"{ROOT}/configs/language.py:tiny", base), tmp_path / "n"
    )
    assert plain["params_checksum"] == summary["params_checksum"]  # profiling changes nothing trained
    assert not (tmp_path / "n" / "profile").exists()
    bad = load_config(f"{ROOT}/configs/language.py:tiny", [*base, "--config.profile_steps=x"])
    with pytest.raises(TrainError, match="config: profile_steps must be START,COUNT"):
        train_lib.train_and_evaluate(bad, tmp_path / "bad")
