"""The step benchmark's --overhead row: trainer K=1 step vs a bare jax.jit of the same math."""

import json
from pathlib import Path

import numpy as np


def test_step_benchmark_overhead_row(tmp_path, capsys):
    from deepearth_jax import benchmark

    out = tmp_path / "rows.json"
    configs = Path(__file__).resolve().parents[1] / "configs"
    argv = ["step", "--config", f"{configs}/language.py:tiny", "--batch-sizes", "4", "--steps-per-call", "1"]
    argv += [
        "--overhead",
        "--min-time",
        "0.05",
        "--num-classes",
        "6",
        "--matmul-size",
        "64",
        "--copy-mb",
        "1",
        "--json",
        str(out),
    ]
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


def test_step_benchmark_times_space_time_models(tmp_path):
    """Random batches carry place and date for the modes that read them (geo prior, MAE with its token)."""
    from deepearth_jax import benchmark
    from deepearth_jax.benchmarks import step
    from deepearth_jax.config_utils import load_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    out = tmp_path / "rows.json"
    argv = ["step", "--config", f"{configs}/geo_prior.py:tiny", "--batch-sizes", "4", "--steps-per-call", "1"]
    assert (
        benchmark.main(
            [
                *argv,
                "--min-time",
                "0.05",
                "--num-classes",
                "6",
                "--matmul-size",
                "64",
                "--copy-mb",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())[0]["us_per_step"] > 0
    config = load_config(f"{configs}/mae.py:tiny")
    batch = step.random_batch(config, step.input_dims_of(config), 5, num_species=3)
    assert batch["location"].shape == (5, 3) and batch["time"].shape == (5, 6)
    assert np.all((batch["time"][:, 1] >= 1) & (batch["time"][:, 1] <= 12) & (batch["time"][:, 0] >= 2010))
