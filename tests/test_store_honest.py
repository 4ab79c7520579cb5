"""README's synthetic example as written; lopsided splits refused; honest end-of-run lines; a store untouched.

Issue 20 items 2 and 3: `split` on a small study area fits its regions (or refuses with the flags that fix
it), a run that does no better than the frequency baseline says so, unseen test species are counted on the
console, and training + evaluation never write into the store.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from deepearth_jax import evaluate as evaluate_lib
from deepearth_jax import honesty, inputs
from deepearth_jax import train as train_lib
from deepearth_jax.config_utils import load_config
from deepearth_jax.data import split as split_lib
from deepearth_jax.data import store as store_lib
from deepearth_jax.data.__main__ import main as data_main
from deepearth_jax.data.split import sizing
from deepearth_jax.errors import SplitError

ROOT = Path(__file__).resolve().parents[1]
README_SYNTH = "--observations 300 --species 20 --vision-shape 2,4,4,64".split()


@pytest.fixture(scope="module")
def readme_store(tmp_path_factory):
    """README's synthetic example as a store (300 observations at 7 sites, 20 species)."""
    root = tmp_path_factory.mktemp("readme")
    assert data_main(["synth", "--layout", "store", "--out", str(root / "s"), *README_SYNTH]) == 0
    return root / "s"


def _snapshot(path: Path) -> dict:
    """Every entry under `path` (itself included): name -> (mode, size, mtime ns, contents of files)."""
    out = {}
    for entry in [path, *sorted(path.rglob("*"))]:
        st = entry.lstat()
        data = entry.read_bytes() if entry.is_file() and not entry.is_symlink() else None
        out[str(entry.relative_to(path))] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    return out


def _shares(payload: dict) -> dict:
    s = payload["split_statistics"]
    n = s["total_observations"]
    return {k: s[f"{k}_count"] / n for k in ("train", "test", "validation")} | {
        "train_rows": s["train_count"]
    }


# ----------------------------------------------------------------------------------------------------------
# Split sizing


def test_default_regions_are_fitted_to_a_small_study_area(readme_store, caplog):
    store = store_lib.open_store(readme_store)
    with caplog.at_level(logging.WARNING):
        payload = split_lib.make_split(store)
    spatial = payload["split_strategy"]["spatial_split"]
    # The defaults (5 x 10 km) put 92.6% in test here; the first fitting candidate is 5 regions of 2.5 km.
    assert spatial["sizing"]["fitted"] and spatial["sizing"]["requested"] == sizing.flags(split_lib.DEFAULTS)
    assert (spatial["num_test_regions"], spatial["region_size_km"], spatial["min_distance_km"]) == (
        5,
        2.5,
        3.75,
    )
    assert payload["split_strategy"]["validation"]["region_size_km"] == 2.5
    shares = _shares(payload)
    assert shares["test"] <= sizing.MAX_TEST_SHARE and shares["validation"] <= sizing.MAX_VALIDATION_SHARE
    assert shares["train"] >= sizing.MIN_TRAIN_SHARE and shares["train_rows"] >= sizing.MIN_TRAIN_ROWS
    assert "fitted to this pool instead: --regions 5 --region-km 2.5 --min-distance-km 3.75" in caplog.text
    assert "test 264 of 285 (92.6% > 50%)" in caplog.text
    assert "regions fitted to this pool: 5 of 2.5 km" in split_lib.summary(payload)
    # Deterministic, and exactly the split those regions give when asked for by name.
    again = split_lib.make_split(store, num_regions=5, region_km=2.5, min_distance_km=3.75)
    assert again["observation_mappings"] == payload["observation_mappings"]


def test_a_split_inside_the_bounds_is_never_refitted(tmp_path):
    from deepearth_jax.data.synthetic import make_synthetic_store

    store = make_synthetic_store(
        tmp_path / "s", observations=2000, species=30, vision_shape=(1, 1, 1, 4), language_dim=4, seed=1
    )
    fitted = split_lib.make_split(store)
    asked = split_lib.make_split(store, num_regions=5, region_km=10.0, min_distance_km=15.0)
    assert not fitted["split_strategy"]["spatial_split"]["sizing"]["fitted"]
    assert fitted["observation_mappings"] == asked["observation_mappings"]


