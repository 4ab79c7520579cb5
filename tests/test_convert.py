import json
import sqlite3

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import small_dataset, test_seed

from deepearth_jax.data import convert as convert_lib
from deepearth_jax.data import store as store_lib
from deepearth_jax.data import store_check, synthetic_layouts
from deepearth_jax.data.__main__ import main as data_main
from deepearth_jax.data.convert import dashboard as convert_dashboard
from deepearth_jax.data.convert import hf as convert_hf

SHAPE = (2, 2, 3, 8)


def _source_values(dataset, store):
    """(store rows, the generator's float32 rows) for every observation with vision in the store."""
    gbif = store.column("gbif_id")
    rows = store.column("vision_row")
    index_of = {g: i for i, g in enumerate(dataset.gbif_id)}
    have = np.flatnonzero(rows >= 0)
    expected = np.stack([dataset.vision_row(index_of[gbif[k]]) for k in have])
    return rows[have], expected


def _check_metadata(dataset, store):
    index_of = {g: i for i, g in enumerate(dataset.gbif_id)}
    src = np.array([index_of[g] for g in store.column("gbif_id")])
    meta = dataset.metadata_columns()
    np.testing.assert_array_equal(store.column("latitude"), meta["latitude"][src])
    np.testing.assert_array_equal(store.column("longitude"), meta["longitude"][src])
    for name in ("year", "month", "day"):
        np.testing.assert_array_equal(store.column(name), meta[name][src])
    hour = store.column("hour")
    known = meta["hour"][src] >= 0
    assert np.isnan(hour[~known]).all() and (hour[known] == meta["hour"][src][known]).all()
    assert list(store.column("taxon_name")) == list(meta["taxon_name"][src])
    assert list(store.column("source_split")) == list(meta["split"][src])
    assert list(store.column("image_url")) == [dataset.image_urls()[i] for i in src]
    assert list(store.observation_ids) == [f"{g}_1" for g in dataset.gbif_id[src]]
    # Species ordered by name; one language row per species, equal to the species' vector.
    assert store.species_names == sorted(dataset.taxon_names)
    for s, name in enumerate(store.species_names):
        np.testing.assert_array_equal(
            store.language[s], dataset.language_vectors[dataset.taxon_names.index(name)]
        )
    names = np.asarray(store.species_names, dtype=object)
    assert list(names[store.column("species_index")]) == list(store.column("taxon_name"))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_hf_round_trip(hf_source, tmp_path, dtype):
    dataset, source = hf_source
    store = convert_lib.convert(source, tmp_path / "store", dtype=dtype)
    assert store_check.verify_store(store.path) == []
    assert store.num_observations == dataset.num_observations
    assert int((store.column("vision_row") >= 0).sum()) == int(dataset.has_vision.sum())
    rows, expected = _source_values(dataset, store)
    if dtype == "float32":
        np.testing.assert_array_equal(store.vision[rows], expected)
    else:
        np.testing.assert_array_equal(store.vision[rows], expected.astype(np.float16))
        np.testing.assert_allclose(store.vision[rows], expected, rtol=2**-11, atol=2**-24)
    _check_metadata(dataset, store)
    stats = store.manifest["conversion"]
    index = pq.read_table(source / "vision_index.parquet")
    assert (
        stats["vision_index_duplicates_dropped"]
        == index.num_rows - len(set(index["gbif_id"].to_pylist()))
        > 0
    )
    assert store.manifest["skipped"] == [] and store.manifest["provenance"]["source_layout"] == "hf"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dashboard_round_trip(dashboard_source, tmp_path, dtype):
    dataset, source = dashboard_source
    store = convert_lib.convert(source, tmp_path / "store", dtype=dtype, vision_shape=SHAPE)
    assert store_check.verify_store(store.path) == []
    rows, expected = _source_values(dataset, store)
    assert len(rows) == int(dataset.has_vision.sum())
    np.testing.assert_array_equal(store.vision[rows], expected.astype(dtype))
    _check_metadata(dataset, store)
    assert store.manifest["provenance"]["source_layout"] == "dashboard"


