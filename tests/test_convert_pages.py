"""The direct page reader of the HF embedding column (convert/pages.py) gives pyarrow's numbers, bit for bit.

Every file here is written by pyarrow with small pages, so that rows span pages and pages hold many rows;
the reader's rows are compared with pyarrow's own decoding of the same file. Where the reader leaves the
direct path (nulls, codecs it does not know, damage), the conversion's batches still equal pyarrow's.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import test_seed

from deepearth_jax.data.convert import hf as convert_hf
from deepearth_jax.data.convert import pages


def _rows(rng, n, *, distinct=None):
    """`n` float32 rows of 1..300 values with the awkward ones: NaN, +-Inf, -0.0, subnormals, overflow."""
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-40, -3e-39, 70000.0, 65504.0], np.float32)
    pool = rng.standard_normal(distinct).astype(np.float32) if distinct else None
    rows = []
    for i in range(n):
        length = int(rng.integers(1, 300))
        if pool is not None:  # few distinct values, in runs: dictionary pages with RLE and bit-packed indices
            row = np.repeat(rng.choice(pool, length), rng.integers(1, 12, length))[:length]
        else:
            row = rng.standard_normal(length).astype(np.float32)
        if i % 3 == 0:
            row[rng.integers(0, length, 3)] = rng.choice(special, 3)
        rows.append(row.astype(np.float32))
    return rows


def _write(path, rows, **options):
    embedding = pa.array(rows, type=pa.list_(pa.float32()))
    table = pa.table(
        {
            "gbif_id": pa.array(np.arange(100, 100 + len(rows)), pa.int64()),
            "embedding": embedding,
            "original_shape": pa.array([f"[{len(r) if r is not None else 0}]" for r in rows]),
        }
    )
    defaults = {"data_page_size": 512, "write_batch_size": 16, "row_group_size": 7, "use_dictionary": False}
    pq.write_table(table, path, **{**defaults, **options})
    return path


def _bits(row):
    return None if row is None else np.asarray(row, np.float32).view(np.uint32)


def _direct_rows(path, batch_rows=3):
    """Every row of the file by the direct reader (NotSimple propagates)."""
    parquet = pq.ParquetFile(path)
    reader = pages.FlatFloatColumn.open(path, parquet, "embedding")
    assert reader is not None
    out = []
    for group in range(parquet.metadata.num_row_groups):
        for batch in reader.batches(group, batch_rows):
            assert 1 <= len(batch) <= batch_rows
            out.extend(batch)
    return out


def _pyarrow_rows(path):
    column = pq.read_table(path, columns=["embedding"]).column(0)
    return [None if row is None else np.asarray(row, np.float32) for row in column.to_pylist()]


def _decoded(path, direct, monkeypatch, batch_rows=3):
    """The conversion's decoded rows `(id, bits, valid, text, inner)`, read with or without pages.py."""
    monkeypatch.setattr(convert_hf, "DIRECT_PAGES", direct)
    parquet = pq.ParquetFile(path)
    columns = ["gbif_id", "embedding", "original_shape"]
    out = []
    for ids, rows, valid, texts, inner in convert_hf._decoded_batches(path, parquet, columns, batch_rows, 1):
        for i in range(len(ids)):
            bits = rows[i].view(np.uint32).tobytes() if valid[i] else None
            out.append((ids[i], bits, bool(valid[i]), texts[i], None if inner is None else bool(inner[i])))
    return out


CODECS = ["NONE", "SNAPPY", "GZIP", "ZSTD", "LZ4", "BROTLI"]


@pytest.mark.parametrize("version", ["1.0", "2.0"])
@pytest.mark.parametrize("compression", CODECS)
def test_direct_rows_equal_pyarrow(tmp_path, compression, version):
    rng = np.random.default_rng(test_seed())
    rows = _rows(rng, 40)
    path = _write(tmp_path / "e.parquet", rows, compression=compression, data_page_version=version)
    column = pq.ParquetFile(path).metadata.row_group(0).column(1)
    if column.compression not in pages._CODECS and column.compression != "UNCOMPRESSED":
        with pytest.raises(pages.NotSimple, match="codec"):
            _direct_rows(path)
        return
    got = _direct_rows(path)
    assert len(got) == len(rows)
    for a, b in zip(got, rows, strict=True):
        assert a.dtype == np.float32 and np.array_equal(_bits(a), _bits(b))