def test_explicit_lopsided_regions_are_refused_naming_the_flags_that_fit(readme_store, tmp_path, capsys):
    out = tmp_path / "split.json"
    status = data_main(["split", str(readme_store), "--out", str(out), "--region-km", "10"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 2 and not out.exists()
    assert err == (
        "error: lopsided split: test 264 of 285 (92.6% > 50%); training 12 (4.2%; needs >= 33% and >= 32 "
        "rows, one batch); --regions 5 --region-km 2.5 --min-distance-km 3.75 fits (train 45%, test 39%, "
        "validation 16%), or pass --allow-lopsided to keep it"
    )
    assert (
        data_main(["split", str(readme_store), "--out", str(out), "--region-km", "10", "--allow-lopsided"])
        == 0
    )
    captured = capsys.readouterr()
    assert "LOPSIDED SPLIT: test 264 of 285" in captured.err
    assert json.loads(out.read_text())["split_statistics"]["train_count"] == 12


def test_a_split_no_region_size_can_fix_is_refused_with_the_other_flags(readme_store, tmp_path, capsys):
    # Four test years hold most of this store's rows: no box size or count can bring test under half.
    args = [
        "split",
        str(readme_store),
        "--out",
        str(tmp_path / "s.json"),
        "--test-years",
        "2022,2023,2024,2025",
    ]
    assert data_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: lopsided split: test ")
    assert "no smaller or fewer regions fit; use fewer --test-years or --validation-years" in err
    assert err.endswith("or pass --allow-lopsided to keep it")


def test_the_library_keeps_a_lopsided_split_with_a_warning(readme_store, caplog):
    with caplog.at_level(logging.WARNING):
        payload = split_lib.make_split(store_lib.open_store(readme_store), region_km=10.0)
    assert payload["split_strategy"]["spatial_split"]["sizing"]["problems"][0].startswith("test 264 of 285")
    assert "LOPSIDED SPLIT" in caplog.text
    with pytest.raises(SplitError, match="lopsided split: test 264 of 285"):
        split_lib.make_split(store_lib.open_store(readme_store), region_km=10.0, strict=True)


def test_the_bounds_are_checked_in_closed_form():
    n = 100
    split = np.array(["train"] * 40 + ["test"] * 35 + ["validation"] * 25, dtype=object)
    assert sizing.problems(split) == []
    split[:8] = "test"  # 32 train, 43 test: training under a third
    assert sizing.problems(split) == ["training 32 (32.0%; needs >= 33% and >= 32 rows, one batch)"]
    split = np.array(["train"] * 45 + ["test"] * 51 + ["validation"] * 4, dtype=object)
    assert sizing.problems(split) == ["test 51 of 100 (51.0% > 50%)"]
    split = np.array(["train"] * 40 + ["test"] * 20 + ["validation"] * 34 + ["excluded"] * 6, dtype=object)
    assert sizing.problems(split) == ["validation 34 (34.0% > 33%)"]
    assert len(split) == n


# ----------------------------------------------------------------------------------------------------------
# README's example end to end, the honest end of a run, and a store left as it was


def _train_config(store: Path, split: Path, **overrides):
    values = {"store": store, "split_file": split, "num_steps": 10, "eval_every_steps": 5, **overrides}
    return load_config(f"{ROOT}/configs/vision.py", [f"--config.{k}={v}" for k, v in values.items()])


def test_readme_example_splits_trains_and_evaluates_without_touching_the_store(
    readme_store, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("DEEPEARTH_CACHE", str(tmp_path / "cache"))
    split = tmp_path / "split.json"
    assert data_main(["split", str(readme_store), "--out", str(split)]) == 0
    before = _snapshot(readme_store)
    capsys.readouterr()
    summary = train_lib.train_and_evaluate(_train_config(readme_store, split), tmp_path / "w")
    metrics = evaluate_lib.evaluate_workdir(tmp_path / "w")
    console = capsys.readouterr().out
    assert _snapshot(readme_store) == before  # bytes, listing, modes and mtimes: nothing written
    assert summary["complete"] and summary["baseline_check"]["metric"] == "validation/top1"
    assert (
        json.loads((tmp_path / "w" / "summary.json").read_text())["baseline_check"]
        == summary["baseline_check"]
    )
    # Every test species of this split also trains: said so, once by train and once by evaluate.
    assert metrics["test/unseen_species/count"] == 0
    line = f"test: every one of the {int(metrics['test/count'])} rows is of a species seen in training"
    assert console.count(line) == 2
    assert any((tmp_path / "cache" / "pooled").rglob("vision_mean.npy"))  # the derived cache went here


def test_unseen_test_species_are_counted_on_the_console(readme_store, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEEPEARTH_CACHE", str(tmp_path / "cache"))
    split = tmp_path / "lopsided.json"
    args = ["split", str(readme_store), "--out", str(split), "--region-km", "10", "--allow-lopsided"]
    assert data_main(args) == 0
    config = _train_config(readme_store, split, batch_size=8, num_steps=2, eval_every_steps=2)
    data = inputs.prepare_data(config, tmp_path / "w")
    species = data.store.column("species_index")
    unseen = ~np.isin(species[data.test_rows], species[data.train_rows])  # numpy reference
    expected_rows, expected_species = int(unseen.sum()), len(np.unique(species[data.test_rows][unseen]))
    assert expected_rows > len(data.test_rows) / 2  # most test rows: the case the issue names
    capsys.readouterr()
    summary = train_lib.train_and_evaluate(config, tmp_path / "w")
    metrics = evaluate_lib.evaluate_workdir(tmp_path / "w")
    console = capsys.readouterr().out
    n = len(data.test_rows)
    line = (
        f"test: {expected_rows} of {n} rows ({100 * expected_rows / n:.1f}%) are of {expected_species} "
        "species never seen in training"
    )
    assert console.count(line) == 2, console
    assert metrics["test/unseen_species/count"] == expected_rows
    assert metrics["test/unseen_species/species/count"] == expected_species
    assert summary["best"]["test/unseen_species/species/count"] == expected_species


def test_a_model_no_better_than_the_frequency_baseline_says_so(readme_store, tmp_path, monkeypatch, caplog):
    """A learning rate of 1e-12 keeps the random initial weights: validation top-1 stays at chance, below
    always naming the most frequent species."""
    monkeypatch.setenv("DEEPEARTH_CACHE", str(tmp_path / "cache"))
    split = tmp_path / "split.json"
    split_lib.write_split(split_lib.make_split(store_lib.open_store(readme_store)), split)
    config = _train_config(readme_store, split, num_steps=2, eval_every_steps=2, **{"optimizer.lr": 1e-12})
    with caplog.at_level(logging.WARNING, logger="deepearth_jax.train"):
        summary = train_lib.train_and_evaluate(config, tmp_path / "w")
    check = summary["baseline_check"]
    best = summary["best"]
    assert check == {
        "metric": "validation/top1",
        "model": best["validation/top1"],
        "baseline_frequency": best["validation/baseline_frequency/top1"],
        "beats_frequency_baseline": False,
    }
    assert check["model"] <= check["baseline_frequency"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "deepearth_jax.train"]
    assert len(warnings) == 1
    assert (
        warnings[0]
        .getMessage()
        .startswith(
            "the selected checkpoint does no better than the frequency baseline on validation "
            f"(validation/top1={check['model']:.4f} <= {check['baseline_frequency']:.4f}"
        )
    )
    assert json.loads((tmp_path / "w" / "summary.json").read_text())["baseline_check"] == check


def test_versus_frequency_and_the_lines_in_closed_form():
    row = {"validation/top1": 0.25, "validation/baseline_frequency/top1": 0.25}
    check = honesty.versus_frequency(row)
    assert check["beats_frequency_baseline"] is False  # equal is no better
    assert "0.2500 <= 0.2500" in honesty.baseline_warning(check)
    row["validation/top1"] = 0.2501
    assert honesty.baseline_warning(honesty.versus_frequency(row)) is None
    assert honesty.versus_frequency({"validation/retrieval_top1": 0.5}) is None  # no baseline (MAE)
    counts = {"test/count": 8.0, "test/unseen_species/count": 3.0, "test/unseen_species/species/count": 2.0}
    assert honesty.unseen_line(counts).startswith(
        "test: 3 of 8 rows (37.5%) are of 2 species never seen in training"
    )


# ----------------------------------------------------------------------------------------------------------
# A store nobody may write


_AS_NOBODY = """
import os, sys
os.setgid(65534); os.setuid(65534)
os.environ["HOME"] = sys.argv[1]
from deepearth_jax import evaluate, train
from deepearth_jax.config_utils import load_config
config = load_config(sys.argv[2] + "/configs/vision.py", sys.argv[3:])
train.train_and_evaluate(config, sys.argv[1] + "/w")
evaluate.evaluate_workdir(sys.argv[1] + "/w")
"""


def _usable_as_nobody() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", "import os; os.setgid(65534); os.setuid(65534); import deepearth_jax, jax"],
        capture_output=True,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return probe.returncode == 0


def _set_writable(store: Path, writable: bool) -> None:
    for path in [store, *store.iterdir()]:
        mode = path.stat().st_mode
        path.chmod(mode | 0o200 if writable else mode & ~0o222)


def test_a_read_only_store_trains_and_evaluates(readme_store):
    """Without root the store is made read-only (chmod); as root chmod stops nothing, so the run drops to
    the user nobody, for whom the store is not writable (skipped where nobody cannot run this Python)."""
    as_root = os.geteuid() == 0
    if as_root and not _usable_as_nobody():
        pytest.skip("the user nobody cannot import this Python's packages (they live under /root)")
    root = Path(tempfile.mkdtemp(prefix="deepearth-read-only-"))  # outside pytest's 0700 tmp dirs
    try:
        store, split, run = root / "store", root / "split.json", root / "run"
        shutil.copytree(readme_store, store)
        split_lib.write_split(split_lib.make_split(store_lib.open_store(store)), split)
        run.mkdir()
        for path in (root, split, run):
            path.chmod(0o777 if path == run else 0o755 if path.is_dir() else 0o644)
        before = _snapshot(store)
        _set_writable(store, False)
        code = _AS_NOBODY if as_root else _AS_NOBODY.replace("os.setgid(65534); os.setuid(65534)", "pass")
        overrides = [f"--config.store={store}", f"--config.split_file={split}", "--config.num_steps=2"]
        try:
            done = subprocess.run(
                [sys.executable, "-c", code, str(run), str(ROOT), *overrides],
                capture_output=True,
                text=True,
                timeout=300,
                cwd=run,
                env={**os.environ, "PYTHONPATH": str(ROOT), "DEEPEARTH_CACHE": str(run / "cache")},
            )
        finally:
            _set_writable(store, True)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (run / "w" / "eval_test" / "metrics.json").is_file()
        assert any((run / "cache" / "pooled").rglob("vision_mean.npy"))
        after = _snapshot(store)
        assert {k: v[1:] for k, v in after.items()} == {k: v[1:] for k, v in before.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)
