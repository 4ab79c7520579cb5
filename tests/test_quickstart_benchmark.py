"""`python -m deepearth_jax.benchmark quickstart` runs both loops end to end (on the tiny config)."""

import json
import sys
from pathlib import Path

import pytest
from conftest import optional_import

from deepearth_jax.benchmarks import quickstart
from deepearth_jax.errors import UserError


def test_quickstart_benchmark_runs_on_tiny(tmp_path, capsys):
    optional_import("torch", "the quick start's PyTorch reference loop")
    from deepearth_jax import benchmark

    out = tmp_path / "q.json"
    config = f"{Path(__file__).resolve().parents[1]}/configs/vision.py:tiny"
    assert benchmark.main(["quickstart", "--config", config, "--json", str(out)]) == 0
    row = json.loads(out.read_text())
    assert set(row) == {
        "config", "jax_wall_s", "torch_wall_s", "ratio", "jax_test_top1", "torch_test_top1", "compile_cache",
        "jax_first_wall_s",
    }  # fmt: skip
    assert row["compile_cache"] == "warm"  # a first run filling the cache is rerun
    assert row["jax_first_wall_s"] is None or row["jax_first_wall_s"] > 0
    assert row["jax_wall_s"] > 0 and row["torch_wall_s"] > 0
    assert abs(row["ratio"] - row["torch_wall_s"] / row["jax_wall_s"]) < 1e-2
    assert 0 <= row["jax_test_top1"] <= 1 and 0 <= row["torch_test_top1"] <= 1
    assert "quick start" in capsys.readouterr().out


def test_failed_child_is_named_in_whole_lines(caplog):
    """A child's failure says the command, its status and its last error line whole, never a cut tail."""
    crash = "import sys; print('x' * 600, file=sys.stderr); raise RuntimeError('the reference loop broke')"
    with pytest.raises(UserError) as info:
        quickstart._timed([sys.executable, "-c", crash])
    message = str(info.value)
    assert message.endswith("failed (exit status 1): RuntimeError: the reference loop broke"), message
    assert "\n" not in message and "xxx" not in message
    assert "Traceback (most recent call last):" in caplog.text  # the crash's last lines are logged

    bad_input = (
        "import sys; print('INFO: starting', file=sys.stderr); "
        "sys.stderr.write('error: no such store\\n'); sys.exit(2)"
    )
    with pytest.raises(UserError, match=r"failed \(exit status 2\): no such store$"):
        quickstart._timed([sys.executable, "-c", bad_input])
