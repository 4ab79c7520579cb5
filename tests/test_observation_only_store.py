"""Observation-only stores (place, date, species; no embeddings): format, checks, synth, modes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import test_seed

from deepearth_jax.data import modes, synthetic
from deepearth_jax.data import store as store_lib
from deepearth_jax.data.__main__ import main as data_main
from deepearth_jax.data.store_check import store_info, verify_store


@pytest.fixture
def stores(tmp_path):
    seed = test_seed()
    plain = synthetic.make_synthetic_store(tmp_path / "with", 300, 12, seed=seed)
    bare = synthetic.make_synthetic_store(tmp_path / "bare", 300, 12, seed=seed, embeddings=False)
    return plain, bare


def test_same_places_dates_species_no_arrays(stores):
    plain, bare = stores
    assert bare.observation_only and not plain.observation_only
    assert bare.vision is None and bare.language is None
    m = bare.manifest
    assert m["observation_only"] is True and m["arrays"] == {}
    assert m["counts"] == {
        "observations": 300,
        "species": 12,
        "vision_rows": 0,
        "language_rows": 0,
        "observations_with_vision": 0,
    }
    assert sorted(p.name for p in bare.path.iterdir()) == [
        "manifest.json",
        "observations.parquet",
        "species.parquet",
    ]
    for name in ("observation_id", "species_index", "latitude", "longitude", "year", "month", "day"):
        np.testing.assert_array_equal(bare.column(name), plain.column(name))
    assert (bare.column("vision_row") == -1).all() and (bare.column("language_row") == -1).all()
    assert (bare.species.column("language_row").to_numpy() == -1).all()
    assert verify_store(bare.path) == []
    info = store_info(bare)
    assert "embeddings none: an observation-only store" in info and "with vision" not in info


def test_modes_that_need_embeddings_refuse_in_one_line(stores):
    _, bare = stores
    modes.check_store(bare, "geo")
    for mode in ("vision", "vision_pooled", "language", "multimodal", "vision_geo"):
        with pytest.raises(modes.MissingEmbeddingsError) as e:
            modes.check_store(bare, mode)
        message = str(e.value)
        assert "\n" not in message and f"mode {mode!r} needs" in message
        assert "has none (an observation-only store" in message and "--config.mode=geo" in message


def _rewrite_manifest(path, change):
    manifest = json.loads((path / store_lib.MANIFEST_FILE).read_text())
    change(manifest)
    (path / store_lib.MANIFEST_FILE).write_text(json.dumps(manifest))


def test_manifest_must_say_observation_only(stores):
    plain, bare = stores
    _rewrite_manifest(bare.path, lambda m: m.pop("observation_only"))
    with pytest.raises(store_lib.StoreError, match="a language entry \\(or observation_only: true\\)"):
        store_lib.open_store(bare.path)
    _rewrite_manifest(bare.path, lambda m: m.update(observation_only=True, arrays=plain.manifest["arrays"]))
    with pytest.raises(store_lib.StoreError, match="arrays must be {} in an observation-only store"):
        store_lib.open_store(bare.path)
    _rewrite_manifest(bare.path, lambda m: m.update(observation_only="yes", arrays={}))
    with pytest.raises(store_lib.StoreError, match="observation_only must be true or false"):
        store_lib.open_store(bare.path)


def test_a_language_row_without_language_is_refused(tmp_path):
    """An observation-only store whose table points into a language array it does not have."""
    import pyarrow.parquet as pq

    from deepearth_jax.io import file_sha256

    bare = synthetic.make_synthetic_store(tmp_path / "s", 50, 4, seed=test_seed(), embeddings=False)
    table = bare.observations
    index = table.column_names.index("language_row")
    table = table.set_column(index, table.field(index), [np.zeros(50, np.int64)])
    pq.write_table(table, bare.path / store_lib.OBSERVATIONS_FILE)
    sha = file_sha256(bare.path / store_lib.OBSERVATIONS_FILE)
    _rewrite_manifest(bare.path, lambda m: m["files"].update({store_lib.OBSERVATIONS_FILE: sha}))
    with pytest.raises(store_lib.StoreError, match=r"50 language_row value\(s\) outside \[-1, 0\)"):
        store_lib.open_store(bare.path)


def test_synth_cli(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["synth", "--out", str(out), "--observations", "200", "--species", "9", "--no-embeddings"]
    assert data_main(args) == 0
    store = store_lib.open_store(out)
    assert store.observation_only and store.num_observations == 200 and store.num_species == 9
    assert data_main(["verify", str(out)]) == 0
    assert "no embeddings (an observation-only store)" in capsys.readouterr().out
    bad = ["synth", "--out", str(tmp_path / "h"), "--observations", "20", "--species", "3", "--no-embeddings"]
    assert data_main([*bad, "--layout", "hf"]) == 2
    assert "--no-embeddings writes a store" in capsys.readouterr().err