def test_nested_float16_lists_and_joined_urls(hf_source, tmp_path):
    """Embeddings stored as nested float16 lists, and image_urls as one ';'-joined string, convert as well."""
    dataset, source = hf_source
    path = source / "vision_embeddings" / "embeddings_000001.parquet"
    table = pq.read_table(path)
    flat = table["embedding"].combine_chunks().values.to_numpy().astype(np.float16)
    d = SHAPE[-1]
    tokens = pa.ListArray.from_arrays(
        pa.array(np.arange(len(flat) // d + 1, dtype=np.int32) * d), pa.array(flat, pa.float16())
    )
    per_row = len(flat) // table.num_rows // d
    nested = pa.ListArray.from_arrays(
        pa.array(np.arange(table.num_rows + 1, dtype=np.int32) * per_row), tokens
    )
    pq.write_table(table.set_column(1, "embedding", nested), path)
    obs_path = source / "observations.parquet"
    obs = pq.read_table(obs_path)
    joined = pa.array([";".join(u) for u in obs["image_urls"].to_pylist()], pa.string())
    pq.write_table(obs.set_column(obs.schema.get_field_index("image_urls"), "image_urls", joined), obs_path)

    store = convert_lib.convert(source, tmp_path / "store", dtype="float32")
    rows, expected = _source_values(dataset, store)
    in_file = set(table["gbif_id"].to_pylist())
    from_file = np.array([g in in_file for g in store.column("gbif_id")[store.column("vision_row") >= 0]])
    assert from_file.sum() == table.num_rows
    np.testing.assert_array_equal(store.vision[rows[from_file]], expected[from_file].astype(np.float16))
    np.testing.assert_array_equal(store.vision[rows[~from_file]], expected[~from_file])
    _check_metadata(dataset, store)


def test_must_show_commands(tmp_path, capsys):
    t = str(tmp_path)
    common = ["--observations", "300", "--species", "20", "--vision-shape", "2,4,4,64", "--seed", "0"]
    assert data_main(["synth", "--layout", "hf", "--out", f"{t}/hf", *common]) == 0
    assert data_main(["convert", f"{t}/hf", "--out", f"{t}/store"]) == 0
    assert data_main(["verify", f"{t}/store"]) == 0
    assert data_main(["synth", "--layout", "dashboard", "--out", f"{t}/dash", *common]) == 0
    assert data_main(["convert", f"{t}/dash", "--out", f"{t}/store2", "--vision-shape", "2,4,4,64"]) == 0
    assert data_main(["info", f"{t}/store2"]) == 0
    out = capsys.readouterr().out
    assert "OK " in out and "counts     300 observations, 20 species" in out
    a, b = store_lib.open_store(f"{t}/store"), store_lib.open_store(f"{t}/store2")
    assert a.vision.shape[1:] == b.vision.shape[1:] == (2, 4, 4, 64)
    # The same generated rows, whichever layout they came through.
    order_a = np.argsort(a.column("gbif_id")[a.column("vision_row") >= 0])
    order_b = np.argsort(b.column("gbif_id")[b.column("vision_row") >= 0])
    va = a.vision[a.column("vision_row")[a.column("vision_row") >= 0][order_a]]
    vb = b.vision[b.column("vision_row")[b.column("vision_row") >= 0][order_b]]
    np.testing.assert_array_equal(va, vb)


# ----------------------------------------------------------------------------------------------------------
# Bad rows


def _rewrite_embedding(source, file_idx, row, edit):
    """Applies edit(flat float32 values of `row`) in one HF embeddings file; returns the row's gbif_id."""
    path = source / "vision_embeddings" / f"embeddings_{file_idx:06d}.parquet"
    table = pq.read_table(path)
    column = table["embedding"].combine_chunks()
    rows = [np.asarray(v, np.float32) for v in column.to_pylist()]
    rows[row] = edit(rows[row].copy())
    lists = pa.array([r.tolist() for r in rows], pa.list_(pa.float32()))
    pq.write_table(table.set_column(1, "embedding", lists), path)
    return table["gbif_id"][row].as_py()


def _set(values, index, value):
    values[index] = value
    return values


def _edit_observations(source, edit):
    path = source / "observations.parquet"
    rows = pq.read_table(path).to_pylist()
    rows = edit(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)


def test_nan_in_hf_embedding_fails_and_verify_rejects(hf_source, tmp_path, capsys):
    _, source = hf_source
    gbif = _rewrite_embedding(source, 1, 2, lambda v: _set(v, 5, np.nan))
    out = tmp_path / "store"
    assert data_main(["convert", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(line) == 1
    assert f"non_finite 1 (first: {gbif}_1;" in line[0] and "--skip-bad" in line[0]
    assert data_main(["verify", str(out)]) != 0
    assert any("incomplete" in p for p in store_check.verify_store(out))
    with pytest.raises(store_lib.StoreError, match="incomplete"):
        store_lib.open_store(out)

    # --skip-bad resumes the incomplete store without rereading finished files, and records the skip.
    calls = []
    real = convert_hf.copy_file
    convert_hf.copy_file = lambda path, *a, **k: calls.append(path.name) or real(path, *a, **k)
    try:
        store = convert_lib.convert(source, out, skip_bad=True)
    finally:
        convert_hf.copy_file = real
    assert "embeddings_000000.parquet" not in calls and "embeddings_000001.parquet" not in calls
    assert len(calls) == len(list((source / "vision_embeddings").iterdir())) - 2
    skipped = store.manifest["skipped"]
    assert [(s["observation_id"], s["kind"], s["dropped"]) for s in skipped] == [
        (f"{gbif}_1", "non_finite", "vision")
    ]
    assert store.vision.shape[0] == int((store.column("vision_row") >= 0).sum())
    assert store.column("vision_row")[store.rows_of([f"{gbif}_1"])[0]] == -1
    assert store_check.verify_store(out) == []


BAD_EMBEDDINGS = {
    "shape": lambda v: v[:-3],
    "non_finite": lambda v: _set(v, 0, np.inf),
    "float16_overflow": lambda v: _set(v, 7, 1e6),
}


@pytest.mark.parametrize("kind", sorted(BAD_EMBEDDINGS))
def test_bad_vision_rows(hf_source, tmp_path, kind):
    _, source = hf_source
    gbif = _rewrite_embedding(source, 0, 1, BAD_EMBEDDINGS[kind])
    with pytest.raises(
        convert_lib.ConvertError, match=rf"1 bad source row\(s\): {kind} 1 \(first: {gbif}_1;"
    ) as e:
        convert_lib.convert(source, tmp_path / "a")
    assert [(b["gbif_id"], b["kind"]) for b in e.value.bad] == [(gbif, kind)]
    store = convert_lib.convert(source, tmp_path / "b", skip_bad=True)
    assert [(b["gbif_id"], b["kind"]) for b in store.manifest["skipped"]] == [(gbif, kind)]
    if kind == "float16_overflow":
        store = convert_lib.convert(source, tmp_path / "c", dtype="float32")
        row = store.column("vision_row")[store.rows_of([f"{gbif}_1"])[0]]
        assert store.vision[row].reshape(-1)[7] == 1e6


def test_index_id_without_embedding_row(tmp_path):
    # Half the observations lack vision, so one to point the index at always exists, whatever the seed.
    dataset = small_dataset(seed=test_seed(), vision_fraction=0.5)
    assert not dataset.has_vision.all()
    source = synthetic_layouts.write_hf(dataset, tmp_path / "hf")
    no_vision = int(dataset.gbif_id[np.flatnonzero(~dataset.has_vision)[0]])
    index = pq.read_table(source / "vision_index.parquet")
    extra = pa.table({"gbif_id": [no_vision], "file_idx": [2], "row_idx": [0]}, schema=index.schema)
    pq.write_table(pa.concat_tables([index, extra]), source / "vision_index.parquet")
    with pytest.raises(
        convert_lib.ConvertError, match=rf"missing_embedding 1 \(first: {no_vision}_1; no row in"
    ):
        convert_lib.convert(source, tmp_path / "a")
    store = convert_lib.convert(source, tmp_path / "b", skip_bad=True)
    assert store.num_observations == dataset.num_observations
    assert store.manifest["skipped"][0]["kind"] == "missing_embedding"


def _duplicate_row(rows):
    return rows + [dict(rows[3])]


def _no_latitude(rows):
    rows[4]["latitude"] = None
    return rows


def _bad_month(rows):
    rows[5]["month"] = 13
    return rows


def _conflicting_language(rows):
    rows[6]["language_embedding"] = [x + 1.0 for x in rows[6]["language_embedding"]]
    return rows


def _short_language(rows):
    rows[7]["language_embedding"] = rows[7]["language_embedding"][:-1]
    return rows


BAD_OBSERVATIONS = {
    "duplicate_id": (_duplicate_row, 3),
    "missing_coordinates": (_no_latitude, 4),
    "bad_date": (_bad_month, 5),
    "missing_date": (lambda rows: _set_field(rows, 11, "day", None), 11),
    "language_conflict": (_conflicting_language, 6),
    "language_shape": (_short_language, 7),
    "missing_taxon": (lambda rows: _set_field(rows, 8, "taxon_name", None), 8),
    "missing_language": (lambda rows: _set_field(rows, 9, "language_embedding", None), 9),
    "language_non_finite": (lambda rows: _set_field(rows, 10, "language_embedding", [float("nan")] * 12), 10),
}


def _set_field(rows, row, name, value):
    rows[row][name] = value
    return rows


def test_observation_without_id(hf_source, tmp_path):
    dataset, source = hf_source
    _edit_observations(source, lambda rows: _set_field(rows, 2, "gbif_id", None))
    with pytest.raises(convert_lib.ConvertError, match=r"bad_id 1 \(first: \(no id\); row 2 of observations"):
        convert_lib.convert(source, tmp_path / "a")
    store = convert_lib.convert(source, tmp_path / "b", skip_bad=True)
    assert store.num_observations == dataset.num_observations - 1
    assert store.manifest["skipped"][0]["observation_id"] is None


@pytest.mark.parametrize("kind", sorted(BAD_OBSERVATIONS))
def test_bad_observation_rows(hf_source, tmp_path, kind):
    dataset, source = hf_source
    edit, row = BAD_OBSERVATIONS[kind]
    _edit_observations(source, edit)
    gbif = int(dataset.gbif_id[row])
    with pytest.raises(convert_lib.ConvertError, match=rf"{kind} 1 \(first: {gbif}_1;.*nothing written"):
        convert_lib.convert(source, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    store = convert_lib.convert(source, tmp_path / "b", skip_bad=True)
    assert [(b["gbif_id"], b["kind"], b["dropped"]) for b in store.manifest["skipped"]] == [
        (gbif, kind, "observation")
    ]
    kept = store.column("gbif_id")
    assert (kind == "duplicate_id") == (gbif in kept)  # a duplicate keeps its first row
    assert len(kept) == dataset.num_observations - (kind != "duplicate_id")
    assert store_check.verify_store(store.path) == []


def test_dashboard_refuses_partial_rows_and_bad_offsets(dashboard_source, tmp_path):
    _, source = dashboard_source
    # 388-byte rows never make a whole number of 384-byte ones here (at most 40 rows).
    with pytest.raises(store_lib.StoreError, match=r"not a whole number of \[1, 1, 1, 97\] float32 rows"):
        convert_lib.convert(source, tmp_path / "a", vision_shape=(1, 1, 1, 97))
    assert (
        data_main(["convert", str(source), "--out", str(tmp_path / "a")]) == 2
    )  # default shape 8,24,24,1408
    db = sqlite3.connect(source / "embeddings_index.db")
    gbif = db.execute("SELECT gbif_id FROM embedding_index ORDER BY gbif_id LIMIT 1").fetchone()[0]
    db.execute("UPDATE embedding_index SET file_offset = 6 WHERE gbif_id = ?", (gbif,))
    db.commit()
    db.close()
    with pytest.raises(
        convert_lib.ConvertError, match=rf"missing_embedding 1 \(first: {gbif}_1; file_offset 6"
    ):
        convert_lib.convert(source, tmp_path / "b", vision_shape=SHAPE)


def test_dashboard_nan_fails(dashboard_source, tmp_path):
    _, source = dashboard_source
    rows = np.memmap(source / "embeddings.mmap", dtype=np.float32, mode="r+").reshape(-1, int(np.prod(SHAPE)))
    rows[3, 10] = np.nan
    rows.flush()
    del rows
    with pytest.raises(convert_lib.ConvertError, match=r"non_finite 1 \(first: \d+_1;"):
        convert_lib.convert(source, tmp_path / "a", vision_shape=SHAPE)
    assert store_check.verify_store(tmp_path / "a") != []


# ----------------------------------------------------------------------------------------------------------
# Resume


def _data_bytes(path):
    files = [
        store_lib.VISION_FILE,
        store_lib.LANGUAGE_FILE,
        store_lib.OBSERVATIONS_FILE,
        store_lib.SPECIES_FILE,
    ]
    manifest = json.loads((path / store_lib.MANIFEST_FILE).read_text())
    for key in ("created", "finished"):
        manifest.pop(key)
    return {f: (path / f).read_bytes() for f in files}, manifest


class _Killed(Exception):
    pass


@pytest.mark.parametrize("layout", ["hf", "dashboard"])
def test_interrupted_conversion_resumes_to_identical_store(tmp_path, layout, monkeypatch):
    dataset = small_dataset(observations=60, seed=test_seed())
    if layout == "hf":
        source = synthetic_layouts.write_hf(dataset, tmp_path / "src")
        module, name, kwargs = convert_hf, "copy_file", {}
    else:
        source = synthetic_layouts.write_dashboard(dataset, tmp_path / "src")
        module, name, kwargs = convert_dashboard, "copy_chunk", {"vision_shape": SHAPE}
        monkeypatch.setattr(convert_dashboard, "CHUNK_BYTES", 5 * int(np.prod(SHAPE)) * 4)
    clean = convert_lib.convert(source, tmp_path / "clean", **kwargs)
    real = getattr(module, name)
    calls = []

    def dies_on_third(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            real(*args, **kw)  # the unit is half done (its rows written) but not recorded
            raise _Killed
        return real(*args, **kw)

    monkeypatch.setattr(module, name, dies_on_third)
    with pytest.raises(_Killed):
        convert_lib.convert(source, tmp_path / "resumed", **kwargs)
    manifest = json.loads((tmp_path / "resumed" / store_lib.MANIFEST_FILE).read_text())
    assert manifest["complete"] is False and len(manifest["progress"]["units"]) == 2
    assert store_check.verify_store(tmp_path / "resumed") != []

    calls.clear()
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = convert_lib.convert(source, tmp_path / "resumed", **kwargs)
    if layout == "hf":
        units = len(list((source / "vision_embeddings").iterdir()))
    else:
        units = -(-int(dataset.has_vision.sum()) // 5)  # chunks of 5 rows
    assert units >= 3
    assert len(calls) == units - 2
    assert _data_bytes(clean.path) == _data_bytes(resumed.path)
    assert store_check.verify_store(resumed.path) == []


def test_resume_refuses_another_source(hf_source, tmp_path, monkeypatch):
    _, source = hf_source
    other = synthetic_layouts.write_hf(small_dataset(seed=99), tmp_path / "other")

    def killed(*args, **kwargs):
        raise _Killed

    monkeypatch.setattr(convert_hf, "copy_file", killed)
    with pytest.raises(_Killed):
        convert_lib.convert(source, tmp_path / "s")
    monkeypatch.undo()
    with pytest.raises(store_lib.StoreError, match="incomplete conversion of another source"):
        convert_lib.convert(other, tmp_path / "s")
    with pytest.raises(store_lib.StoreError, match="incomplete conversion of another source"):
        convert_lib.convert(source, tmp_path / "s", dtype="float32")
    convert_lib.convert(source, tmp_path / "s")
    with pytest.raises(store_lib.StoreError, match="already holds a complete store"):
        convert_lib.convert(source, tmp_path / "s")


def test_unrecognised_source(tmp_path):
    with pytest.raises(store_lib.StoreError, match="has no observations.parquet"):
        convert_lib.convert(tmp_path, tmp_path / "s")
    pq.write_table(pa.table({"gbif_id": [1]}), tmp_path / "observations.parquet")
    with pytest.raises(store_lib.StoreError, match="neither the HF layout"):
        convert_lib.convert(tmp_path, tmp_path / "s")


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("[4608, 1408]", (8, 24, 24, 1408)),
        ("[8, 576, 1408]", (8, 24, 24, 1408)),
        ("[2, 3, 4, 5]", (2, 3, 4, 5)),
    ],
)
def test_original_shape(text, shape):
    assert convert_lib.resolve_vision_shape(convert_lib.parse_original_shape(text)) == shape


def test_original_shape_refuses_ambiguous():
    with pytest.raises(ValueError, match="pass --vision-shape"):
        convert_lib.resolve_vision_shape((32, 64))
    with pytest.raises(ValueError, match="not a list of sizes"):
        convert_lib.parse_original_shape("4608x1408")


def test_convert_benchmark_reports_figures(hf_source, tmp_path, capsys):
    from deepearth_jax.benchmark import main as benchmark_main

    dataset, source = hf_source
    figures_path = tmp_path / "figures.json"
    assert benchmark_main(["convert", "--source", str(source), "--json", str(figures_path)]) == 0
    figures = json.loads(figures_path.read_text())
    n_vision = int(dataset.has_vision.sum())
    assert figures["vision_rows"] == figures["ceiling_rows_read"] == n_vision
    assert (
        figures["source_vision_bytes"] == figures["ceiling_bytes_read"] == n_vision * int(np.prod(SHAPE)) * 4
    )
    assert figures["convert_mb_per_s"] > 0 and figures["ceiling_mb_per_s"] > 0
    ratio = figures["convert_mb_per_s"] / figures["ceiling_mb_per_s"]
    assert figures["convert_read_ratio"] == pytest.approx(ratio, abs=2e-3)
    assert 20e6 < figures["convert_peak_rss_bytes"] < 2e9
    assert "convert peak RSS" in capsys.readouterr().out


_KILL_ON_THIRD_FILE = """
import os, signal, sys
from deepearth_jax.data import convert
from deepearth_jax.data.convert import hf
real = hf.copy_file
calls = []
def copy(*args, **kwargs):
    calls.append(1)
    record = real(*args, **kwargs)  # rows written, not yet recorded
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return record
hf.copy_file = copy
convert.convert(sys.argv[1], sys.argv[2])
"""


def test_sigkilled_conversion_resumes_to_identical_store(hf_source, tmp_path):
    import signal
    import subprocess
    import sys

    _, source = hf_source
    clean = convert_lib.convert(source, tmp_path / "clean")
    out = tmp_path / "killed"
    result = subprocess.run([sys.executable, "-c", _KILL_ON_THIRD_FILE, str(source), str(out)])
    assert result.returncode == -signal.SIGKILL
    manifest = json.loads((out / store_lib.MANIFEST_FILE).read_text())
    # Units are committed (fsync, then the manifest) in the background while the next one is copied: at the
    # kill the second unit's commit may or may not have landed, but never a unit whose rows are not durable.
    units = list(manifest["progress"]["units"])
    names = sorted(p.name for p in (source / "vision_embeddings").iterdir())
    assert manifest["complete"] is False and units in (names[:1], names[:2])
    assert data_main(["verify", str(out)]) == 1
    assert data_main(["convert", str(source), "--out", str(out)]) == 0
    assert _data_bytes(clean.path) == _data_bytes(out)
