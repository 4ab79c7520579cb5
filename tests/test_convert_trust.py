"""convert refuses what would silently corrupt a store, and every failure is one line (issue 12 §2, §5)."""

import errno
import json
import os
import sqlite3

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import small_dataset, test_seed

from deepearth_jax.cli import run_command
from deepearth_jax.data import convert as convert_lib
from deepearth_jax.data import store as store_lib
from deepearth_jax.data import synthetic_layouts
from deepearth_jax.data.__main__ import main as data_main
from deepearth_jax.data.convert import hf as convert_hf
from deepearth_jax.io import progress_bar

SHAPE = (2, 2, 3, 8)


def _one_error_line(err: str) -> str:
    """The single `error:` line of a command's stderr, checked to start a line of its own."""
    lines = [line for line in err.split("\n") if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-500:]
    assert "Traceback" not in err
    return lines[0]


def _edit_observations(source, edit, schema_changes=None):
    path = source / "observations.parquet"
    schema = pq.read_schema(path)
    for name, type_ in (schema_changes or {}).items():
        schema = schema.set(schema.get_field_index(name), pa.field(name, type_))
    rows = edit(pq.read_table(path).to_pylist())
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _set(row, **values):
    def edit(rows):
        rows[row].update(values)
        return rows

    return edit


# ----------------------------------------------------------------------------------------------------------
# §2: shapes the source contradicts


def test_dashboard_half_shape_is_refused(dashboard_source, tmp_path):
    dataset, source = dashboard_source
    n = int(dataset.has_vision.sum())
    with pytest.raises(store_lib.StoreError) as e:
        convert_lib.convert(source, tmp_path / "a", vision_shape=(1, 2, 3, 8))
    assert str(e.value) == (
        f"{source / 'embeddings.mmap'} holds {2 * n} rows of [1, 2, 3, 8] float32 but "
        f"embeddings_index.db lists {n}: the vision shape disagrees with the source "
        "(pass the right --vision-shape T,H,W,D)"
    )
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "shape, says",
    [
        ((2, 3, 2, 8), "its first embedding has original_shape '[2, 2, 3, 8]'"),
        ((3, 2, 2, 8), "its first embedding has original_shape '[2, 2, 3, 8]'"),
        ((2, 2, 3, 4), "its first embedding has 96 values, not 48 for [2, 2, 3, 4]"),
    ],
)
def test_hf_vision_shape_disagreeing_with_the_source_is_refused(hf_source, tmp_path, shape, says):
    _, source = hf_source
    with pytest.raises(store_lib.StoreError, match=r"^--vision-shape [0-9,]+ disagrees with .*") as e:
        convert_lib.convert(source, tmp_path / "a", vision_shape=shape)
    assert str(e.value).endswith(says) and "\n" not in str(e.value)
    assert not (tmp_path / "a").exists()
    assert convert_lib.convert(source, tmp_path / "b", vision_shape=SHAPE).vision_shape == SHAPE


def _rewrite_embeddings(source, transform):
    """Applies `transform(table) -> table` to every embeddings file."""
    for path in sorted((source / "vision_embeddings").glob("*.parquet")):
        pq.write_table(transform(pq.read_table(path)), path)


