"""The step benchmark against the hardware: ceilings, XLA costs, utilisation and the memory fit."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from deepearth_jax.benchmarks import ceilings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_compiled_costs_of_a_matmul_are_its_flops_and_bytes():
    a = jnp.ones((64, 32), jnp.float32)
    b = jnp.ones((32, 16), jnp.float32)
    costs = ceilings.compiled_costs(jax.jit(jnp.dot), a, b)
    assert costs["flops"] == 2 * 64 * 32 * 16
    assert costs["bytes"] == 4 * (64 * 32 + 32 * 16 + 64 * 16)
    assert costs["peak_memory_bytes"] >= 4 * 64 * 16


def test_utilisation_and_roofline_bound():
    ceiling = {"matmul_flops_float32": 1e12, "matmul_flops_bfloat16": 2e12, "copy_bytes_per_s": 1e11}
    compute = ceilings.utilisation(
        {"flops": 1e9, "bytes": 1e6, "peak_memory_bytes": 5}, 2000.0, ceiling, "float32"
    )
    assert compute["bound"] == "compute"
    np.testing.assert_allclose(compute["achieved_flops_per_s"], 5e11)
    np.testing.assert_allclose(compute["utilisation_flops"], 0.5)
    np.testing.assert_allclose(compute["utilisation_bytes"], 5e8 / 1e11)
    memory = ceilings.utilisation(
        {"flops": 1e6, "bytes": 1e9, "peak_memory_bytes": 5}, 2e4, ceiling, "bfloat16"
    )
    assert memory["bound"] == "memory" and np.isclose(memory["utilisation_bytes"], 0.5)
    slow = ceilings.utilisation({"flops": 1e6, "bytes": 1e6, "peak_memory_bytes": 5}, 1e3, ceiling, "float32")
    assert slow["bound"] == "overhead"  # 1 ms for what the roofs allow in 10 us


def test_largest_batch_from_a_linear_fit():
    fit = ceilings.largest_batch([4, 16], [100 + 4 * 10, 100 + 16 * 10], memory_bytes=1100)
    np.testing.assert_allclose([fit["fixed_bytes"], fit["bytes_per_example"]], [100, 10])
    assert fit["largest_batch"] == 100
    assert ceilings.largest_batch([8], [10], 100) is None


def test_step_rows_carry_the_hardware_figures(tmp_path, capsys):
    from deepearth_jax import benchmark

    out = tmp_path / "rows.json"
    argv = [
        "step",
        "--config",
        f"{CONFIGS}/language.py:tiny",
        "--batch-sizes",
        "4,8",
        "--steps-per-call",
        "1,4",
    ]
    argv += ["--min-time", "0.05", "--num-classes", "6", "--matmul-size", "128", "--copy-mb", "4"]
    assert benchmark.main([*argv, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    steps = [r for r in rows if "batch_size" in r]
    assert len(steps) == 4
    for row in steps:
        assert {
            "flops_per_step",
            "utilisation_flops",
            "utilisation_bytes",
            "peak_memory_bytes",
            "bound",
        } <= set(row)
        assert row["flops_per_step"] > 0 and row["peak_memory_bytes"] > 0 and row["utilisation_flops"] > 0
    by_batch = {(r["batch_size"], r["steps_per_call"]): r["flops_per_step"] for r in steps}
    assert by_batch[(4, 1)] == by_batch[(4, 4)] < by_batch[(8, 1)]  # per step, from the K = 1 program
    assert rows[-1]["memory_fit"]["bytes_per_example"] > 0
    printed = capsys.readouterr().out
    assert "ceilings on" in printed and "GFLOP/s" in printed and "the largest batch in" in printed


def test_a_nan_min_time_is_refused_in_one_line(capsys):
    from deepearth_jax import benchmark

    argv = ["step", "--config", f"{CONFIGS}/language.py:tiny", "--batch-sizes", "4", "--min-time", "nan"]
    assert benchmark.main(argv) == 2
    assert "error: --min-time must be a finite number > 0, got nan" in capsys.readouterr().err
