"""Spatiotemporal splits: geometry, determinism, --regions-from, buffers, the original schema, block CV."""

import copy
import json
import math

import numpy as np
import pyarrow as pa
import pytest
from conftest import test_seed
from geographiclib.geodesic import Geodesic

from deepearth_jax.data import geo
from deepearth_jax.data import split as split_lib
from deepearth_jax.data.__main__ import main
from deepearth_jax.data.synthetic import make_synthetic_store

SEED = test_seed("test_split module")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("split") / "s"
    return make_synthetic_store(
        path, observations=2000, species=40, vision_shape=(1, 1, 1, 4), language_dim=4, seed=SEED
    )


@pytest.fixture(scope="module")
def payload(store):
    return split_lib.make_split(store, seed=SEED, buffer_km=2.0)


def _pool_columns(store, all_observations=False):
    rows = (
        np.arange(store.num_observations)
        if all_observations
        else np.flatnonzero(store.column("vision_row") >= 0)
    )
    return (
        rows,
        store.column("latitude")[rows],
        store.column("longitude")[rows],
        store.column("year")[rows],
        store.observation_ids[rows],
    )


def _reasons(payload):
    return {k: v["split_reason"] for k, v in payload["observation_mappings"].items()}


def _without_time(payload):
    payload = copy.deepcopy(payload)
    payload["dataset_info"].pop("split_created")
    return payload


def test_holdout_follows_the_original_rules(store, payload):
    rows, lat, lon, year, ids = _pool_columns(store)
    mappings = payload["observation_mappings"]
    assert list(mappings) == ids.tolist()  # the vision pool, in store order
    regions = payload["test_spatial_regions"]
    assert [r["region_id"] for r in regions] == [1, 2, 3, 4, 5]
    for i, oid in enumerate(ids):
        # The rule written out by hand, one observation at a time: temporal, then regions in order override.
        reason = "temporal_test" if year[i] == 2025 else "temporal_train"
        for r in regions:
            b = r["bounds"]
            if b["south"] <= lat[i] <= b["north"] and b["west"] <= lon[i] <= b["east"]:
                reason = f"spatial_test_region_{r['region_id']}"
        got = mappings[oid]["split_reason"]
        if got.startswith(("buffer_region_", "validation_")):
            assert reason == "temporal_train"  # buffers and validation only ever take training rows
        else:
            assert got == reason, oid
        expected_split = (
            "excluded"
            if "buffer" in got
            else "validation"
            if got.startswith("validation_")
            else ("train" if reason == "temporal_train" else "test")
        )
        assert mappings[oid]["split"] == expected_split
    for r in regions:
        # Boxes exactly as the original, centred on an observation of the pool.
        center = mappings[r["center_observation_id"]]
        assert (center["latitude"], center["longitude"]) == (r["center_lat"], r["center_lng"])
        assert center["gbif_id"] == r["center_gbif_id"] and center["taxon_name"] == r["center_species"]
        half_lat = 5.0 / 111.0
        half_lon = 5.0 / (111.0 * math.cos(math.radians(r["center_lat"])))
        assert r["bounds"] == {
            "north": r["center_lat"] + half_lat,
            "south": r["center_lat"] - half_lat,
            "east": r["center_lng"] + half_lon,
            "west": r["center_lng"] - half_lon,
        }
        assert r["size_km"] == 10.0
    # Centres at least 15 km apart on WGS84 (checked with geographiclib).
    for a in regions:
        for b in regions:
            if a is not b:
                d = Geodesic.WGS84.Inverse(
                    a["center_lat"], a["center_lng"], b["center_lat"], b["center_lng"]
                )["s12"]
                assert d / 1000 >= 15.0


