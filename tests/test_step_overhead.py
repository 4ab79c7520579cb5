"""The step benchmark's --overhead row: trainer K=1 step vs a bare jax.jit of the same math."""

import json
from pathlib import Path

import numpy as np


def test_step_benchmark_overhead_row(tmp_path, capsys):
    from deepearth_jax import benchmark

    out = tmp_path / "rows.json"
    configs = Path(__file__).resolve().parents[1] / "configs"
    argv = ["step", "--config", f"{configs}/language.py:tiny", "--batch-sizes", "4", "--steps-per-call", "1"]
    argv += ["--overhead", "--min-time", "0.05", "--num-classes", "6", "--json", str(out)]
    assert benchmark.main(argv) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and "overhead_ratio" not in rows[0]
    row = rows[1]
    assert {"trainer_us_per_step", "bare_jit_us_per_step", "overhead_ratio"} <= set(row)
    assert (row["model"], row["batch_size"], row["steps_per_call"]) == (
        "language_classifier 16->8->8->10",
        8,
        1,
    )
    assert row["trainer_us_per_step"] > 0 and row["bare_jit_us_per_step"] > 0
    np.testing.assert_allclose(
        row["overhead_ratio"], row["trainer_us_per_step"] / row["bare_jit_us_per_step"], rtol=1e-2
    )
    assert "overhead (language_classifier 16->8->8->10" in capsys.readouterr().out
