"""A direct reader of the HF layout's embedding column: flat float32 lists decoded from the Parquet pages.

pyarrow decodes a `list<float>` column through its general nested-record machinery: repetition and definition
levels expanded value by value, record boundaries found by scanning them, values copied into buffers that
grow by doubling. For a column of 6.5 M-value lists that is most of a conversion's CPU time, more than the
float16 cast and the checksums together. Here the common case is read straight from the pages: a flat list
column of FLOAT; data pages (v1 or v2) with RLE levels and PLAIN values, or dictionary indices into a PLAIN
dictionary page (pyarrow's default writer dictionary-encodes a chunk's first page, then falls back to
PLAIN); a codec Arrow can decompress; every value present. The levels are decoded run by run (a run of a
million 1s costs nothing), PLAIN values are the decompressed page bytes viewed as float32, and rows are cut
where the repetition level is 0.

Anything else (another encoding or physical type, a null row, list or value, a page that does not add up)
raises `NotSimple` where it is met; the rows delivered before it are good, and the caller reads the rest
of the row group with pyarrow, which also reports any damage. The values delivered are the numbers pyarrow
would give, bit for bit (tests compare both over codecs, page versions, dictionaries, damaged bytes).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Parquet's codec names (column metadata) -> Arrow's (pa.decompress); others are left to pyarrow.
_CODECS = {"SNAPPY": "snappy", "GZIP": "gzip", "ZSTD": "zstd", "LZ4_RAW": "lz4_raw", "BROTLI": "brotli"}
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_PLAIN, _PLAIN_DICTIONARY, _RLE, _RLE_DICTIONARY = 0, 2, 3, 8
_HEADER_READ = 4096  # bytes read to parse a page header; more if it is longer
_MAX_HEADER = 1 << 20


class NotSimple(Exception):
    """The column chunk leaves the direct path here (the message says why)."""


class FlatFloatColumn:
    """Reads one flat `list<float>` column of a Parquet file row group by row group, page by page."""

    def __init__(self, path: os.PathLike, parquet: pq.ParquetFile, index: int):
        self.path, self.parquet, self.index = path, parquet, index
        column = parquet.schema.column(index)
        self.max_def = column.max_definition_level
        self.def_width = self.max_def.bit_length()

    @classmethod
    def open(cls, path: os.PathLike, parquet: pq.ParquetFile, name: str) -> FlatFloatColumn | None:
        """The reader of list column `name`, or None when its schema is outside the direct path."""
        leaves = [
            i for i in range(len(parquet.schema)) if parquet.schema.column(i).path.split(".")[0] == name
        ]
        if len(leaves) != 1:
            return None
        column = parquet.schema.column(leaves[0])
        arrow = parquet.schema_arrow.field(name).type
        if not (pa.types.is_list(arrow) or pa.types.is_large_list(arrow)):
            return None
        if not pa.types.is_float32(arrow.value_type) or column.physical_type != "FLOAT":
            return None
        if column.max_repetition_level != 1 or not 1 <= column.max_definition_level <= 3:
            return None
        return cls(path, parquet, leaves[0])

    def batches(self, group: int, batch_rows: int) -> Iterator[list[np.ndarray]]:
        """Row group `group` as lists of `batch_rows` rows (the last fewer), each row its float32 values.

        A row inside one page is a view of the decompressed page; a row across pages is joined. Raises
        NotSimple where the chunk leaves the direct path (the rows yielded before it are good).
        """
        chunk = self.parquet.metadata.row_group(group).column(self.index)
        codec = chunk.compression
        if codec != "UNCOMPRESSED" and codec not in _CODECS:
            raise NotSimple(f"codec {codec}")
        rows: list[np.ndarray] = []  # complete rows not yet yielded
        row: list[np.ndarray] | None = None  # the parts of the row being read; None before the first
        for values, page_starts in self._pages(chunk, _CODECS.get(codec)):
            if row is None and (len(page_starts) == 0 or page_starts[0] != 0):
                raise NotSimple("a row group that does not begin a row")
            begins = set(page_starts.tolist())
            edges = sorted(begins | {0, len(values)})
            for lo, hi in zip(edges[:-1], edges[1:], strict=True):
                if lo in begins:
                    if row is not None:
                        rows.append(_whole(row))
                        if len(rows) == batch_rows:
                            yield rows
                            rows = []
                    row = []
                row.append(values[lo:hi])
        if row is not None:
            rows.append(_whole(row))
        if rows:
            yield rows

    def _pages(self, chunk, codec: str | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`(values, row starts within the page)` of each data page of the chunk."""
        position = chunk.data_page_offset
        if chunk.has_dictionary_page and chunk.dictionary_page_offset:
            position = min(position, chunk.dictionary_page_offset)
        end = position + chunk.total_compressed_size
        remaining = chunk.num_values
        dictionary = None
        with open(self.path, "rb", buffering=0) as f:
            fd = f.fileno()
            while remaining > 0:
                if position >= end:
                    raise NotSimple("pages end before the chunk's values")
                header, length = _page_header(fd, position)
                position += length
                if position + header.compressed > end:
                    raise NotSimple("a page past the end of its column chunk")
                body = os.pread(fd, header.compressed, position)
                position += header.compressed
                if len(body) != header.compressed:
                    raise NotSimple("a truncated page")
                if header.kind == _DICTIONARY_PAGE:
                    dictionary = _dictionary(header, body, codec, chunk.num_values)
                    continue
                values, page_starts, count = self._page(header, body, codec, dictionary, remaining)
                remaining -= count  # never below 0: _page refuses a page of more values than remain
                yield values, page_starts

    def _page(
        self, header: _Header, body: bytes, codec: str | None, dictionary: np.ndarray | None, most: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """A data page's values and the indices where rows begin in it; NotSimple unless all are present.

        `most`: the chunk's values not yet read (a page claiming more, or a size beyond what its values
        could fill, is damage: refused before anything of that size is allocated)."""
        page = header.page
        count = _int(page, 1)
        if not 0 < count <= most or header.uncompressed > 5 * count + 4096:
            raise NotSimple("a page whose sizes do not fit its values")
        if header.kind == _DATA_PAGE:
            encoding = _int(page, 2)
            if _int(page, 3, _RLE) != _RLE or _int(page, 4, _RLE) != _RLE:
                raise NotSimple("levels not RLE-encoded")
            data = _decompressed(body, codec, header.uncompressed)
            rep, at = _prefixed(data, 0)
            definition, at = _prefixed(data, at)
            values = data[at:]
        elif header.kind == _DATA_PAGE_V2:
            encoding = _int(page, 4)
            rep_bytes, def_bytes = _int(page, 6), _int(page, 5)
            if _int(page, 2, 0) != 0:
                raise NotSimple("a page with nulls")
            whole = memoryview(body).cast("B")
            if rep_bytes < 0 or def_bytes < 0 or rep_bytes + def_bytes > len(whole):
                raise NotSimple("a page too short for its levels")
            rep = whole[:rep_bytes]
            definition = whole[rep_bytes : rep_bytes + def_bytes]
            values = whole[rep_bytes + def_bytes :]
            if page.get(7, True) is not False:
                values = _decompressed(values, codec, header.uncompressed - rep_bytes - def_bytes)
        else:
            raise NotSimple(f"a page of type {header.kind}")
        if not _all_equal(definition, self.def_width, count, self.max_def):
            raise NotSimple("a null row, list or value")
        if encoding == _PLAIN:
            if len(values) != 4 * count:
                raise NotSimple("a page whose values do not match its count")
            values = np.frombuffer(values, "<f4")
        elif encoding in (_PLAIN_DICTIONARY, _RLE_DICTIONARY) and dictionary is not None:
            if len(values) < 1:
                raise NotSimple("a dictionary page without its index width")
            indices = _levels(values[1:], values[0], count)
            if len(dictionary) == 0 or int(indices.max()) >= len(dictionary):
                raise NotSimple("a dictionary index past the dictionary")
            values = dictionary[indices]
        else:
            raise NotSimple(f"values of encoding {encoding}")
        return values, _zeros(rep, 1, count), count


def _dictionary(header: _Header, body: bytes, codec: str | None, most: int) -> np.ndarray:
    """A dictionary page's float32 values (PLAIN); at most `most` of them (the chunk's values)."""
    page = header.page
    count, encoding = _int(page, 1), _int(page, 2, _PLAIN)
    if encoding not in (_PLAIN, _PLAIN_DICTIONARY):
        raise NotSimple(f"a dictionary of encoding {encoding}")
    if not 0 <= count <= most or header.uncompressed != 4 * count:
        raise NotSimple("a dictionary page whose sizes do not fit its values")
    data = _decompressed(body, codec, header.uncompressed)
    if count < 0 or len(data) != 4 * count:
        raise NotSimple("a dictionary page whose values do not match its count")
    return np.frombuffer(data, "<f4")


@dataclass(frozen=True)
class _Header:
    kind: int
    uncompressed: int
    compressed: int
    page: dict  # the data_page_header, data_page_header_v2 or dictionary_page_header fields


def _int(fields: dict, key: int, default: int | None = None) -> int:
    """An integer field of a thrift struct; NotSimple if absent (without default) or not an integer."""
    value = fields.get(key, default)
    if type(value) is not int:
        raise NotSimple(f"a page header without integer field {key}")
    return value


def _page_header(fd: int, position: int) -> tuple[_Header, int]:
    """The thrift PageHeader at `position` and its length in bytes."""
    size = _HEADER_READ
    while True:
        data = os.pread(fd, size, position)
        try:
            fields, length = _Thrift(data).struct()
        except (IndexError, struct.error):
            if len(data) < size or size >= _MAX_HEADER:
                raise NotSimple("an unreadable page header") from None
            size *= 4
            continue
        kind = _int(fields, 1)
        page = fields.get({_DATA_PAGE: 5, _DICTIONARY_PAGE: 7, _DATA_PAGE_V2: 8}.get(kind, -1), {})
        if not isinstance(page, dict):
            raise NotSimple("a page header of the wrong shape")
        header = _Header(kind, _int(fields, 2), _int(fields, 3), page)
        if header.compressed < 0 or header.uncompressed < 0:
            raise NotSimple("a page header with negative sizes")
        return header, length


class _Thrift:
    """Just enough of thrift's compact protocol to read a PageHeader: structs as {field id: value}."""

    def __init__(self, data: bytes):
        self.data, self.at, self.depth = data, 0, 0

    def struct(self) -> tuple[dict, int]:
        self.depth += 1
        if self.depth > 16:
            raise NotSimple("a page header nested too deeply")
        fields, last = {}, 0
        while True:
            byte = self.byte()
            if byte == 0:
                self.depth -= 1
                return fields, self.at
            kind, delta = byte & 0x0F, byte >> 4
            last = last + delta if delta else _zigzag(self.varint())
            fields[last] = True if kind == 1 else False if kind == 2 else self.value(kind)

    def value(self, kind: int):
        if kind in (1, 2):  # a bool inside a container: one byte
            return self.byte() == 1
        if kind == 3:
            return struct.unpack("<b", bytes([self.byte()]))[0]
        if kind in (4, 5, 6):
            return _zigzag(self.varint())
        if kind == 7:
            self.at += 8
            return struct.unpack_from("<d", self.data, self.at - 8)[0]
        if kind == 8:
            n = self.varint()
            if self.at + n > len(self.data):
                raise IndexError("binary past the end")
            self.at += n
            return self.data[self.at - n : self.at]
        if kind in (9, 10):
            header = self.byte()
            n = header >> 4 if header >> 4 != 15 else self.varint()
            return [self.value(header & 0x0F) for _ in range(n)]
        if kind == 11:
            n = self.varint()
            kinds = self.byte() if n else 0
            return [(self.value(kinds >> 4), self.value(kinds & 0x0F)) for _ in range(n)]
        if kind == 12:
            return self.struct()[0]
        raise NotSimple(f"a page header with thrift type {kind}")

    def byte(self) -> int:
        self.at += 1
        return self.data[self.at - 1]

    def varint(self) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7
            if shift > 63:
                raise NotSimple("a page header with a malformed number")


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _decompressed(body, codec: str | None, size: int):
    if codec is None:
        return memoryview(body).cast("B")
    try:
        return memoryview(pa.decompress(body, decompressed_size=size, codec=codec)).cast("B")
    except (pa.ArrowException, ValueError) as e:
        raise NotSimple(f"a page that does not decompress: {e}") from None


def _prefixed(data: memoryview, at: int) -> tuple[memoryview, int]:
    """A v1 page's level section: a 4-byte little-endian length, then that many bytes."""
    if at + 4 > len(data):
        raise NotSimple("a page too short for its levels")
    (n,) = struct.unpack_from("<I", data, at)
    if at + 4 + n > len(data):
        raise NotSimple("a page too short for its levels")
    return data[at + 4 : at + 4 + n], at + 4 + n


def _runs(data: memoryview, width: int, count: int) -> Iterator[tuple[int, int, np.ndarray | int]]:
    """The RLE/bit-packed hybrid runs of `count` levels (or dictionary indices) of `width` bits:
    `(first index, length, value or values)`.

    Neighbouring bit-packed runs come as one, unpacked by one numpy call: an encoder writes at most 504
    values per run, so a dictionary-encoded page of 6.5 M indices holds ~13,000 of them, and a stretch of
    runs with the same one-byte header is found and stripped of its headers with numpy, not one by one."""
    if not 0 <= width <= 32:
        raise NotSimple(f"a bit width of {width}")
    at = index = 0
    step = (width + 7) // 8
    packed: list[np.ndarray] = []  # bytes of bit-packed runs not yet unpacked, from index `first`
    first = packed_values = 0
    while index < count:
        start = at
        header = shift = 0
        while True:  # a ULEB128 run header
            if at >= len(data):
                raise NotSimple("levels end before the page's values")
            byte = data[at]
            at += 1
            header |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
            if shift > 35:
                raise NotSimple("a malformed level run")
        if header & 1:  # bit-packed: header >> 1 groups of 8 values, `width` bytes per group
            groups = header >> 1
            nbytes = groups * width
            if groups == 0 or at + nbytes > len(data):
                raise NotSimple("a malformed level run")
            runs = 1
            if at - start == 1 and 8 * groups < count - index:  # more runs like it may follow
                stride = 1 + nbytes
                most = min((len(data) - start) // stride, -(-(count - index) // (8 * groups)))
                block = np.ndarray((most, stride), np.uint8, data, start)
                heads = block[:, 0] == header
                runs = most if heads.all() else int(np.argmin(heads))
                packed.append(block[:runs, 1:].reshape(-1))
            else:
                packed.append(np.frombuffer(data, np.uint8, nbytes, at))
            if len(packed) == 1:
                first, packed_values = index, 0
            packed_values += 8 * groups * runs
            index += min(8 * groups * runs, count - index)
            at = start + runs * (at - start + nbytes)
            continue
        if packed:
            yield first, index - first, _unpacked(packed, width, packed_values)[: index - first]
            packed = []
        length = header >> 1  # a run of `length` copies of one value
        if length == 0 or at + step > len(data):
            raise NotSimple("a malformed level run")
        value = int.from_bytes(data[at : at + step], "little")
        length = min(length, count - index)
        yield index, length, value
        at += step
        index += length
    if packed:
        yield first, index - first, _unpacked(packed, width, packed_values)[: index - first]


def _unpacked(packed: list[np.ndarray], width: int, n: int) -> np.ndarray:
    """The `n` values (a multiple of 8) of `width` bits packed least significant bit first in `packed`."""
    if width == 0:
        return np.zeros(n, np.uint32)
    raw = packed[0] if len(packed) == 1 else np.concatenate(packed)
    if width == 1:
        return np.unpackbits(raw, bitorder="little")
    groups = n // 8
    padded = np.zeros(len(raw) + 8, np.uint8)
    padded[: len(raw)] = raw
    out = np.empty((8, groups), np.uint32)
    mask = np.uint64((1 << width) - 1)
    for j in range(8):  # value j of every group of 8 starts at bit j * width of the group's `width` bytes
        bit = j * width
        words = np.ndarray((groups,), "<u8", padded, bit >> 3, (width,))  # unaligned, strided: no copy
        np.bitwise_and(words >> np.uint64(bit & 7), mask, out=out[j], casting="unsafe")
    return out.T.reshape(-1)


def _levels(data: memoryview, width: int, count: int) -> np.ndarray:
    """All `count` values of an RLE/bit-packed hybrid stream, as uint32."""
    out = np.empty(count, np.uint32)
    for index, length, value in _runs(data, width, count):
        out[index : index + length] = value
    return out


def _all_equal(data: memoryview, width: int, count: int, level: int) -> bool:
    for _, _, value in _runs(data, width, count):
        if (value != level) if isinstance(value, int) else bool(np.any(value != level)):
            return False
    return True


def _zeros(data: memoryview, width: int, count: int) -> np.ndarray:
    """Indices of the levels equal to 0 (repetition level 0: a new row starts there)."""
    found = []
    for index, length, value in _runs(data, width, count):
        if isinstance(value, int):
            if value == 0:
                found.append(np.arange(index, index + length, dtype=np.int64))
            elif value != 1:
                raise NotSimple("a repetition level above 1")
        else:
            found.append(np.flatnonzero(value == 0).astype(np.int64) + index)
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _whole(parts: list[np.ndarray]) -> np.ndarray:
    """A row from its parts in one or more pages."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
