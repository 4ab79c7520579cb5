"""The convert benchmark: the default reader and pyarrow side by side on one source, figures in the JSON."""

import json

import pytest

from deepearth_jax import benchmark
from deepearth_jax.benchmarks import convert as convert_benchmark
from deepearth_jax.benchmarks.convert import PYARROW_READERS
from deepearth_jax.data import store as store_lib
from deepearth_jax.errors import CliError


def test_compare_pyarrow_converts_with_every_reader(hf_source, tmp_path, capsys):
    dataset, source = hf_source
    out, figures_path = tmp_path / "store", tmp_path / "c.json"
    argv = ["convert", "--source", str(source), "--out", str(out), "--json", str(figures_path)]
    assert benchmark.main([*argv, "--compare-pyarrow"]) == 0
    figures = json.loads(figures_path.read_text())
    assert {r: len(one) for r, one in figures["runs"].items()} == {r: 1 for r in ["pages", *PYARROW_READERS]}
    seconds = {r: one[0]["seconds"] for r, one in figures["runs"].items()}
    fastest = min(PYARROW_READERS, key=seconds.get)
    assert figures["pyarrow_best_reader"] == fastest
    assert figures["convert_seconds"] == pytest.approx(seconds["pages"], abs=1e-3)
    assert figures["pages_speedup"] == pytest.approx(seconds[fastest] / seconds["pages"], rel=1e-2)
    assert figures["convert_cpu_seconds"] > 0 and figures["convert_peak_rss_bytes"] > 0
    store = store_lib.open_store(out)  # --out holds the last conversion, complete
    assert figures["vision_rows"] == store.manifest["counts"]["vision_rows"] == int(dataset.has_vision.sum())
    assert "pages.py" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [["--compare-pyarrow"], ["--repeats", "0"]])
def test_bad_flags_are_user_errors(dashboard_source, flags):
    _, source = dashboard_source
    args = benchmark.build_parser().parse_args(["convert", "--source", str(source), *flags])
    with pytest.raises(CliError, match="needs an HF source|--repeats must be at least 1, got 0"):
        convert_benchmark.run(args)
