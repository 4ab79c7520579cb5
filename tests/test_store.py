import json
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import test_seed

from deepearth_jax.data import store as store_lib
from deepearth_jax.data import store_check, store_writer
from deepearth_jax.data.__main__ import main as data_main
from deepearth_jax.data.synthetic import make_synthetic_store


@pytest.fixture
def small_store(tmp_path):
    seed = test_seed()
    return make_synthetic_store(tmp_path / "store", observations=60, species=6, seed=seed)


def test_store_opens_with_declared_shapes(small_store):
    start = time.perf_counter()
    store = store_lib.open_store(small_store.path)
    assert time.perf_counter() - start < 1.0
    m = store.manifest
    assert m["complete"] is True and m["format"] == store_lib.FORMAT_NAME
    assert store.num_observations == m["counts"]["observations"] == 60
    assert store.vision.shape == (m["counts"]["vision_rows"], 2, 4, 4, 16)
    assert store.vision.dtype == np.float16 and isinstance(store.vision, np.memmap)
    assert store.language.shape == (6, 32) and store.language.dtype == np.float32
    assert store.observations.schema.names == store_lib.OBSERVATION_SCHEMA.names
    rows = store.column("vision_row")
    assert (rows >= -1).all() and sorted(rows[rows >= 0]) == list(range(store.vision.shape[0]))
    assert store_check.verify_store(store.path) == []


def test_flipped_byte_in_vision_is_caught(small_store):
    path = small_store.path / store_lib.VISION_FILE
    data = bytearray(path.read_bytes())
    position = len(data) - 1 - int(np.random.default_rng(test_seed()).integers(len(data) // 2))
    data[position] ^= 0x01
    path.write_bytes(bytes(data))
    problems = store_check.verify_store(small_store.path)
    assert len(problems) == 1 and "vision.npy: checksum mismatch in rows 0.." in problems[0]
    assert data_main(["verify", str(small_store.path)]) == 1


def test_changed_table_and_nan_are_caught(small_store):
    table = small_store.path / store_lib.OBSERVATIONS_FILE
    pq.write_table(pq.read_table(table).slice(1), table)
    problems = store_check.verify_store(small_store.path)
    assert problems == [
        "observations.parquet: checksum mismatch (the file changed after the store was written)"
    ]

    vision = np.load(small_store.path / store_lib.VISION_FILE, mmap_mode="r+")
    vision[0, 0, 0, 0, 0] = np.nan
    vision.flush()
    del vision
    problems = store_check.verify_store(small_store.path)
    assert "vision.npy: 1 non-finite value(s) (NaN or Inf)" in problems


def test_incomplete_store_is_refused(tmp_path):
    writer = store_writer.StoreWriter(
        tmp_path / "s",
        num_vision_rows=3,
        vision_shape=(1, 2, 2, 4),
        num_language_rows=2,
        language_dim=5,
        provenance={"source_layout": "test"},
    )
    writer.vision[:] = np.random.default_rng(test_seed()).standard_normal((3, 1, 2, 2, 4))
    writer.save_progress()
    with pytest.raises(store_lib.StoreError, match="is incomplete"):
        store_lib.open_store(tmp_path / "s")
    assert any("incomplete" in p for p in store_check.verify_store(tmp_path / "s"))
    with pytest.raises(store_lib.StoreError, match="holds an incomplete store; resume it or delete it"):
        store_writer.StoreWriter(
            tmp_path / "s",
            num_vision_rows=3,
            vision_shape=(1, 2, 2, 4),
            num_language_rows=2,
            language_dim=5,
            provenance={},
        )


def test_writer_resume_remap_and_truncate(tmp_path):
    rng = np.random.default_rng(test_seed())
    values = rng.standard_normal((5, 2, 1, 3, 4)).astype(np.float32)
    kwargs = dict(
        num_vision_rows=5,
        vision_shape=(2, 1, 3, 4),
        vision_dtype="float32",
        num_language_rows=1,
        language_dim=3,
        provenance={"source_layout": "test"},
        resume=True,
    )
    writer = store_writer.StoreWriter(tmp_path / "s", **kwargs)
    writer.vision[:3] = values[:3]
    writer.progress["done"] = 3
    writer.save_progress()
    writer.vision[3] = values[3]  # written after the last save: still in the file (a shared mapping)
    del writer
    writer = store_writer.StoreWriter(tmp_path / "s", **kwargs)
    assert writer.progress == {"done": 3}
    np.testing.assert_array_equal(writer.vision[:4], values[:4])
    writer.truncate_vision(4)
    assert writer.vision.shape == (4, 2, 1, 3, 4)
    assert json.loads((tmp_path / "s" / store_lib.MANIFEST_FILE).read_text())["arrays_planned"]["vision"][
        "shape"
    ] == [4, 2, 1, 3, 4]
    writer.language[:] = 1.0
    manifest = writer.finalize(
        pq.read_table(_empty_table_path(tmp_path, "o")).slice(0, 0),
        pq.read_table(_empty_table_path(tmp_path, "s")),
    )
    assert manifest["counts"]["vision_rows"] == 4
    reread = np.load(tmp_path / "s" / store_lib.VISION_FILE, mmap_mode="r")
    np.testing.assert_array_equal(reread, values[:4])
    assert store_check.verify_store(tmp_path / "s") == []


def _empty_table_path(tmp_path, which):
    schema = store_lib.OBSERVATION_SCHEMA if which == "o" else store_lib.SPECIES_SCHEMA
    path = tmp_path / f"empty_{which}.parquet"
    pq.write_table(schema.empty_table(), path)
    return path


def test_writer_refuses_complete_or_foreign_directory(small_store, tmp_path):
    args = dict(
        num_vision_rows=1, vision_shape=(1, 1, 1, 2), num_language_rows=1, language_dim=2, provenance={}
    )
    with pytest.raises(store_lib.StoreError, match="already holds a complete store"):
        store_writer.StoreWriter(small_store.path, resume=True, **args)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(store_lib.StoreError, match="exists and is not empty"):
        store_writer.StoreWriter(tmp_path / "other", **args)


def test_info_cli(small_store, capsys):
    assert data_main(["info", str(small_store.path)]) == 0
    out = capsys.readouterr().out
    assert "counts     60 observations, 6 species" in out
    assert f"vision     {small_store.vision.shape} float16" in out
    assert data_main(["info", str(small_store.path / "nope")]) == 2
    assert "error: no store at" in capsys.readouterr().err