@pytest.mark.parametrize("version", ["1.0", "2.0"])
@pytest.mark.parametrize("limit", [1 << 20, 300])  # a whole dictionary, or one that falls back to PLAIN
def test_dictionary_pages_equal_pyarrow(tmp_path, version, limit):
    rng = np.random.default_rng(test_seed())
    rows = _rows(rng, 30, distinct=37)
    path = _write(
        tmp_path / "e.parquet",
        rows,
        use_dictionary=True,
        dictionary_pagesize_limit=limit,
        data_page_version=version,
        compression="SNAPPY",
    )
    assert pq.ParquetFile(path).metadata.row_group(0).column(1).has_dictionary_page
    got = _direct_rows(path)
    assert all(np.array_equal(_bits(a), _bits(b)) for a, b in zip(got, rows, strict=True))


def test_rows_across_pages_are_joined(tmp_path, monkeypatch):
    """pyarrow's writer ends pages at row ends; other writers' v1 pages may cut a row anywhere. The pages
    read here are re-cut at random points (a row over many pages, pages of parts of two rows): same rows."""
    rng = np.random.default_rng(test_seed())
    rows = [rng.standard_normal(n).astype(np.float32) for n in (5000, 3, 4, 4097, 1, 2000, 7)]
    path = _write(tmp_path / "e.parquet", rows, row_group_size=len(rows), data_page_size=1024)
    whole_pages = pages.FlatFloatColumn._pages

    def recut(self, chunk, codec):
        for values, starts in whole_pages(self, chunk, codec):
            cuts = np.unique(np.concatenate([[0, len(values)], rng.integers(0, len(values), 4)]))
            for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
                yield values[lo:hi], starts[(starts >= lo) & (starts < hi)] - lo

    monkeypatch.setattr(pages.FlatFloatColumn, "_pages", recut)
    for batch_rows in (1, 2, 5):
        got = _direct_rows(path, batch_rows=batch_rows)
        assert [len(r) for r in got] == [len(r) for r in rows]
        assert all(np.array_equal(a, b) for a, b in zip(got, rows, strict=True))


@pytest.mark.parametrize("where", ["null_row", "null_value", "empty_row"])
def test_nulls_leave_the_direct_path_and_the_batches_still_equal_pyarrow(tmp_path, where, monkeypatch):
    rng = np.random.default_rng(test_seed())
    rows: list = _rows(rng, 20)
    if where == "null_row":
        rows[11] = None
    elif where == "empty_row":
        rows[11] = np.zeros(0, np.float32)
    embedding = pa.array(rows, type=pa.list_(pa.float32()))
    if where == "null_value":  # a null inside row 11: pyarrow gives NaN there (a non-finite bad row)
        offsets = np.cumsum([0, *map(len, rows)])
        values = pa.array(np.concatenate(rows), mask=np.arange(offsets[-1]) == offsets[11])
        embedding = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)
        assert values.null_count == 1
    path = tmp_path / "e.parquet"
    pq.write_table(
        pa.table({"gbif_id": np.arange(20), "embedding": embedding, "original_shape": ["x"] * 20}),
        path,
        data_page_size=512,
        write_batch_size=16,
        row_group_size=7,
        use_dictionary=False,
    )
    with pytest.raises(pages.NotSimple, match="null"):
        _direct_rows(path)
    assert _decoded(path, True, monkeypatch) == _decoded(path, False, monkeypatch)


