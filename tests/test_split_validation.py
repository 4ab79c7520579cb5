"""The validation carve-out: from training rows only, mirroring the test, deterministic, old files too."""

import copy
import json

import numpy as np
import pytest
from conftest import test_seed

from deepearth_jax.data import geo
from deepearth_jax.data import split as split_lib
from deepearth_jax.data.__main__ import main
from deepearth_jax.data.synthetic import make_synthetic_store

SEED = test_seed("test_split_validation module")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("split_validation") / "s"
    return make_synthetic_store(
        path, observations=2000, species=40, vision_shape=(1, 1, 1, 4), language_dim=4, seed=SEED
    )


@pytest.fixture(scope="module")
def payload(store):
    return split_lib.make_split(store, seed=SEED, buffer_km=2.0)


def _column(payload, key):
    return np.asarray([e[key] for e in payload["observation_mappings"].values()])


def _as_old_file(payload):
    """The payload as a v1 file would have held it: no validation set, those rows back in training."""
    old = copy.deepcopy(payload)
    old["format"]["version"] = 1
    del old["split_strategy"]["validation"]
    del old["validation_regions"]
    for entry in old["observation_mappings"].values():
        if entry["split_reason"].startswith("validation_"):
            entry["split"], entry["split_reason"] = "train", "temporal_train"
    return old


def test_validation_mirrors_the_test_and_never_takes_test_rows(store, payload, tmp_path):
    split_lib.write_split(payload, tmp_path / "s.json")
    split = split_lib.load_split(tmp_path / "s.json")
    rows = {s: split.rows(store, s) for s in ("train", "validation", "test", "excluded")}
    assert len(rows["validation"]) == payload["split_statistics"]["validation_count"] > 0
    assert sum(len(r) for r in rows.values()) == len(payload["observation_mappings"])
    for a in rows:
        for b in rows:
            if a < b:
                assert len(np.intersect1d(rows[a], rows[b])) == 0, (a, b)
    # The same split without the carve-out: validation comes only from its training rows, test is untouched.
    plain = split_lib.make_split(store, seed=SEED, buffer_km=2.0, validation_years=0, validation_regions=0)
    plain_split = split_lib.parse_split(plain)
    assert set(split.validation_ids) <= set(plain_split.train_ids)
    assert split.test_ids == plain_split.test_ids
    # Temporal: every training row of the most recent training year, and no training row of it is left.
    year, reason, subset = (
        _column(payload, "year"),
        _column(payload, "split_reason"),
        _column(payload, "split"),
    )
    train_years = sorted(set(year[np.isin(subset, ["train", "validation"])]))
    assert payload["split_strategy"]["validation"]["years"] == [train_years[-1]] == [2024]
    assert not ((subset == "train") & (year == 2024)).any()
    assert set(year[reason == "validation_temporal"]) == {2024}
    # Spatial: as many boxes as the test, of its size, away from the test boxes, holding their rows.
    lat, lon = _column(payload, "latitude"), _column(payload, "longitude")
    regions = payload["validation_regions"]
    assert len(regions) == len(payload["test_spatial_regions"]) == 5
    for r in regions:
        mine = reason == f"validation_spatial_region_{r['region_id']}"
        assert mine.sum() == r["observation_count"] > 0
        assert geo.in_box(lat[mine], lon[mine], r["bounds"]).all()
        assert r["size_km"] == 10.0
        for t in payload["test_spatial_regions"]:
            assert geo.distance_to_box_km(r["center_lat"], r["center_lng"], t["bounds"]) >= 15.0
    # Buffered like the test regions: no training row within 2 km of a validation box.
    train = subset == "train"
    for r in regions:
        assert (geo.distance_to_box_km(lat[train], lon[train], r["bounds"]) > 2.0).all()


def test_deterministic_by_seed(store, payload):
    again = split_lib.make_split(store, seed=SEED, buffer_km=2.0)
    assert again["observation_mappings"] == payload["observation_mappings"]
    other = split_lib.make_split(store, seed=SEED + 1, buffer_km=2.0)
    centres = {r["center_observation_id"] for r in payload["validation_regions"]}
    assert centres != {r["center_observation_id"] for r in other["validation_regions"]}


