"""Occurrence tables read as they are: GBIF simple downloads, Darwin Core text, Parquet, Darwin Core Archives.

`read_occurrences(path)` returns the Darwin Core columns the converter uses (`DWC_COLUMNS`, by their short
term names: decimalLatitude, eventDate, species, ...) as Arrow arrays, and how the file was read. Parsing is
pyarrow's (`pyarrow.csv`, `pyarrow.parquet`) and, for archives, python-dwca-reader's reading of meta.xml;
no hand-written parser:

  * text (`.tsv`, `.txt`, `.csv`, ..., or those compressed as `.gz` / `.bz2`): the delimiter is the header
    line's tab if it has one (a GBIF simple download, which is tab-separated and *unquoted*: a `"` in a value
    is text, so quote_char=False), else its comma (then `"` quotes values, as in CSV), else its semicolon.
    Every column is read as text, so that one bad value makes one bad row (counted), never an unreadable file.
  * Parquet (`.parquet`, `.pq`): `pq.read_table` of the columns present.
  * Darwin Core Archive (a `.zip`, or a directory with `meta.xml`): python-dwca-reader reads meta.xml (the
    core file, its delimiter, quote, encoding, header lines, and which column holds which term, defaults
    included); the core must be an Occurrence core. pyarrow then reads the core file's columns. A zip with a
    single data file and no meta.xml (as GBIF delivers a simple download) is read as text.
"""

from __future__ import annotations

import csv
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from deepearth_jax.data.store import StoreError

# The Darwin Core / GBIF columns the converter reads (any others in the file are ignored).
DWC_COLUMNS = (
    "gbifID",
    "occurrenceID",
    "decimalLatitude",
    "decimalLongitude",
    "eventDate",
    "year",
    "month",
    "day",
    "species",
    "scientificName",
    "speciesKey",
    "taxonKey",
    "coordinateUncertaintyInMeters",
    "basisOfRecord",
    "occurrenceStatus",
)
TEXT_SUFFIXES = (".tsv", ".txt", ".csv", ".tab")
PARQUET_SUFFIXES = (".parquet", ".pq")
OCCURRENCE_ROW_TYPE = "http://rs.tdwg.org/dwc/terms/Occurrence"
_BLOCK_BYTES = 16 << 20  # pyarrow's CSV block: big enough for wide GBIF rows, small enough to stream


@dataclass
class RawOccurrences:
    """The columns read (Darwin Core short names -> arrays of one length) and how the file was read."""

    columns: dict[str, pa.Array]
    num_rows: int
    source_format: str  # "text", "parquet" or "dwca"
    details: dict  # delimiter, quoting, core file, ... (recorded in the store's provenance)


def is_occurrence_source(path: Path) -> bool:
    """Whether `path` is an occurrence table rather than an HF or dashboard dataset directory."""
    path = Path(path)
    if path.is_dir():
        return (path / "meta.xml").is_file()
    return path.is_file()


def read_occurrences(path: str | os.PathLike) -> RawOccurrences:
    """Reads an occurrence table (see the module docstring); raises StoreError naming the file."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"source {path} does not exist")
    if path.is_dir() or zipfile.is_zipfile(path):
        return _read_archive(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _read_parquet(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PAR1":  # Parquet under another name
        return _read_parquet(path)
    return _read_text(path)


def _finish(table: pa.Table, source_format: str, details: dict) -> RawOccurrences:
    columns = {name: table.column(name).combine_chunks() for name in table.column_names}
    return RawOccurrences(columns, table.num_rows, source_format, details)


def _sniff_delimiter(path: Path, encoding: str = "utf-8") -> str:
    """The header line's delimiter: tab, else comma, else semicolon (StoreError when it has none)."""
    try:  # pyarrow's stream undoes .gz / .bz2 compression, as its CSV reader does
        with pa.input_stream(str(path), compression="detect") as f:
            header = f.read(1 << 20).split(b"\n", 1)[0].decode(encoding, errors="replace")
    except (OSError, pa.ArrowInvalid) as e:
        raise StoreError(f"cannot read {path}: {e}") from None
    for delimiter in ("\t", ",", ";"):
        if delimiter in header:
            return delimiter
    shown = header.strip()[:60]
    raise StoreError(
        f"{path}: cannot tell its delimiter from the header line {shown!r} (expected tab- or comma-separated "
        "Darwin Core column names such as decimalLatitude)"
    )


def _read_csv(
    path: Path,
    *,
    delimiter: str,
    quote: str | bool,
    skip_rows: int = 0,
    column_names: list[str] | None = None,
    encoding: str = "utf-8",
) -> pa.Table:
    """pyarrow's CSV reader, every wanted column as text (empty = null), other columns never converted."""
    read = pacsv.ReadOptions(
        block_size=_BLOCK_BYTES, skip_rows=skip_rows, column_names=column_names, encoding=encoding
    )
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char=quote, double_quote=bool(quote))
    try:
        names = column_names or _header_names(path, delimiter, quote, encoding)
        wanted = [c for c in names if c in DWC_COLUMNS]
        convert = pacsv.ConvertOptions(
            column_types={c: pa.string() for c in wanted},
            include_columns=wanted,
            strings_can_be_null=True,
            null_values=[""],
            quoted_strings_can_be_null=True,
        )
        return pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        message = str(e).splitlines()[0]
        raise StoreError(f"cannot read {path}: {message}") from None


