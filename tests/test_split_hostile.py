"""Hostile input to `split`: refused with one line naming the flag, file or field; memory stays bounded."""

import json

import numpy as np
import pytest
from conftest import test_seed

from deepearth_jax.data import geo
from deepearth_jax.data import split as split_lib
from deepearth_jax.data.__main__ import main
from deepearth_jax.data.split.folds import _best_swap
from deepearth_jax.data.split.regions import near_boxes
from deepearth_jax.data.synthetic import make_synthetic_store

SEED = test_seed("test_split_hostile module")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("split_hostile") / "s"
    return make_synthetic_store(
        path, observations=800, species=20, vision_shape=(1, 1, 1, 4), language_dim=4, seed=SEED
    )


@pytest.fixture(scope="module")
def good_file(store, tmp_path_factory):
    path = tmp_path_factory.mktemp("split_hostile_file") / "good.json"
    split_lib.write_split(split_lib.make_split(store, seed=SEED, num_regions=2, folds=2, block_km=15.0), path)
    return path


def _fails(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # warnings may come before, on their own lines
    assert err.startswith("error: ") and message in err, err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--region-km", "nan"], "--region-km must be a finite number, got nan"),
        (["--region-km", "inf"], "--region-km must be a finite number, got inf"),
        (["--region-km", "0"], "--region-km must be in 0.001..10000 km, got 0"),
        (["--region-km", "1e9"], "--region-km must be in 0.001..10000 km"),
        (["--min-distance-km", "-1"], "--min-distance-km must be in 0..10000 km, got -1"),
        (["--buffer-km", "nan"], "--buffer-km must be a finite number, got nan"),
        (["--buffer-km", "-0.5"], "--buffer-km must be in 0..10000 km, got -0.5"),
        (["--folds", "2", "--block-km", "nan"], "--block-km must be a finite number, got nan"),
        (["--folds", "2", "--block-km", "-3"], "--block-km must be in 0.001..10000 km"),
        (["--folds", "1"], "--folds must be 0 (none) or an integer in 2..62, got 1"),
        (["--folds", "-4"], "--folds must be 0 (none) or an integer in 2..62, got -4"),
        (["--region-share", "nan"], "--region-share must be a finite number, got nan"),
        (["--region-share", "0"], "--region-share must be a share of the pool in (0, 1], got 0.0"),
        (["--region-share", "1.5"], "--region-share must be a share of the pool in (0, 1]"),
        (["--regions", "-1"], "--regions must be an integer in 0..1000, got -1"),
        (["--regions", "100000", "--min-distance-km", "0"], "--regions must be an integer in 0..1000"),
        (["--seed", "-1"], "--seed must be an integer in 0..9223372036854775807, got -1"),
        (["--validation-years", "-1"], "--validation-years must be an integer in 0..100"),
        (["--validation-regions", "5000"], "--validation-regions must be an integer in 0..1000"),
    ],
)
def test_bad_parameters_are_refused(store, tmp_path, capsys, flags, message):
    out = tmp_path / "s.json"
    _fails(capsys, ["split", str(store.path), "--out", str(out), *flags], message)
    assert not out.exists()


def test_no_training_observations_is_refused(store, tmp_path, capsys):
    out = tmp_path / "s.json"
    # One box of 10,000 km takes every observation as test.
    argv = ["split", str(store.path), "--out", str(out), "--regions", "1", "--region-km", "10000"]
    _fails(
        capsys,
        [*argv, "--validation-years", "0", "--validation-regions", "0"],
        "leaves no training observations (test ",
    )
    years = sorted(set(store.column("year").tolist()))
    argv = ["split", str(store.path), "--out", str(out), "--test-years", ",".join(map(str, years[1:]))]
    _fails(capsys, argv, "--validation-years 1 would hold out every training year")
    argv = ["split", str(store.path), "--out", str(out), "--test-years", ",".join(map(str, years))]
    _fails(capsys, argv, "the split leaves no training observations (test ")
    assert not out.exists()


def test_huge_allocations_are_bounded(store, tmp_path, capsys):
    """The buffer of tiny blocks, and many regions, were quadratic in memory (one case asked for 74 GiB)."""
    out = tmp_path / "s.json"
    argv = [
        "split",
        str(store.path),
        "--out",
        str(out),
        "--folds",
        "2",
        "--block-km",
        "0.001",
        "--buffer-km",
        "5",
    ]
    _fails(capsys, argv, "--buffer-km 5 reaches")
    # The pairwise searches now run in bounded pieces and give the dense answers.
    rng = np.random.default_rng(test_seed())
    for _ in range(20):
        big, small = rng.integers(1, 50, rng.integers(1, 40)), rng.integers(1, 50, rng.integers(1, 40))
        half = float(rng.integers(0, 40)) / 2
        dense = np.unravel_index(
            np.argmin(np.abs(big[:, None] - small[None, :] - half)), (len(big), len(small))
        )
        assert _best_swap(big, small, half, cells=7) == tuple(int(i) for i in dense)
    lat, lon = rng.uniform(28, 29, 300), rng.uniform(-82, -81, 300)
    regions = [{"bounds": geo.box_around(la, lo, 10.0)} for la, lo in zip(lat[:7], lon[:7], strict=True)]
    d = np.stack([geo.distance_to_box_km(lat, lon, r["bounds"]) for r in regions])
    distance, nearest = near_boxes(lat, lon, regions)
    assert np.array_equal(distance, d.min(axis=0)) and np.array_equal(nearest, d.argmin(axis=0))
    counts = split_lib.box_counts(lat, lon, 30.0)
    brute = [
        geo.in_box(lat, lon, geo.box_around(la, lo, 30.0)).sum() for la, lo in zip(lat, lon, strict=True)
    ]
    assert np.array_equal(counts, brute)