def test_old_files_are_carved_at_load_time_the_same_way(store, payload, tmp_path):
    (tmp_path / "old.json").write_text(json.dumps(_as_old_file(payload)))
    old = split_lib.load_split(tmp_path / "old.json")
    assert not old.has_validation and old.validation_ids == []
    carved = split_lib.with_validation(old, store)
    assert carved.has_validation
    # Exactly what make_split writes today, observation by observation.
    assert carved.reasons == {k: v["split_reason"] for k, v in payload["observation_mappings"].items()}
    assert [r["bounds"] for r in carved.validation_regions] == [
        r["bounds"] for r in payload["validation_regions"]
    ]
    assert (
        carved.rows(store, "train").tolist() == split_lib.parse_split(payload).rows(store, "train").tolist()
    )
    # A file that has its validation set is returned as it is; another seed draws other regions.
    assert split_lib.with_validation(carved, store) is carved
    other = split_lib.with_validation(old, store, seed=SEED + 1)
    assert [r["bounds"] for r in other.validation_regions] != [r["bounds"] for r in carved.validation_regions]
    assert set(other.validation_ids).isdisjoint(old.test_ids)


def test_original_format_file_gets_a_validation_set(store, tmp_path):
    from test_split import _original_file

    raw = _original_file(store, tmp_path / "central_florida_split.json")
    original = split_lib.load_split(tmp_path / "central_florida_split.json")
    carved = split_lib.with_validation(original, store, seed=3)
    again = split_lib.with_validation(
        split_lib.load_split(tmp_path / "central_florida_split.json"), store, seed=3
    )
    assert carved.reasons == again.reasons  # deterministic
    test = set(original.test_ids)
    assert carved.validation_ids and test.isdisjoint(carved.validation_ids)
    assert set(carved.test_ids) == test and carved.regions == raw["test_spatial_regions"]
    # The original file had one region: one validation region of the same 10 km size.
    assert len(carved.validation_regions) == 1 and carved.validation_regions[0]["size_km"] == 10.0
    rows = {s: carved.rows(store, s) for s in ("train", "validation", "test")}
    assert len(np.intersect1d(rows["validation"], rows["test"])) == 0
    assert len(np.intersect1d(rows["validation"], rows["train"])) == 0
    assert len(rows["train"]) + len(rows["validation"]) == len(original.rows(store, "train"))


def test_regions_from_reapplies_the_validation_set(store, payload, tmp_path):
    split_lib.write_split(payload, tmp_path / "a.json")
    again = split_lib.make_split(store, regions_from=tmp_path / "a.json")
    assert again["observation_mappings"] == payload["observation_mappings"]
    assert again["validation_regions"] == payload["validation_regions"]


def test_validation_reported_and_drawn(store, tmp_path, capsys):
    out, png = tmp_path / "v.json", tmp_path / "v.png"
    args = ["split", str(store.path), "--out", str(out), "--validation-regions", "2", "--plot", str(png)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    written = json.loads(out.read_text())
    s = written["split_statistics"]
    assert f"validation {s['validation_count']} (" in printed and "in 2 regions" in printed
    assert len(written["validation_regions"]) == 2 and set(s["per_validation_region"]) == {"1", "2"}
    assert s["per_year"]["2024"]["validation"] > 0 and s["per_year"]["2024"]["train"] == 0
    assert png.stat().st_size > 10_000
    assert main(["split", str(store.path), "--out", str(out), "--validation-years", "0"]) == 0
    written = json.loads(out.read_text())
    assert written["split_strategy"]["validation"]["years"] == []
    assert written["split_statistics"]["validation_temporal_count"] == 0


def test_validation_years_that_leave_no_training(store):
    with pytest.raises(ValueError, match=r"--validation-years 15 would hold out every training year") as e:
        split_lib.make_split(store, validation_years=15)
    assert "\n" not in str(e.value)


def test_validation_region_count(store, caplog):
    # An explicit count is a constraint; the default places as many as fit and says so.
    with pytest.raises(
        ValueError, match=r"cannot place 40 validation regions of 10 km .*--validation-regions"
    ):
        split_lib.make_split(store, num_regions=1, validation_regions=40)
    payload = split_lib.make_split(store, num_regions=25, min_distance_km=12.0, region_km=4.0)
    placed = len(payload["validation_regions"])
    assert 0 < placed < 25 and payload["split_strategy"]["validation"]["selection"]["requested"] == 25
    assert f"only {placed} of 25 validation regions fit" in caplog.text