def _header_names(path: Path, delimiter: str, quote: str | bool, encoding: str) -> list[str]:
    """The column names of a text file's header line, read by pyarrow (one block)."""
    read = pacsv.ReadOptions(block_size=1 << 20, encoding=encoding)
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char=quote)
    with pacsv.open_csv(path, read_options=read, parse_options=parse) as reader:
        return [name.strip() for name in reader.schema.names]


def _read_text(path: Path) -> RawOccurrences:
    delimiter = _sniff_delimiter(path)
    # GBIF's simple downloads are tab-separated and unquoted; comma-separated text quotes with ".
    quote: str | bool = False if delimiter == "\t" else '"'
    table = _read_csv(path, delimiter=delimiter, quote=quote)
    details = {"delimiter": delimiter, "quoted": bool(quote), "file": path.name}
    return _finish(table, "text", details)


def _read_parquet(path: Path) -> RawOccurrences:
    try:
        names = pq.ParquetFile(path).schema_arrow.names
        table = pq.read_table(path, columns=[c for c in names if c in DWC_COLUMNS])
    except (OSError, pa.ArrowInvalid) as e:
        raise StoreError(f"cannot read {path}: {e}") from None
    return _finish(table, "parquet", {"file": path.name})


def _read_archive(path: Path) -> RawOccurrences:
    """A Darwin Core Archive through python-dwca-reader (meta.xml), its core file through pyarrow."""
    from dwca.exceptions import InvalidArchive
    from dwca.read import DwCAReader

    try:
        archive = DwCAReader(str(path), skip_metadata=True)
    except (InvalidArchive, OSError, zipfile.BadZipFile) as e:
        raise StoreError(f"cannot read the Darwin Core Archive {path}: {e}") from None
    except (ElementTree.ParseError, csv.Error, AttributeError, TypeError, ValueError) as e:
        # meta.xml that is not XML or has no core; a lone data file whose header has no delimiter
        raise StoreError(f"cannot read the Darwin Core Archive {path}: meta.xml: {e}") from None
    try:
        descriptor = archive.core_file.file_descriptor
        core = Path(archive.absolute_temporary_path(descriptor.file_location))
        if descriptor.created_from_file:  # no meta.xml: a zipped simple download
            raw = _read_text(core)
            raw.source_format, raw.details["archive"] = "dwca", path.name
            return raw
        if descriptor.type != OCCURRENCE_ROW_TYPE:
            raise StoreError(
                f"{path}: the archive's core is {descriptor.type}, not {OCCURRENCE_ROW_TYPE} (an occurrence "
                "core is needed: one row per observation)"
            )
        if not core.is_file():
            raise StoreError(f"{path}: meta.xml names the core file {descriptor.file_location}, not there")
        return _read_core(path, core, descriptor)
    finally:
        archive.close()


def _read_core(path: Path, core: Path, descriptor) -> RawOccurrences:
    """The archive's core file, columns named by meta.xml's terms; fields with a default become constants."""
    from dwca.descriptors import shorten_term

    by_index: dict[int, str] = {}
    defaults: dict[str, str] = {}
    for field in descriptor.fields:
        name = shorten_term(field["term"])
        if field["index"] is not None:
            by_index[int(field["index"])] = name
        elif field["default"] is not None:
            defaults[name] = field["default"]
    width = _column_count(core, descriptor)
    names = [by_index.get(i, f"_column_{i}") for i in range(width)]
    if descriptor.id_index is not None and names[descriptor.id_index].startswith("_column_"):
        names[descriptor.id_index] = "_core_id"
    quote = descriptor.fields_enclosed_by or False
    table = _read_csv(
        core,
        delimiter=descriptor.fields_terminated_by,
        quote=quote,
        skip_rows=descriptor.lines_to_ignore,
        column_names=names,
        encoding=descriptor.file_encoding or "utf-8",
    )
    for name, value in defaults.items():
        if name in DWC_COLUMNS and name not in table.column_names:
            table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
    details = {
        "archive": path.name,
        "core_file": descriptor.file_location,
        "delimiter": descriptor.fields_terminated_by,
        "quoted": bool(quote),
        "header_lines": descriptor.lines_to_ignore,
    }
    return _finish(table, "dwca", details)


def _column_count(core: Path, descriptor) -> int:
    """How many fields the core file's rows have (its first line, read by pyarrow)."""
    quote = descriptor.fields_enclosed_by or False
    read = pacsv.ReadOptions(
        block_size=1 << 20, autogenerate_column_names=True, encoding=descriptor.file_encoding or "utf-8"
    )
    parse = pacsv.ParseOptions(delimiter=descriptor.fields_terminated_by, quote_char=quote)
    try:
        with pacsv.open_csv(core, read_options=read, parse_options=parse) as reader:
            return len(reader.schema.names)
    except pa.ArrowInvalid as e:
        raise StoreError(f"cannot read {core.name}: {str(e).splitlines()[0]}") from None