def test_schemas_outside_the_direct_path(tmp_path):
    cases = {
        "float64": pa.array([[1.0, 2.0]], pa.list_(pa.float64())),
        "float16": pa.array([np.ones(2, np.float16)], pa.list_(pa.float16())),
        "nested": pa.array([[[1.0, 2.0]]], pa.list_(pa.list_(pa.float32()))),
        "not_a_list": pa.array([1.0], pa.float32()),
    }
    for name, column in cases.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"gbif_id": [1], "embedding": column}), path)
        assert pages.FlatFloatColumn.open(path, pq.ParquetFile(path), "embedding") is None, name
    path = tmp_path / "large.parquet"
    pq.write_table(pa.table({"embedding": pa.array([[1.0, 2.0]], pa.large_list(pa.float32()))}), path)
    assert pages.FlatFloatColumn.open(path, pq.ParquetFile(path), "embedding") is not None


@pytest.mark.parametrize("compression", ["NONE", "SNAPPY"])
def test_damaged_files_read_as_pyarrow_reads_them(tmp_path, compression, monkeypatch):
    """Bytes overwritten in the pages (headers, levels, values): the conversion's batches equal pyarrow's,
    or both fail; the direct path never invents a value pyarrow would not give."""
    rng = np.random.default_rng(test_seed())
    clean = _write(tmp_path / "clean.parquet", _rows(rng, 20), compression=compression).read_bytes()
    meta = pq.ParquetFile(tmp_path / "clean.parquet").metadata
    first = meta.row_group(0).column(1).data_page_offset
    last = meta.row_group(meta.num_row_groups - 1).column(1)
    end = last.data_page_offset + last.total_compressed_size
    outcomes = set()
    for trial in range(40):
        data = bytearray(clean)
        for at in rng.integers(first, end, 1 + trial % 3):
            data[at] = int(rng.integers(0, 256))
        path = tmp_path / f"damaged{trial}.parquet"
        path.write_bytes(bytes(data))
        results = []
        for direct in (True, False):
            try:
                results.append(_decoded(path, direct, monkeypatch))
            except Exception as e:  # what pyarrow raises on damage; never NotSimple, which is handled
                assert not isinstance(e, pages.NotSimple)
                results.append(type(e).__name__)
        outcomes.add("same" if isinstance(results[0], list) else "both failed")
        assert results[0] == results[1] or (isinstance(results[0], str) and isinstance(results[1], str)), (
            f"trial {trial}: {results[0] if isinstance(results[0], str) else 'rows'} vs "
            f"{results[1] if isinstance(results[1], str) else 'rows'}"
        )
    assert "same" in outcomes


def test_thrift_reader_skips_unknown_fields():
    """A PageHeader with fields this reader does not use (a list, a map, a nested struct, a double)."""
    out = bytearray()

    def varint(n):
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        out.append(n)

    def field(delta, kind):
        out.append(delta << 4 | kind)

    field(1, 5)
    varint(0)  # type = DATA_PAGE (zigzag 0)
    field(1, 5)
    varint(2 * 100)  # uncompressed size 100
    field(1, 5)
    varint(2 * 90)  # compressed size 90
    field(1, 9)
    out.append(3 << 4 | 5)
    varint(2)
    varint(4)
    varint(6)  # a list of three i32
    field(1, 12)
    field(1, 5)
    varint(2 * 7)
    field(2, 8)
    varint(3)
    out.extend(b"abc")
    out.append(0)  # data_page_header {1: 7, 3: b"abc"}
    field(1, 11)
    varint(1)
    out.append(5 << 4 | 8)
    varint(2)
    varint(1)
    out.extend(b"z")  # a map {1: b"z"}
    field(1, 7)
    out.extend(np.float64(2.5).tobytes())
    field(1, 1)  # a true bool
    out.append(0)
    fields, length = pages._Thrift(bytes(out) + b"rest").struct()
    assert length == len(out)
    assert fields[1] == 0 and fields[2] == 100 and fields[3] == 90 and fields[4] == [1, 2, 3]
    assert fields[5] == {1: 7, 3: b"abc"} and fields[6] == [(1, b"z")] and fields[7] == 2.5 and fields[8]
