"""`python -m deepearth_jax.benchmark scale` end to end on tiny sizes: every stage timed, exponents fitted."""

import json
from pathlib import Path

import pytest

from deepearth_jax import benchmark
from deepearth_jax.benchmarks import scale


@pytest.mark.slow  # eight child processes (two of them compile the geo prior): about a minute on 2 idle cores
def test_scale_benchmark_times_every_stage_and_fits_exponents(tmp_path, capsys):
    out = tmp_path / "scale.json"
    config = f"{Path(__file__).resolve().parents[1]}/configs/geo_prior.py:tiny"
    argv = ["scale", "--sizes", "600,1500", "--species", "20", "--config", config, "--json", str(out)]
    assert benchmark.main([*argv, "--workdir", str(tmp_path / "w")]) == 0
    result = json.loads(out.read_text())
    assert result["sizes"] == [600, 1500] and result["species"] == [20, 20]
    assert set(result["stages"]) == set(scale.STAGES)
    for figures in [*result["stages"].values(), result["store_to_summary"]]:
        assert len(figures["seconds"]) == 2 and all(t > 0 for t in figures["seconds"])
        assert len(figures["peak_rss_mb"]) == 2 and all(m > 10 for m in figures["peak_rss_mb"])
        assert figures["exponent"] == pytest.approx(scale.exponent([600, 1500], figures["seconds"]))
    total = [sum(result["stages"][s]["seconds"][i] for s in scale.TO_SUMMARY) for i in range(2)]
    assert result["store_to_summary"]["seconds"] == pytest.approx(total, abs=1e-2)
    summary = json.loads((tmp_path / "w" / "run-1500" / "eval_test" / "metrics.json").read_text())
    assert "test/baseline_kde/top5" in summary and "test/baseline_knn_weighted/top5_ci" in summary
    assert "store_to_summary" in capsys.readouterr().out


def test_exponent_is_the_log_log_slope_and_sizes_are_checked():
    assert scale.exponent([10, 100, 1000], [1.0, 10.0, 100.0]) == pytest.approx(1.0)
    assert scale.exponent([10, 100], [2.0, 200.0]) == pytest.approx(2.0)
    assert scale.exponent([10], [1.0]) is None
    assert scale.parse_sizes("500,2000") == [500, 2000]
    for bad in ("", "2000,500", "50", "1e4"):
        with pytest.raises(scale.CliError, match="--sizes"):
            scale.parse_sizes(bad)