def test_statistics_superset_of_the_original(store, payload):
    for key in split_lib.ORIGINAL_KEYS:
        assert key in payload
    s = payload["split_statistics"]
    reasons = np.asarray(list(_reasons(payload).values()))
    splits = np.asarray([v["split"] for v in payload["observation_mappings"].values()])
    assert s["total_observations"] == len(reasons)
    assert s["train_count"] == (splits == "train").sum() and s["test_count"] == (splits == "test").sum()
    assert (
        s["excluded_count"]
        == (splits == "excluded").sum()
        == s["buffer_excluded_count"] + s["validation_buffer_excluded_count"]
    )
    assert s["validation_count"] == (splits == "validation").sum() > 0
    assert s["validation_temporal_count"] + s["validation_spatial_count"] == s["validation_count"]
    assert s["train_count"] + s["test_count"] + s["excluded_count"] + s["validation_count"] == len(reasons)
    assert s["temporal_test_count"] == (reasons == "temporal_test").sum()
    assert s["spatial_test_count"] == s["test_count"] - s["temporal_test_count"]
    total = (
        s["train_percentage"] + s["test_percentage"] + s["excluded_percentage"] + s["validation_percentage"]
    )
    assert total == pytest.approx(100.0)
    names = np.asarray([v["taxon_name"] for v in payload["observation_mappings"].values()])
    assert s["unique_species_train"] == len(set(names[splits == "train"]))
    unseen = sorted(set(names[splits == "test"]) - set(names[splits == "train"]))
    assert s["unseen_test_species"] == {"count": len(unseen), "names": unseen}
    years = np.asarray([v["year"] for v in payload["observation_mappings"].values()])
    for y, counts in s["per_year"].items():
        assert counts["test"] == ((years == int(y)) & (splits == "test")).sum()
    for r in payload["test_spatial_regions"]:
        k = r["region_id"]
        assert (
            s["per_region"][str(k)]["test_count"]
            == r["observation_count"]
            == (reasons == f"spatial_test_region_{k}").sum()
        )
        assert s["per_region"][str(k)]["buffer_excluded_count"] == (reasons == f"buffer_region_{k}").sum()
    # The leakage diagnostic, by brute force.
    lat = np.asarray([v["latitude"] for v in payload["observation_mappings"].values()])
    lon = np.asarray([v["longitude"] for v in payload["observation_mappings"].values()])
    spatial = np.char.startswith(reasons, "spatial_test")
    train = splits == "train"
    d = geo.geodesic_km(lat[spatial][:, None], lon[spatial][:, None], lat[train][None], lon[train][None]).min(
        1
    )
    near = s["nearest_train_distance_km"]["spatial_test"]
    assert near["count"] == spatial.sum()
    assert near["median_km"] == pytest.approx(np.median(d), abs=1e-9)
    assert near["p5_km"] == pytest.approx(np.percentile(d, 5), abs=1e-9)
    assert near["min_km"] > 2.0  # the 2 km buffer holds training points away from the boxes


def test_buffer_excludes_training_points_near_boxes(payload):
    b_km = 2.0
    regions = payload["test_spatial_regions"]
    entries = payload["observation_mappings"].values()
    excluded = [e for e in entries if e["split"] == "excluded"]
    assert excluded, "a 2 km buffer around 5 boxes in clustered data excludes something"
    validation_regions = payload["validation_regions"]
    assert validation_regions and any(e["split_reason"].startswith("validation_buffer") for e in excluded)
    for e in entries:
        d = np.array([geo.distance_to_box_km(e["latitude"], e["longitude"], r["bounds"]) for r in regions])
        v = np.array(
            [geo.distance_to_box_km(e["latitude"], e["longitude"], r["bounds"]) for r in validation_regions]
        )
        if e["split_reason"] == "temporal_train":
            assert d.min() > b_km and v.min() > b_km
        elif e["split"] == "excluded":
            k = int(e["split_reason"].rsplit("_", 1)[1])
            boxes, dist = (
                (validation_regions, v) if e["split_reason"].startswith("validation") else (regions, d)
            )
            assert 0 < dist.min() <= b_km and boxes[int(np.argmin(dist))]["region_id"] == k
            assert e["year"] != 2025