def test_hf_inner_lists_of_another_size_are_refused(hf_source, tmp_path):
    """Tokens of 4 values where original_shape says D = 8: same total, other shape."""
    _, source = hf_source

    def nest_by_four(table):
        flat = table["embedding"].combine_chunks().values
        inner = pa.ListArray.from_arrays(pa.array(np.arange(len(flat) // 4 + 1, dtype=np.int32) * 4), flat)
        outer = pa.ListArray.from_arrays(pa.array(np.arange(table.num_rows + 1, dtype=np.int32) * 24), inner)
        return table.set_column(1, "embedding", outer)

    _rewrite_embeddings(source, nest_by_four)
    with pytest.raises(store_lib.StoreError, match=r"inner lists are not of 8$"):
        convert_lib.convert(source, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_malformed_declared_shape_allocates_nothing(hf_source, tmp_path):
    """A huge declared original_shape that the rows contradict is refused before vision.npy exists."""
    _, source = hf_source

    def huge(table):
        text = pa.array(["[1000, 1000, 1000, 1000]"] * table.num_rows, pa.string())
        return table.set_column(2, "original_shape", text)

    _rewrite_embeddings(source, huge)
    with pytest.raises(store_lib.StoreError, match=r"original_shape '\[1000, 1000, 1000, 1000\]' disagrees"):
        convert_lib.convert(source, tmp_path / "a", skip_bad=True)
    assert not (tmp_path / "a").exists()


def test_one_malformed_leading_row_is_a_bad_row(hf_source, tmp_path):
    dataset, source = hf_source
    path = sorted((source / "vision_embeddings").glob("*.parquet"))[0]
    table = pq.read_table(path)
    texts = table["original_shape"].to_pylist()
    texts[0] = "[1000, 1000, 1000, 1000]"
    pq.write_table(table.set_column(2, "original_shape", pa.array(texts, pa.string())), path)
    gbif = table["gbif_id"][0].as_py()
    store = convert_lib.convert(source, tmp_path / "a", skip_bad=True)
    assert store.vision_shape == SHAPE
    assert [(s["gbif_id"], s["kind"]) for s in store.manifest["skipped"]] == [(gbif, "shape")]


# ----------------------------------------------------------------------------------------------------------
# §2: the dashboard index


def _index(source, sql, *args):
    db = sqlite3.connect(source / "embeddings_index.db")
    try:
        out = db.execute(sql, args).fetchall()
        db.commit()
    finally:
        db.close()
    return out


def test_dashboard_offset_shared_by_observations_is_refused(dashboard_source, tmp_path):
    _, source = dashboard_source
    (a, offset), (b, _), (c, _) = _index(source, "SELECT gbif_id, file_offset FROM embedding_index LIMIT 3")
    _index(source, "UPDATE embedding_index SET file_offset = ? WHERE gbif_id IN (?, ?)", offset, b, c)
    with pytest.raises(store_lib.StoreError) as e:
        convert_lib.convert(source, tmp_path / "a", vision_shape=SHAPE, skip_bad=True)
    assert str(e.value) == (
        f"embeddings_index.db points 3 observations at 1 shared file_offset(s) (first: offset {offset} for "
        f"gbif_ids {', '.join(map(str, sorted([a, b, c])))}); "
        "each row of embeddings.mmap belongs to one observation"
    )
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("column, value", [("file_offset", "abc"), ("file_offset", 12.5), ("gbif_id", "x1")])
def test_dashboard_index_text_where_numbers_belong(dashboard_source, tmp_path, capsys, column, value):
    _, source = dashboard_source
    (gbif,) = _index(source, "SELECT gbif_id FROM embedding_index ORDER BY gbif_id LIMIT 1")[0]
    # gbif_id is the table's INTEGER PRIMARY KEY: rebuild the table without it to hold text there.
    _index(source, "CREATE TABLE t AS SELECT gbif_id, file_offset FROM embedding_index")
    _index(source, "DROP TABLE embedding_index")
    _index(source, "ALTER TABLE t RENAME TO embedding_index")
    _index(source, f"UPDATE embedding_index SET {column} = ? WHERE gbif_id = ?", value, gbif)
    out = tmp_path / "a"
    assert data_main(["convert", str(source), "--out", str(out), "--vision-shape", "2,2,3,8"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"embedding_index.{column} holds 1 value(s) that are not whole numbers (first: {value!r}" in line
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------
# §2: dates, clock times and taxon names


BAD_ROWS = {  # case: (row, new values, kind, reason)
    "31 February": (3, {"month": 2, "day": 31}, "bad_date", "year {year}, month 2, day 31 is not a date"),
    "year far out": (4, {"year": 99_999_999_999}, "bad_date", "year 1e+11, month"),
    "year too old": (5, {"year": 1200}, "bad_date", "year 1200, month"),
    "hour 99": (6, {"hour": 99}, "bad_time", "hour 99 is not a whole number in 0..23"),
    "minute -7": (7, {"minute": -7}, "bad_time", "minute -7 is not a whole number in 0..59"),
    "second 60": (8, {"second": 60}, "bad_time", "second 60 is not a whole number in 0..59"),
    "blank taxon": (9, {"taxon_name": "  \t"}, "missing_taxon", "blank taxon_name '  \\t'"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_impossible_dates_times_and_blank_taxa_are_bad_rows(hf_source, tmp_path, case):
    dataset, source = hf_source
    row, values, kind, reason = BAD_ROWS[case]
    assert kind in convert_lib.BAD_KINDS  # every kind a manifest records is described there
    _edit_observations(source, _set(row, **values))
    gbif = int(dataset.gbif_id[row])
    with pytest.raises(convert_lib.ConvertError) as e:
        convert_lib.convert(source, tmp_path / "a")
    message = str(e.value)
    assert message.startswith(f"1 bad source row(s): {kind} 1 (first: {gbif}_1; ") and "\n" not in message
    assert reason.format(year=int(dataset.year[row])) in message and "nothing written" in message
    store = convert_lib.convert(source, tmp_path / "b", skip_bad=True)
    assert [(s["gbif_id"], s["kind"]) for s in store.manifest["skipped"]] == [(gbif, kind)]
    assert gbif not in store.column("gbif_id") and store.num_observations == dataset.num_observations - 1


def test_fractional_dates_and_times_are_bad_rows(hf_source, tmp_path):
    dataset, source = hf_source
    edits = [_set(3, day=14.5), _set(4, hour=7.25)]
    _edit_observations(
        source, lambda rows: edits[1](edits[0](rows)), {"day": pa.float64(), "hour": pa.float64()}
    )
    with pytest.raises(convert_lib.ConvertError) as e:
        convert_lib.convert(source, tmp_path / "a")
    g3, g4 = int(dataset.gbif_id[3]), int(dataset.gbif_id[4])
    assert (
        f"bad_date 1 (first: {g3}_1; year {int(dataset.year[3])}, month {int(dataset.month[3])}, day 14.5"
        in str(e.value)
    )
    assert f"bad_time 1 (first: {g4}_1; hour 7.25 is not a whole number in 0..23)" in str(e.value)


def test_missing_clock_fields_stay_missing(hf_source, tmp_path):
    dataset, source = hf_source
    _edit_observations(source, _set(3, hour=None, minute=None, second=None))
    store = convert_lib.convert(source, tmp_path / "a")
    row = store.rows_of([f"{int(dataset.gbif_id[3])}_1"])[0]
    assert all(np.isnan(store.column(k)[row]) for k in ("hour", "minute", "second"))
    assert store.manifest["skipped"] == []


# ----------------------------------------------------------------------------------------------------------
# §5: the file system refuses


def test_out_under_a_regular_file(hf_source, tmp_path, capsys):
    _, source = hf_source
    (tmp_path / "file").write_text("x")
    assert data_main(["convert", str(source), "--out", str(tmp_path / "file" / "store")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    out = tmp_path / "file" / "store"
    assert line == f"error: --out {out} lies under {tmp_path / 'file'}, which is not a directory"
    assert data_main(["convert", str(source), "--out", str(tmp_path / "file")]) == 2
    assert (
        _one_error_line(capsys.readouterr().err)
        == f"error: --out {tmp_path / 'file'} exists and is not a directory"
    )
    assert (tmp_path / "file").read_text() == "x"


def test_read_only_out(hf_source, tmp_path, capsys, monkeypatch):
    """A read-only file system (mocked: root may write anywhere) ends in one line."""
    _, source = hf_source
    real_mkdir = type(tmp_path).mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "store":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(type(tmp_path), "mkdir", read_only)
    assert data_main(["convert", str(source), "--out", str(tmp_path / "store")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot write store {tmp_path / 'store'}: Read-only file system; ")


def _data_bytes(path):
    manifest = json.loads((path / store_lib.MANIFEST_FILE).read_text())
    for key in ("created", "finished"):
        manifest.pop(key)
    files = [
        store_lib.OBSERVATIONS_FILE,
        store_lib.SPECIES_FILE,
        store_lib.VISION_FILE,
        store_lib.LANGUAGE_FILE,
    ]
    return {f: (path / f).read_bytes() for f in files}, manifest


@pytest.mark.parametrize(
    "call, allowed",
    [("pwrite", 1), ("fsync", 6), ("fsync", 5)],  # a vision row, the rows of a unit, the manifest's update
)
def test_full_disk_keeps_what_was_written(tmp_path, capsys, monkeypatch, call, allowed):
    dataset = small_dataset(observations=60, seed=test_seed())
    source = synthetic_layouts.write_hf(dataset, tmp_path / "src")
    real = getattr(os, call)
    calls = []

    def full(*args, **kwargs):
        calls.append(1)
        if len(calls) > allowed:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(os, call, full)
    out = tmp_path / "store"
    assert data_main(["convert", str(source), "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot write store {out}: No space left on device; ")
    assert line.endswith(
        "what was converted so far is kept: rerun the same command to resume once that is fixed"
    )
    manifest = json.loads((out / store_lib.MANIFEST_FILE).read_text())
    assert manifest["complete"] is False and manifest["progress"]["units"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    monkeypatch.undo()
    assert data_main(["convert", str(source), "--out", str(out)]) == 0
    clean = convert_lib.convert(source, tmp_path / "clean")
    assert _data_bytes(clean.path) == _data_bytes(out)


def test_symlink_loops_in_the_source(hf_source, tmp_path, capsys):
    _, source = hf_source
    loop = source / "vision_embeddings" / "embeddings_000001.parquet"
    loop.unlink()
    loop.symlink_to(loop.name)
    assert data_main(["convert", str(source), "--out", str(tmp_path / "a")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == f"error: cannot read source file {loop}: Too many levels of symbolic links"
    observations = source / "observations.parquet"
    observations.unlink()
    observations.symlink_to("observations.parquet")
    assert data_main(["convert", str(source), "--out", str(tmp_path / "a")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == f"error: source {source}: observations.parquet is a broken symlink or a symlink loop"


def test_error_line_never_glued_to_a_progress_bar(capsys):
    def fails_mid_bar():
        bar = progress_bar(10, "working", mininterval=0)
        bar.update(3)
        raise store_lib.StoreError("the disk went away")

    assert run_command(fails_mid_bar) == 2
    err = capsys.readouterr().err
    assert "working" in err
    assert _one_error_line(err) == "error: the disk went away"


@pytest.mark.parametrize("layout", ["hf", "dashboard"])
def test_checksums_hashed_while_writing_equal_a_full_read(tmp_path, monkeypatch, layout):
    """Chunks of 7 rows, a conversion killed after its second unit and resumed mid-chunk: the manifest's
    checksums (most hashed as rows were written, the rest read back) equal those of a full read."""
    from deepearth_jax.data import store_check
    from deepearth_jax.data.convert import dashboard as convert_dashboard
    from deepearth_jax.data.convert import hf as convert_hf

    row_bytes = int(np.prod(SHAPE)) * 2
    monkeypatch.setattr(store_check, "CHECKSUM_CHUNK_BYTES", 7 * row_bytes)
    dataset = small_dataset(observations=60, seed=test_seed())
    if layout == "hf":
        source = synthetic_layouts.write_hf(dataset, tmp_path / "src")
        module, name, kwargs = convert_hf, "copy_file", {}
    else:
        source = synthetic_layouts.write_dashboard(dataset, tmp_path / "src")
        module, name, kwargs = convert_dashboard, "copy_chunk", {"vision_shape": SHAPE}
        monkeypatch.setattr(convert_dashboard, "CHUNK_BYTES", 5 * int(np.prod(SHAPE)) * 4)
    real, calls = getattr(module, name), []

    def dies_on_third(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(module, name, dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        convert_lib.convert(source, tmp_path / "resumed", **kwargs)
    monkeypatch.setattr(module, name, real)
    resumed = convert_lib.convert(source, tmp_path / "resumed", **kwargs)
    manifest = resumed.manifest["arrays"]["vision"]["checksums"]
    assert manifest["rows_per_chunk"] == 7 and len(manifest["chunk_sha256"]) == -(
        -resumed.vision.shape[0] // 7
    )
    full, _ = store_check.array_checksums(resumed.path / store_lib.VISION_FILE)
    assert manifest == full
    assert store_check.verify_store(resumed.path) == []
    clean = convert_lib.convert(source, tmp_path / "clean", **kwargs)
    assert clean.manifest["arrays"] == resumed.manifest["arrays"]


def test_text_where_numbers_belong_in_the_hf_tables(hf_source, tmp_path, capsys):
    _, source = hf_source

    def as_text(rows):
        for row in rows:
            row["latitude"] = str(row["latitude"])
        rows[2]["latitude"] = "north"
        return rows

    _edit_observations(source, as_text, {"latitude": pa.string()})
    assert data_main(["convert", str(source), "--out", str(tmp_path / "a")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(
        f"error: {source / 'observations.parquet'}: column latitude (string) cannot be read"
    )
    assert not (tmp_path / "a").exists()


def test_text_in_the_vision_index(hf_source, tmp_path, capsys):
    _, source = hf_source
    index = source / "vision_index.parquet"
    table = pq.read_table(index)
    column = pa.array([str(v) for v in table["file_idx"].to_pylist()[:-1]] + ["x"], pa.string())
    pq.write_table(table.set_column(table.schema.get_field_index("file_idx"), "file_idx", column), index)
    assert data_main(["convert", str(source), "--out", str(tmp_path / "a")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {index}: gbif_id and file_idx must be numbers: ")
    assert not (tmp_path / "a").exists()


def test_damaged_observations_file(hf_source, tmp_path, capsys):
    _, source = hf_source
    path = source / "observations.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = bytes(64)  # zeros in the middle of the column data
    path.write_bytes(bytes(data))
    status = data_main(["convert", str(source), "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    if status != 0:  # a damage the format notices: one line naming the file
        assert _one_error_line(err).startswith("error: ") and "observations.parquet" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("groups", [None, 3])
def test_direct_pages_and_pyarrow_give_the_same_store(hf_source, tmp_path, monkeypatch, groups):
    """The embeddings read from the pages (pages.py) or by pyarrow (one row group streamed, or many row
    groups decoded in parallel): the same bytes."""
    _, source = hf_source
    if groups:
        for path in sorted((source / "vision_embeddings").glob("*.parquet")):
            pq.write_table(pq.read_table(path), path, row_group_size=groups)
        assert pq.ParquetFile(path).metadata.num_row_groups > 2
    direct = convert_lib.convert(source, tmp_path / "direct")
    monkeypatch.setattr(convert_hf, "DIRECT_PAGES", False)
    arrow = convert_lib.convert(source, tmp_path / "pyarrow")
    for name in (store_lib.VISION_FILE, store_lib.LANGUAGE_FILE, store_lib.OBSERVATIONS_FILE):
        assert (direct.path / name).read_bytes() == (arrow.path / name).read_bytes()
    assert direct.manifest["arrays"] == arrow.manifest["arrays"]
    assert direct.manifest["conversion"] == arrow.manifest["conversion"]
