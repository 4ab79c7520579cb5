"""The store: one self-describing, memory-mapped directory per dataset.

Layout of a store directory:

    manifest.json          format name and version, counts, shapes, dtypes, provenance, checksums
    observations.parquet   one row per OBSERVATION_ID (see OBSERVATION_SCHEMA)
    species.parquet        one row per species (see SPECIES_SCHEMA)
    vision.npy             (N_vision, T, H, W, D) float16 (default) or float32, opened with mmap_mode="r"
    language.npy           (N_language, L) float32, one row per distinct language vector
    features/              derived caches (pooled vision features), recorded in the manifest

An *observation-only* store (an occurrence table: place, date and species, no embeddings) has neither array:
its manifest says `"observation_only": true` with `"arrays": {}`, and every `vision_row` and `language_row`
is -1. The geo modes train on it; a mode that reads embeddings refuses it in one line (`data.modes`).
The observation table may carry, after OBSERVATION_SCHEMA's columns, the optional columns of
OPTIONAL_OBSERVATION_FIELDS (kept from occurrence tables when the source has them).

A store is complete only once `manifest.json` says `"complete": true`; the writer sets it last, with an
atomic rename, so an interrupted conversion never looks like a finished one. Nothing is ever unpickled.

A store is a closed box: the manifest names only files inside its directory (relative paths, no `..`, no
symlink leading out), and only regular files are opened (a FIFO or device in place of a file is refused, never
waited on).

What is checked when:
  * `open_store` (train, evaluate, split, info), always, from cheap facts (a stat and a header per file, no
    data read): the manifest's fields and their types, completeness, every file inside the store and regular,
    each .npy header (shape, dtype, C order) and file size against the manifest, the tables' columns and
    types, row counts against the manifest, and that every vision_row, language_row and species_index of
    the observation table points inside its array or table.
  * `verify_store` (`python -m deepearth_jax.data verify`), on request, reading every byte: all of the above,
    plus the SHA-256 of each table and of each chunk of every array, finiteness of every embedding value,
    and no vision row or observation id used twice.

This module holds the format (file names, schemas, the manifest) and the reader (`open_store`);
`store_writer` writes stores, `store_check` checksums and verifies them and prints the `info` report.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepearth_jax.data.store_manifest import (  # noqa: F401  (the format's names, re-exported)
    FEATURES_DIR,
    FORMAT_NAME,
    FORMAT_VERSION,
    LANGUAGE_FILE,
    MANIFEST_FILE,
    OBSERVATIONS_FILE,
    SPECIES_FILE,
    VISION_FILE,
    check_manifest,
    field_error,
)
from deepearth_jax.errors import StoreError  # noqa: F401  (re-exported: callers import it from here)
from deepearth_jax.io import file_sha256, format_bytes, write_json_atomic  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


# Rows of a large array hashed together: about 64 MiB per checksum, whatever the row size.
CHECKSUM_CHUNK_BYTES = 64 << 20

OBSERVATION_SCHEMA = pa.schema(
    [
        ("observation_id", pa.string()),
        ("gbif_id", pa.int64()),
        ("image_index", pa.int32()),
        ("taxon_id", pa.string()),
        ("taxon_name", pa.string()),
        ("species_index", pa.int32()),
        ("latitude", pa.float64()),
        ("longitude", pa.float64()),
        ("elevation", pa.float64()),  # metres; null when the source has none (DeepEarth data has none)
        ("year", pa.int32()),
        ("month", pa.int32()),
        ("day", pa.int32()),
        ("hour", pa.int32()),  # nullable
        ("minute", pa.int32()),  # nullable
        ("second", pa.int32()),  # nullable
        ("vision_row", pa.int64()),  # row of vision.npy, -1 when the observation has no vision embedding
        ("language_row", pa.int64()),  # row of language.npy
        ("source_split", pa.string()),  # the source's own split column ("train", "temporal_test", ...)
        ("image_url", pa.string()),  # nullable
    ]
)

# Optional observation columns, in this order after OBSERVATION_SCHEMA's when present (nullable).
OPTIONAL_OBSERVATION_FIELDS = (
    pa.field("coordinate_uncertainty_m", pa.float64()),  # Darwin Core coordinateUncertaintyInMeters
    pa.field("basis_of_record", pa.string()),  # Darwin Core basisOfRecord (HUMAN_OBSERVATION, ...)
)


def observation_schema(names: Iterable[str] = ()) -> pa.Schema:
    """OBSERVATION_SCHEMA, then the optional fields among `names` (in OPTIONAL_OBSERVATION_FIELDS order)."""
    names = set(names)
    return pa.schema([*OBSERVATION_SCHEMA, *(f for f in OPTIONAL_OBSERVATION_FIELDS if f.name in names)])


SPECIES_SCHEMA = pa.schema(
    [
        ("species_index", pa.int32()),
        ("taxon_id", pa.string()),
        ("taxon_name", pa.string()),
        ("language_row", pa.int64()),
        ("num_observations", pa.int64()),
        ("num_vision", pa.int64()),
    ]
)


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (manifest timestamps)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def read_manifest(path: str | os.PathLike) -> dict:
    """Reads a store's manifest.json; raises StoreError when it is missing or not a store manifest."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise StoreError(f"no store at {path}: not a directory")
    if not manifest_path.is_file():
        raise StoreError(f"no store at {path}: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{manifest_path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise StoreError(f"{manifest_path} is not a {FORMAT_NAME} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise StoreError(
            f"{path} has store format version {manifest.get('version')}, this deepearth_jax reads "
            f"version {FORMAT_VERSION}"
        )
    if not isinstance(manifest.get("complete", False), bool):
        raise field_error(manifest_path, "complete", "true or false", manifest.get("complete"))
    if manifest.get("complete"):
        check_manifest(manifest, manifest_path)
    else:
        for key in ("arrays_planned", "progress", "provenance"):
            if not isinstance(manifest.get(key, {}), dict):
                raise field_error(manifest_path, key, "an object", manifest.get(key))
    return manifest


def update_manifest(path: str | os.PathLike, update: Callable[[dict], None]) -> dict:
    """Applies `update` to the manifest in place and rewrites it atomically; returns the new manifest."""
    manifest = read_manifest(path)
    update(manifest)
    write_json_atomic(Path(path) / MANIFEST_FILE, manifest)
    return manifest


def npy_header_bytes(path: Path) -> int:
    """Bytes before the data of a .npy file (magic, version, header length and header)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        return f.tell()


# The closed box, part two: where the files a manifest names may be (its fields: store_manifest.py)


def store_file(root: Path, name: object) -> Path:
    """The path of a file a manifest names, refused unless it is a relative path inside the store (no `..`,
    no symlink leading out) to a regular file: never a FIFO, device or directory, which could hang a reader
    or read another store's data."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in Path(name).parts:
        raise StoreError(f"store {root}: the manifest names {name!r}, which is not a path inside the store")
    path = root / name
    try:
        inside = path.resolve(strict=True).is_relative_to(root.resolve(strict=True))
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise StoreError(f"store {root}: {name} is missing") from None
    except (OSError, RuntimeError) as e:  # a symlink loop, a permission problem
        raise StoreError(f"store {root}: cannot reach {name}: {getattr(e, 'strerror', None) or e}") from None
    if not inside:
        raise StoreError(f"store {root}: {name} leads outside the store (a symlink?)")
    if not stat.S_ISREG(mode):
        raise StoreError(f"store {root}: {name} is not a regular file")
    return path


def open_array(root: Path, info: dict) -> np.memmap:
    """Memory-maps an array the (checked) manifest describes, after checking its .npy header and its size
    against the manifest: cheap facts read from the header and a stat, no data read."""
    path = store_file(root, info["file"])
    shape, dtype = tuple(info["shape"]), np.dtype(info["dtype"])
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            header = read(f)
            data_offset = f.tell()
    except (OSError, ValueError, SyntaxError) as e:
        raise StoreError(f"store {root}: {info['file']} has no valid .npy header ({e})") from None
    got_shape, fortran, got_dtype = header
    if got_shape != shape or got_dtype != dtype or fortran:
        raise StoreError(
            f"store {root}: {info['file']} is {got_shape} {got_dtype}, the manifest says {shape} {dtype}"
        )
    expected = data_offset + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise StoreError(
            f"store {root}: {info['file']} is {size} bytes, its header and the manifest say {expected}"
        )
    return np.load(path, mmap_mode="r", allow_pickle=False)


# ----------------------------------------------------------------------------------------------------------
# Reading


@dataclass
class Store:
    """An opened store. Arrays are read-only memmaps; tables are held in memory (they are small).

    Attributes:
      path: the store directory.
      manifest: the parsed manifest.json.
      observations: one row per observation, OBSERVATION_SCHEMA.
      species: one row per species, SPECIES_SCHEMA, ordered by species_index.
      vision: `(N_vision, T, H, W, D)` memmap, or None when the store has no vision embeddings.
      language: `(N_language, L)` float32 memmap, or None when the store has no language embeddings
        (an observation-only store has neither).
    """

    path: Path
    manifest: dict
    observations: pa.Table
    species: pa.Table
    vision: np.ndarray | None
    language: np.ndarray | None
    _columns: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _row_of_id: dict[str, int] | None = field(default=None, repr=False)

    @property
    def num_observations(self) -> int:
        return self.observations.num_rows

    @property
    def num_species(self) -> int:
        return self.species.num_rows

    @property
    def vision_shape(self) -> tuple[int, ...] | None:
        """`(T, H, W, D)` of one vision embedding, or None."""
        return None if self.vision is None else tuple(self.vision.shape[1:])

    @property
    def language_dim(self) -> int | None:
        return None if self.language is None else int(self.language.shape[1])

    @property
    def has_vision(self) -> bool:
        return self.vision is not None and self.vision.shape[0] > 0

    @property
    def observation_only(self) -> bool:
        """Whether the store holds no embeddings at all (place, date and species only)."""
        return self.vision is None and self.language is None

    def column(self, name: str) -> np.ndarray:
        """One observation column as numpy (cached); nullable numbers come back as float64 with NaN."""
        if name not in self._columns:
            if name not in self.observations.column_names:
                raise KeyError(f"store {self.path} has no observation column {name!r}")
            col = self.observations.column(name)
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                values = np.asarray(col.to_pylist(), dtype=object)
            elif col.null_count:
                values = col.to_numpy(zero_copy_only=False).astype(np.float64)
            else:
                values = col.to_numpy()
            self._columns[name] = values
        return self._columns[name]

    @property
    def observation_ids(self) -> np.ndarray:
        return self.column("observation_id")

    @property
    def species_names(self) -> list[str]:
        """Latin names ordered by species_index."""
        return self.species.column("taxon_name").to_pylist()

    def rows_of(self, observation_ids: Iterable[str], *, allow_missing: bool = False) -> np.ndarray:
        """Observation table rows of the given ids, `(N,)` int64.

        Unknown ids raise StoreError naming them (count and the first few), or map to -1 with allow_missing.
        """
        if self._row_of_id is None:
            self._row_of_id = {oid: i for i, oid in enumerate(self.observation_ids)}
        ids = list(observation_ids)
        rows = np.fromiter((self._row_of_id.get(str(i), -1) for i in ids), dtype=np.int64, count=len(ids))
        if not allow_missing and (rows < 0).any():
            missing = [ids[i] for i in np.flatnonzero(rows < 0)]
            shown = ", ".join(map(repr, missing[:5]))
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise StoreError(f"{len(missing)} observation id(s) not in store {self.path}: {shown}{more}")
        return rows


def _read_table(root: Path, name: str, schema: pa.Schema) -> pa.Table:
    path = store_file(root, name)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise StoreError(f"store {root}: cannot read {name}: {e}") from None
    got = table.schema.remove_metadata()
    if name == OBSERVATIONS_FILE:  # the required columns, then any optional ones in their order
        schema = observation_schema(got.names)
    if got != schema:
        raise StoreError(f"store {root}: {name} does not have the store's columns and types")
    return table


def reference_problem(store: Store) -> str:
    """The first table row that points outside the arrays or the species table ("" when none): a cheap
    pass over three integer columns, so that a reader never indexes past an array."""
    n_vision = 0 if store.vision is None else store.vision.shape[0]
    # Without language.npy every language_row is -1 (nothing to point at); with it, every row has one.
    language_low, n_language = (-1, 0) if store.language is None else (0, store.language.shape[0])
    for column, low, high, what in (
        ("vision_row", -1, n_vision, VISION_FILE),
        ("language_row", language_low, n_language, LANGUAGE_FILE),
        ("species_index", 0, store.num_species, SPECIES_FILE),
    ):
        values = store.column(column)
        bad = (values < low) | (values >= high)
        if bad.any():
            return (
                f"{OBSERVATIONS_FILE}: {int(bad.sum())} {column} value(s) outside [{low}, {high}) of {what}"
            )
    return ""


def open_store(path: str | os.PathLike) -> Store:
    """Opens a complete store: reads the manifest and the tables, memory-maps the arrays.

    Raises StoreError (one line) for a missing, incomplete or inconsistent store.
    """
    path = Path(path)
    manifest = read_manifest(path)
    if not manifest.get("complete", False):
        raise StoreError(
            f"store {path} is incomplete (an interrupted conversion?): rerun the same convert command "
            "to resume it"
        )
    observations = _read_table(path, OBSERVATIONS_FILE, OBSERVATION_SCHEMA)
    species = _read_table(path, SPECIES_FILE, SPECIES_SCHEMA)
    arrays = {name: open_array(path, info) for name, info in manifest["arrays"].items()}
    counts = manifest["counts"]
    for what, got, expected in (
        (OBSERVATIONS_FILE, observations.num_rows, counts["observations"]),
        (SPECIES_FILE, species.num_rows, counts["species"]),
        (LANGUAGE_FILE, arrays["language"].shape[0] if "language" in arrays else 0, counts["language_rows"]),
        (VISION_FILE, arrays["vision"].shape[0] if "vision" in arrays else 0, counts["vision_rows"]),
    ):
        if got != expected:
            raise StoreError(f"store {path}: {what} has {got} rows, the manifest says {expected}")
    store = Store(
        path=path,
        manifest=manifest,
        observations=observations,
        species=species,
        vision=arrays.get("vision"),
        language=arrays.get("language"),
    )
    problem = reference_problem(store)
    if problem:
        raise StoreError(f"store {path}: {problem}")
    return store
