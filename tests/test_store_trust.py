"""The store is a closed box: manifests cannot point outside it, odd files are refused, not waited on, and
cheap facts are checked on every open (issue 12 §3, §5)."""

import json
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import test_seed

from deepearth_jax.data import store as store_lib
from deepearth_jax.data.__main__ import main as data_main
from deepearth_jax.data.store_check import verify_store
from deepearth_jax.data.synthetic import make_synthetic_store
from deepearth_jax.io import file_sha256


@pytest.fixture
def small_store(tmp_path):
    return make_synthetic_store(tmp_path / "store", observations=40, species=5, seed=test_seed())


def _edit_manifest(path, edit):
    manifest_path = path / store_lib.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    edit(manifest)
    manifest_path.write_text(json.dumps(manifest))


def _refused_everywhere(path, capsys, message):
    """open_store raises `message`; info exits 2 and verify 1, each with that one line and no traceback."""
    with pytest.raises(store_lib.StoreError) as e:
        store_lib.open_store(path)
    assert str(e.value) == message
    assert verify_store(path) == [message]
    capsys.readouterr()
    assert data_main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"
    assert data_main(["verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"FAIL {message}\n" in err and "Traceback" not in err


def test_absolute_array_path_is_refused(small_store, tmp_path, capsys):
    other = make_synthetic_store(tmp_path / "other", observations=40, species=5, seed=test_seed("other"))
    target = str(other.path / store_lib.VISION_FILE)
    _edit_manifest(small_store.path, lambda m: m["arrays"]["vision"].__setitem__("file", target))
    manifest = small_store.path / store_lib.MANIFEST_FILE
    message = f"{manifest}: field arrays.vision.file must be 'vision.npy', got {target!r}"
    if len(repr(target)) > 40:
        message = f"{manifest}: field arrays.vision.file must be 'vision.npy', got {repr(target)[:37]}..."
    _refused_everywhere(small_store.path, capsys, message)


@pytest.mark.parametrize("name", ["../other/observations.parquet", "/etc/passwd"])
def test_table_path_outside_the_store_is_refused(small_store, capsys, name):
    def point_out(manifest):
        manifest["files"][name] = manifest["files"].pop(store_lib.OBSERVATIONS_FILE)

    _edit_manifest(small_store.path, point_out)
    with pytest.raises(store_lib.StoreError, match=r"field files must be sha256 of observations.parquet"):
        store_lib.open_store(small_store.path)
    assert data_main(["info", str(small_store.path)]) == 2


def test_symlink_out_of_the_store_is_refused(small_store, tmp_path, capsys):
    other = make_synthetic_store(tmp_path / "other", observations=40, species=5, seed=test_seed())
    vision = small_store.path / store_lib.VISION_FILE
    vision.unlink()
    vision.symlink_to(other.path / store_lib.VISION_FILE)
    message = f"store {small_store.path}: vision.npy leads outside the store (a symlink?)"
    _refused_everywhere(small_store.path, capsys, message)


def test_fifo_in_place_of_vision_is_refused_not_waited_on(small_store, capsys):
    vision = small_store.path / store_lib.VISION_FILE
    vision.unlink()
    os.mkfifo(vision)
    results = []
    worker = threading.Thread(target=lambda: results.append(verify_store(small_store.path)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "verify blocked on a FIFO"
    message = f"store {small_store.path}: vision.npy is not a regular file"
    assert results == [[message]]
    _refused_everywhere(small_store.path, capsys, message)


@pytest.mark.parametrize("change", ["append", "truncate"])
def test_array_size_is_checked_on_open(small_store, capsys, change):
    vision = small_store.path / store_lib.VISION_FILE
    size = vision.stat().st_size
    if change == "append":
        with open(vision, "ab") as f:
            f.write(b"\0" * 64)
    else:
        os.truncate(vision, size - 2)
    got = size + 64 if change == "append" else size - 2
    message = f"store {small_store.path}: vision.npy is {got} bytes, its header and the manifest say {size}"
    _refused_everywhere(small_store.path, capsys, message)


def test_array_header_is_checked_on_open(small_store, capsys):
    language = small_store.path / store_lib.LANGUAGE_FILE
    values = np.load(language)
    np.save(language, values.reshape(values.shape[0] * 2, -1))  # same bytes, another shape
    shape = values.shape
    message = (
        f"store {small_store.path}: language.npy is {(shape[0] * 2, shape[1] // 2)} float32, "
        f"the manifest says {shape} float32"
    )
    _refused_everywhere(small_store.path, capsys, message)


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("counts.observations", "40", "a count (an integer >= 0)"),
        ("counts", [1, 2], "an object"),
        ("arrays.vision.shape", "abc", "a list of sizes"),
        ("arrays.language.dtype", "object", "float32"),
        ("complete", "yes", "true or false"),
        ("features", [], "an object"),
    ],
)
def test_manifest_fields_of_the_wrong_type(small_store, capsys, field, value, expected):
    def set_field(manifest):
        *parents, last = field.split(".")
        node = manifest
        for key in parents:
            node = node[key]
        node[last] = value

    _edit_manifest(small_store.path, set_field)
    manifest = small_store.path / store_lib.MANIFEST_FILE
    message = f"{manifest}: field {field} must be {expected}, got {value!r}"
    _refused_everywhere(small_store.path, capsys, message)


def test_manifest_that_is_not_text(small_store, capsys):
    (small_store.path / store_lib.MANIFEST_FILE).write_bytes(b"\xff\xfe\x00garbage")
    assert data_main(["info", str(small_store.path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {small_store.path / store_lib.MANIFEST_FILE} is not valid JSON") and (
        err.count("\n") == 1
    )


def test_row_references_are_checked_on_open(small_store):
    """A table row pointing past vision.npy is refused on open (a cheap pass), not met as an IndexError."""
    path = small_store.path / store_lib.OBSERVATIONS_FILE
    table = pq.read_table(path)
    rows = table["vision_row"].to_numpy().copy()
    n_vision = small_store.vision.shape[0]
    rows[rows.argmax()] = n_vision + 5
    table = table.set_column(table.schema.get_field_index("vision_row"), "vision_row", pa.array(rows))
    pq.write_table(table, path)
    _edit_manifest(
        small_store.path, lambda m: m["files"].__setitem__(store_lib.OBSERVATIONS_FILE, file_sha256(path))
    )
    with pytest.raises(store_lib.StoreError) as e:
        store_lib.open_store(small_store.path)
    assert str(e.value) == (
        f"store {small_store.path}: observations.parquet: 1 vision_row value(s) outside [-1, {n_vision}) "
        "of vision.npy"
    )


def test_sound_store_opens_and_verifies(small_store):
    store = store_lib.open_store(small_store.path)
    assert store.vision.shape[0] == store.manifest["counts"]["vision_rows"]
    assert verify_store(small_store.path) == []