def test_deterministic_by_seed(store, payload):
    again = split_lib.make_split(store, seed=SEED, buffer_km=2.0)
    assert _without_time(again) == _without_time(payload)
    other = split_lib.make_split(store, seed=SEED + 1, buffer_km=2.0)
    centres = {r["center_observation_id"] for r in payload["test_spatial_regions"]}
    assert centres != {r["center_observation_id"] for r in other["test_spatial_regions"]}


def test_regions_from_reproduces_reason_by_reason(store, payload, tmp_path):
    split_lib.write_split(payload, tmp_path / "a.json")
    again = split_lib.make_split(store, regions_from=tmp_path / "a.json")
    assert _reasons(again) == _reasons(payload)
    assert again["test_spatial_regions"] == payload["test_spatial_regions"]
    s, t = again["split_statistics"], payload["split_statistics"]
    for key in (
        "train_count",
        "test_count",
        "excluded_count",
        "temporal_test_count",
        "per_region",
        "per_year",
    ):
        assert s[key] == t[key]
    assert s["regions_from"]["shared_observations"] == len(payload["observation_mappings"])
    # A store whose coordinates differ cannot reproduce it: that fails loudly.
    broken = json.loads((tmp_path / "a.json").read_text())
    oid = next(k for k, v in broken["observation_mappings"].items() if v["split_reason"] == "temporal_train")
    broken["observation_mappings"][oid]["split_reason"] = "temporal_test"
    (tmp_path / "b.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"gives 1 of \d+ shared ids another reason"):
        split_lib.make_split(store, regions_from=tmp_path / "b.json")


def _original_file(store, path):
    """A split written by hand in the original schema: one region around an observation, test year 2025."""
    rows, lat, lon, year, ids = _pool_columns(store)
    c = int(np.argmin(np.abs(lat - np.median(lat)) + np.abs(lon - np.median(lon))))
    half_lat, half_lon = 5 / 111.0, 5 / (111.0 * math.cos(math.radians(lat[c])))
    bounds = {
        "north": float(lat[c] + half_lat),
        "south": float(lat[c] - half_lat),
        "east": float(lon[c] + half_lon),
        "west": float(lon[c] - half_lon),
    }
    mappings = {}
    for i, oid in enumerate(ids):
        inside = bounds["south"] <= lat[i] <= bounds["north"] and bounds["west"] <= lon[i] <= bounds["east"]
        reason = (
            "spatial_test_region_3" if inside else ("temporal_test" if year[i] == 2025 else "temporal_train")
        )
        mappings[oid] = {
            "gbif_id": int(oid.split("_")[0]),
            "taxon_id": 123,
            "taxon_name": "x",
            "image_index": 1,
            "split": "train" if reason == "temporal_train" else "test",
            "split_reason": reason,
            "latitude": float(lat[i]),
            "longitude": float(lon[i]),
            "year": int(year[i]),
            "month": 1,
            "day": 1,
        }
    raw = {
        "dataset_info": {"dataset_name": "central-florida-native-plants", "version": "0.2.0"},
        "split_strategy": {
            "temporal_split": {"train_years": "all except 2025", "test_years": [2025]},
            "spatial_split": {"num_test_regions": 1, "region_size_km": 10.0, "min_distance_km": 15.0},
        },
        "train_spatial_bounds": {"north": 29.0, "south": 28.0, "east": -80.9, "west": -82.0},
        "test_spatial_regions": [
            {
                "region_id": 3,  # the original's ids may skip numbers
                "center_gbif_id": int(ids[c].split("_")[0]),
                "center_species": "x",
                "center_lat": float(lat[c]),
                "center_lng": float(lon[c]),
                "bounds": bounds,
                "size_km": 10.0,
            }
        ],
        "split_statistics": {"total_observations": len(ids)},
        "observation_mappings": mappings,
    }
    path.write_text(json.dumps(raw, indent=1))
    return raw


def test_original_schema_file_loads_and_is_reproduced(store, tmp_path):
    raw = _original_file(store, tmp_path / "central_florida_split.json")
    split = split_lib.load_split(tmp_path / "central_florida_split.json")
    reasons = {k: v["split_reason"] for k, v in raw["observation_mappings"].items()}
    assert split.reasons == reasons
    assert split.folds is None and split.excluded_ids == []
    assert set(split.train_ids) == {k for k, r in reasons.items() if r == "temporal_train"}
    assert len(split.train_ids) + len(split.test_ids) == len(reasons)
    assert sum(r == "spatial_test_region_3" for r in reasons.values()) > 0
    test_rows = split.rows(store, "test")
    assert test_rows.dtype == np.int64 and np.all(np.diff(test_rows) > 0)
    assert test_rows.tolist() == sorted(store.rows_of(split.test_ids).tolist())
    got = split.reason_of_rows(store, test_rows)
    assert all(got[j] == reasons[store.observation_ids[r]] for j, r in enumerate(test_rows))
    again = split_lib.make_split(store, regions_from=split, validation_years=0, validation_regions=0)
    assert _reasons(again) == reasons
    # With the default validation carve-out, only training rows change reason.
    carved = _reasons(split_lib.make_split(store, regions_from=split))
    assert {k for k in reasons if carved[k] != reasons[k]} <= set(split.train_ids)


def test_rows_reports_ids_the_store_lacks(store, payload, tmp_path):
    raw = copy.deepcopy(payload)
    entry = dict(next(iter(raw["observation_mappings"].values())))
    for gbif in (7, 8, 9):
        raw["observation_mappings"][f"{gbif}_1"] = {**entry, "gbif_id": gbif, "split": "test"}
    (tmp_path / "m.json").write_text(json.dumps(raw))
    split = split_lib.load_split(tmp_path / "m.json")
    with pytest.raises(
        ValueError, match=r"names 3 observation id\(s\) that store .* lacks: '7_1', '8_1', '9_1'"
    ):
        split.rows(store, "train")
    test = split.rows(store, "test", allow_missing=True)
    assert len(test) == payload["split_statistics"]["test_count"]
    # The CLI fails the same way unless --allow-missing.
    out = tmp_path / "c.json"
    assert (
        main(["split", str(store.path), "--out", str(out), "--regions-from", str(tmp_path / "m.json")]) == 2
    )
    assert not out.exists()
    code = main(
        [
            "split",
            str(store.path),
            "--out",
            str(out),
            "--regions-from",
            str(tmp_path / "m.json"),
            "--allow-missing",
        ]
    )
    assert (
        code == 0
        and json.loads(out.read_text())["split_statistics"]["regions_from"]["missing_from_store"] == 3
    )


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"foo": 1}, "not a DeepEarth split file: missing key"),
        ([1, 2], "not a JSON object"),
        (
            {"split_strategy": {}, "test_spatial_regions": [], "observation_mappings": {"12-1": {}}},
            "malformed observation id",
        ),
        (
            {"split_strategy": {}, "test_spatial_regions": [], "observation_mappings": {"12_0": {}}},
            "malformed observation id",
        ),
        (
            {
                "split_strategy": {},
                "test_spatial_regions": [],
                "observation_mappings": {"12_1": {"split": "val", "split_reason": "x"}},
            },
            "expected train, test, excluded or validation",
        ),
        (
            {
                "format": {"name": "other", "version": 9},
                "split_strategy": {},
                "test_spatial_regions": [],
                "observation_mappings": {},
            },
            "has split format",
        ),
    ],
)
def test_bad_split_files(tmp_path, raw, message):
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=message) as e:
        split_lib.load_split(tmp_path / "bad.json")
    assert "\n" not in str(e.value)


