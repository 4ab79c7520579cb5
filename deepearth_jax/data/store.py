"""The store: one self-describing, memory-mapped directory per dataset.

Layout of a store directory:

    manifest.json          format name and version, counts, shapes, dtypes, provenance, checksums
    observations.parquet   one row per OBSERVATION_ID (see OBSERVATION_SCHEMA)
    species.parquet        one row per species (see SPECIES_SCHEMA)
    vision.npy             (N_vision, T, H, W, D) float16 (default) or float32, opened with mmap_mode="r"
    language.npy           (N_language, L) float32, one row per distinct language vector
    features/              derived caches (pooled vision features), recorded in the manifest

A store is complete only once `manifest.json` says `"complete": true`; the writer sets it last, with an
atomic rename, so an interrupted conversion never looks like a finished one. Nothing is ever unpickled.

This module holds the format (file names, schemas, the manifest) and the reader (`open_store`);
`store_writer` writes stores, `store_check` checksums and verifies them and prints the `info` report.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepearth_jax.io import file_sha256, format_bytes, write_json_atomic  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

FORMAT_NAME = "deepearth-store"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
OBSERVATIONS_FILE = "observations.parquet"
SPECIES_FILE = "species.parquet"
VISION_FILE = "vision.npy"
LANGUAGE_FILE = "language.npy"
FEATURES_DIR = "features"

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


class StoreError(Exception):
    """A store that cannot be opened or written as asked; the message is one line for the user."""


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
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{manifest_path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise StoreError(f"{manifest_path} is not a {FORMAT_NAME} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise StoreError(
            f"{path} has store format version {manifest.get('version')}, this deepearth_jax reads "
            f"version {FORMAT_VERSION}"
        )
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
      language: `(N_language, L)` float32 memmap, or None when the store has no language embeddings.
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

        Unknown ids raise KeyError naming them (count and the first few), or map to -1 with allow_missing.
        """
        if self._row_of_id is None:
            self._row_of_id = {oid: i for i, oid in enumerate(self.observation_ids)}
        ids = list(observation_ids)
        rows = np.fromiter((self._row_of_id.get(str(i), -1) for i in ids), dtype=np.int64, count=len(ids))
        if not allow_missing and (rows < 0).any():
            missing = [ids[i] for i in np.flatnonzero(rows < 0)]
            shown = ", ".join(map(repr, missing[:5]))
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise KeyError(f"{len(missing)} observation id(s) not in store {self.path}: {shown}{more}")
        return rows


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
    try:
        observations = pq.read_table(path / OBSERVATIONS_FILE)
        species = pq.read_table(path / SPECIES_FILE)
    except (OSError, pa.ArrowInvalid) as e:
        raise StoreError(f"store {path}: cannot read its tables: {e}") from None
    arrays: dict[str, np.ndarray | None] = {}
    for name, info in manifest.get("arrays", {}).items():
        try:
            arrays[name] = np.load(path / info["file"], mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise StoreError(f"store {path}: cannot open {info['file']}: {e}") from None
        expected = tuple(info["shape"])
        if arrays[name].shape != expected or str(arrays[name].dtype) != info["dtype"]:
            raise StoreError(
                f"store {path}: {info['file']} is {arrays[name].shape} {arrays[name].dtype}, the manifest "
                f"says {expected} {info['dtype']}"
            )
    store = Store(
        path=path,
        manifest=manifest,
        observations=observations,
        species=species,
        vision=arrays.get("vision"),
        language=arrays.get("language"),
    )
    if store.num_observations != manifest["counts"]["observations"]:
        raise StoreError(
            f"store {path}: observations.parquet has {store.num_observations} rows, the manifest says "
            f"{manifest['counts']['observations']}"
        )
    return store


# Names that moved to the writer and checker modules, still importable from here (loaded on first use, so
# that this module imports neither of them).
_MOVED = {
    "StoreWriter": "store_writer",
    "species_table": "store_writer",
    "observation_table": "store_writer",
    "array_checksums": "store_check",
    "rows_per_chunk": "store_check",
    "verify_store": "store_check",
    "store_info": "store_check",
}


def __getattr__(name: str):
    if name == "_utc_now":
        return utc_now
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"deepearth_jax.data.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