def _edit(good_file, tmp_path, change) -> str:
    raw = json.loads(good_file.read_text())
    change(raw)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    return str(path)


def _first_entry(raw):
    return next(iter(raw["observation_mappings"].values()))


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda r: r["test_spatial_regions"][0]["bounds"].update(north="abc"),
            "test_spatial_regions region 1 bounds.north must be a finite number, got 'abc'",
        ),
        (
            lambda r: r["test_spatial_regions"][0]["bounds"].update(south=float("nan")),
            "test_spatial_regions region 1 bounds.south must be a finite number, got nan",
        ),
        (
            lambda r: r["test_spatial_regions"][0]["bounds"].update(south=90.0),
            "test_spatial_regions region 1 bounds must have south <= north",
        ),
        (
            lambda r: r["test_spatial_regions"][1].update(bounds=r["test_spatial_regions"][0]["bounds"]),
            "test_spatial_regions has the bounds of region 2 twice (duplicated region)",
        ),
        (
            lambda r: r["test_spatial_regions"][1].update(region_id=1),
            "test_spatial_regions has region_id 1 twice (duplicated region)",
        ),
        (
            lambda r: r["test_spatial_regions"][0].update(region_id="one"),
            "test_spatial_regions[0].region_id must be an integer, got 'one'",
        ),
        (
            lambda r: r["split_strategy"]["spatial_split"].update(region_size_km="ten"),
            "split_strategy.spatial_split.region_size_km must be a finite number >= 0, got 'ten'",
        ),
        (
            lambda r: r["split_strategy"]["spatial_split"].update(buffer_km=-1),
            "split_strategy.spatial_split.buffer_km must be a finite number >= 0, got -1",
        ),
        (
            lambda r: r["split_strategy"]["temporal_split"].update(test_years=["2025"]),
            "split_strategy.temporal_split.test_years must be a list of integer years, got ['2025']",
        ),
        (
            lambda r: r["split_strategy"]["block_cv"].update(dlat_deg=0),
            "split_strategy.block_cv.dlat_deg must be > 0, got 0",
        ),
        (
            lambda r: r["split_strategy"]["block_cv"]["blocks"][0].update(fold=9),
            "split_strategy.block_cv.blocks[0] must be {row, col, fold in 0..1} integers",
        ),
        (
            lambda r: r["observation_mappings"].update({"12-1": _first_entry(r)}),
            "malformed observation id",
        ),
        (
            lambda r: _first_entry(r).update(gbif_id="abc"),
            "field gbif_id must be an integer, got 'abc'",
        ),
        (
            lambda r: _first_entry(r).update(fold="x"),
            "field fold must be an integer, got 'x'",
        ),
        (
            lambda r: r["validation_regions"].append({"region_id": 1}),
            "every validation_regions entry needs region_id and bounds (entry",
        ),
    ],
)
def test_malformed_regions_from(store, good_file, tmp_path, capsys, change, message):
    bad = _edit(good_file, tmp_path, change)
    out = tmp_path / "s.json"
    _fails(capsys, ["split", str(store.path), "--out", str(out), "--regions-from", bad], message)
    assert not out.exists()


def test_messages_name_the_file(store, good_file, tmp_path, capsys):
    bad = _edit(good_file, tmp_path, lambda r: r["test_spatial_regions"][0]["bounds"].update(east=None))
    _fails(
        capsys,
        ["split", str(store.path), "--out", str(tmp_path / "s.json"), "--regions-from", bad],
        bad + ":",
    )


def test_too_many_regions_in_a_file(store, good_file, tmp_path, capsys):
    def many(raw):
        region = raw["test_spatial_regions"][0]
        raw["test_spatial_regions"] = [
            {
                **region,
                "region_id": k,
                "bounds": {**region["bounds"], "north": region["bounds"]["north"] + k * 1e-6},
            }
            for k in range(1001)
        ]

    bad = _edit(good_file, tmp_path, many)
    _fails(
        capsys,
        ["split", str(store.path), "--out", str(tmp_path / "s.json"), "--regions-from", bad],
        "--regions",
    )


def test_unwritable_output(store, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _fails(
        capsys,
        ["split", str(store.path), "--out", str(tmp_path / "file" / "s.json")],
        "cannot write split file",
    )
    _fails(
        capsys,
        ["split", str(store.path), "--out", str(tmp_path / "s.json"), "--plot", str(tmp_path)],
        "is a directory",
    )