def test_bad_generation_input(store):
    with pytest.raises(
        ValueError, match=r"test year\(s\) 2031 have no observations .*years present: 2010..2025"
    ):
        split_lib.make_split(store, test_years=(2025, 2031))
    with pytest.raises(
        ValueError, match=r"cannot place 40 test regions of 10 km with centres >= 40 km apart.*at most"
    ):
        split_lib.make_split(store, num_regions=40, min_distance_km=40.0)
    with pytest.raises(ValueError, match="no observation's box holds such a share"):
        split_lib.make_split(store, region_share=0.9)


def test_region_share_is_a_constraint_when_given(store, payload):
    selection = payload["split_strategy"]["spatial_split"]["selection"]
    assert selection["share_range_is_constraint"] is False
    lo, hi = selection["share_range"]
    shares = [r["box_share"] for r in payload["test_spatial_regions"]]
    assert selection["regions_outside_share_range"] == sum(not lo <= x <= hi for x in shares)
    # Each box's share, counted by hand.
    _, lat, lon, _, _ = _pool_columns(store)
    for r in payload["test_spatial_regions"]:
        assert r["box_share"] == geo.in_box(lat, lon, r["bounds"]).mean()
    target = float(np.quantile(shares, 0.5))
    given = split_lib.make_split(store, seed=SEED, region_share=target, num_regions=3)
    selection = given["split_strategy"]["spatial_split"]["selection"]
    assert selection["share_range_is_constraint"] is True and selection["regions_outside_share_range"] == 0
    for r in given["test_spatial_regions"]:
        assert target / 2 - 1e-3 <= r["box_share"] <= target * 2 + 1e-3  # the band is checked on counts


