"""`python -m deepearth_jax.benchmark quickstart` runs both loops end to end (on the tiny config)."""

import json
from pathlib import Path


def test_quickstart_benchmark_runs_on_tiny(tmp_path, capsys):
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