def test_store_without_coordinates_or_dates(store):
    table = store.observations
    try:
        store.observations = table.drop_columns(["latitude"])
        store._columns.clear()
        with pytest.raises(ValueError, match="has no latitude column"):
            split_lib.make_split(store)
        years = table.column("year").to_pylist()
        years[3] = None
        store.observations = table.set_column(
            table.schema.get_field_index("year"), "year", pa.array(years, pa.int32())
        )
        store._columns.clear()
        with pytest.raises(
            ValueError, match=r"observations have no year .*a split needs coordinates and dates"
        ):
            split_lib.make_split(store, all_observations=True)
    finally:
        store.observations = table
        store._columns.clear()


def test_balance_blocks_tolerance():
    rng = np.random.default_rng(test_seed())
    for _ in range(20):
        counts = rng.integers(1, 300, rng.integers(5, 60))
        k = int(rng.integers(2, 6))
        folds = split_lib.balance_blocks(counts, k, seed=int(rng.integers(100)))
        load = np.bincount(folds, weights=counts, minlength=k)
        assert set(folds.tolist()) <= set(range(k))
        assert load.max() - load.min() <= counts.max()  # the stated guarantee
    # Many equal small blocks balance almost exactly.
    folds = split_lib.balance_blocks(np.full(50, 10), 5, seed=0)
    assert np.bincount(folds).tolist() == [10] * 5


def test_block_cv(store, tmp_path):
    payload = split_lib.make_split(store, folds=4, block_km=15.0, buffer_km=3.0, seed=SEED)
    cv = payload["split_strategy"]["block_cv"]
    entries = list(payload["observation_mappings"].values())
    lat = np.array([e["latitude"] for e in entries])
    lon = np.array([e["longitude"] for e in entries])
    fold = np.array([e["fold"] for e in entries])
    # Blocks never straddle folds: every observation's block (recomputed by hand) has one fold.
    row = np.floor((lat - cv["origin_lat"]) / cv["dlat_deg"]).astype(int)
    col = np.floor((lon - cv["origin_lon"]) / cv["dlon_deg"]).astype(int)
    seen = {}
    for r, c, f in zip(row, col, fold, strict=True):
        assert seen.setdefault((r, c), f) == f
    table = {(b["row"], b["col"]): b for b in cv["blocks"]}
    assert set(seen) == set(table) and all(table[key]["fold"] == f for key, f in seen.items())
    assert cv["dlat_deg"] == 15.0 / 111.0
    # Balanced within the stated tolerance.
    sizes = np.bincount(fold, minlength=4)
    assert sizes.sum() == len(entries) and sizes.max() - sizes.min() <= max(b["count"] for b in cv["blocks"])
    assert payload["split_statistics"]["block_cv"]["fold_counts"] == sizes.tolist()
    # Fold buffers: excluded for fold k <=> within 3 km of one of fold k's blocks (and not in fold k).
    split_lib.write_split(payload, tmp_path / "k.json")
    split = split_lib.load_split(tmp_path / "k.json")
    assert split.num_folds == 4
    ids = np.array(list(payload["observation_mappings"]))
    for k in range(4):
        boxes = [
            {
                "south": cv["origin_lat"] + b["row"] * cv["dlat_deg"],
                "north": cv["origin_lat"] + (b["row"] + 1) * cv["dlat_deg"],
                "west": cv["origin_lon"] + b["col"] * cv["dlon_deg"],
                "east": cv["origin_lon"] + (b["col"] + 1) * cv["dlon_deg"],
            }
            for b in cv["blocks"]
            if b["fold"] == k
        ]
        d = np.min([geo.distance_to_box_km(lat, lon, box) for box in boxes], axis=0)
        validation_buffer = np.char.startswith(
            np.array([e["split_reason"] for e in entries]), "validation_buffer_region_"
        )
        expect_excluded = (fold != k) & ((d <= 3.0) | validation_buffer)
        test = split.rows(store, "test", fold=k)
        excluded = split.rows(store, "excluded", fold=k)
        train = split.rows(store, "train", fold=k)
        validation = split.rows(store, "validation", fold=k)
        assert set(store.observation_ids[test]) == set(ids[fold == k])
        assert set(store.observation_ids[excluded]) == set(ids[expect_excluded])
        assert len(test) + len(excluded) + len(train) + len(validation) == len(ids)
        assert len(np.intersect1d(train, test)) == 0 and len(np.intersect1d(validation, test)) == 0
        assert len(np.intersect1d(train, validation)) == 0
        per = payload["split_statistics"]["block_cv"]["per_fold"][str(k)]
        assert (per["test_count"], per["excluded_count"], per["train_count"], per["validation_count"]) == (
            len(test),
            len(excluded),
            len(train),
            len(validation),
        )
        reasons = split.reason_of_rows(store, excluded, fold=k)
        assert all(r == f"buffer_fold_{k}" or r.startswith("validation_buffer_region_") for r in reasons)
    with pytest.raises(ValueError, match=r"fold must be in 0..3"):
        split.rows(store, "test", fold=4)
    # --regions-from reapplies the block grid and folds too.
    again = split_lib.make_split(store, regions_from=split)
    assert [e["fold"] for e in again["observation_mappings"].values()] == fold.tolist()
    assert again["split_strategy"]["block_cv"]["blocks"] == cv["blocks"]
    with pytest.raises(ValueError, match="cannot make 40 folds"):
        split_lib.make_split(store, folds=40, block_km=60.0)


def test_cli_must_show_and_maps(store, tmp_path):
    import matplotlib.pyplot as plt

    a, c, k = tmp_path / "a.json", tmp_path / "c.json", tmp_path / "k.json"
    assert main(["split", str(store.path), "--out", str(a), "--plot", str(tmp_path / "a.png")]) == 0
    assert main(["split", str(store.path), "--out", str(c), "--regions-from", str(a)]) == 0
    assert _reasons(json.loads(a.read_text())) == _reasons(json.loads(c.read_text()))
    args = ["split", str(store.path), "--out", str(k), "--folds", "3", "--block-km", "20", "--buffer-km", "5"]
    assert main([*args, "--plot", str(tmp_path / "k.png")]) == 0
    for png in ("a.png", "k.png"):
        image = plt.imread(tmp_path / png)
        assert image.ndim == 3 and image.shape[0] > 600 and image.shape[1] > 1000
        assert image[..., :3].std() > 0.05  # not a blank canvas
    # Flags that --regions-from takes from the file conflict with it.
    assert (
        main(["split", str(store.path), "--out", str(c), "--regions-from", str(a), "--buffer-km", "3"]) == 2
    )
    assert main(["split", str(store.path), "--out", str(c), "--test-years", "1999"]) == 2


def test_cli_error_is_one_line(store, tmp_path, capsys):
    assert (
        main(
            [
                "split",
                str(store.path),
                "--out",
                str(tmp_path / "x.json"),
                "--regions",
                "40",
                "--min-distance-km",
                "40",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot place 40 test regions") and "\n" not in err
