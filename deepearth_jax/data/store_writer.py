"""Writing a store: `StoreWriter` (arrays preallocated as .npy memmaps, rows written in place, then
`finalize`), and the builders of its two tables.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepearth_jax import __version__
from deepearth_jax.data import ids as ids_lib
from deepearth_jax.data.store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LANGUAGE_FILE,
    MANIFEST_FILE,
    OBSERVATION_SCHEMA,
    OBSERVATIONS_FILE,
    OPTIONAL_OBSERVATION_FIELDS,
    SPECIES_FILE,
    SPECIES_SCHEMA,
    VISION_FILE,
    StoreError,
    npy_header_bytes,
    observation_schema,
    read_manifest,
    utc_now,
)
from deepearth_jax.data.store_check import array_checksums
from deepearth_jax.io import file_sha256, write_json_atomic


class StoreWriteError(StoreError):
    """The file system refused a write (full disk, read-only, not a directory): one line naming the store."""


def write_error(path: Path, error: OSError) -> StoreWriteError:
    """The one-line StoreWriteError for an OSError met while writing the store at `path`."""
    where = f" ({error.filename})" if error.filename and str(error.filename) != str(path) else ""
    return StoreWriteError(f"cannot write store {path}: {error.strerror or error}{where}")


def _writes(method: Callable) -> Callable:
    """Turns the OSErrors of a StoreWriter method into StoreWriteError."""

    @functools.wraps(method)
    def wrapper(self: StoreWriter, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as e:
            raise write_error(self.path, e) from None

    return wrapper


class StoreWriter:
    """Creates a store: preallocates the arrays as .npy memmaps, rows are written in place, then `finalize`.

    The manifest says `"complete": false` until finalize writes the tables, checksums every file and
    atomically replaces it with the complete manifest. `resume=True` reopens an incomplete store with the same
    array shapes (for resumable conversion) instead of refusing it.

    Args:
      path: the store directory (created; must not hold a complete store).
      num_vision_rows: rows of vision.npy (0 for a store without vision).
      vision_shape: `(T, H, W, D)` of one vision embedding.
      vision_dtype: float16 or float32.
      num_language_rows, language_dim: shape of language.npy; `language_dim=None` (with `vision_shape=None`)
        writes an observation-only store: no arrays at all, only the tables (place, date, species).
      provenance: what the store was made from (recorded in the manifest).
    """

    @_writes
    def __init__(
        self,
        path: str | os.PathLike,
        *,
        num_vision_rows: int,
        vision_shape: Sequence[int] | None,
        vision_dtype: str = "float16",
        num_language_rows: int,
        language_dim: int | None,
        provenance: dict,
        resume: bool = False,
    ):
        self.path = Path(path)
        if vision_dtype not in ("float16", "float32"):
            raise StoreError(f"vision dtype must be float16 or float32, got {vision_dtype!r}")
        self.provenance = dict(provenance)
        shapes = {
            "vision": ((int(num_vision_rows), *map(int, vision_shape or ())), vision_dtype, VISION_FILE),
            "language": ((int(num_language_rows), int(language_dim or 0)), "float32", LANGUAGE_FILE),
        }
        if language_dim is None:
            if vision_shape is not None or num_language_rows:
                raise StoreError("a store without language embeddings holds no vision embeddings either")
            shapes = {}
        elif vision_shape is None:
            shapes.pop("vision")
        existing = None
        if (self.path / MANIFEST_FILE).exists():
            existing = read_manifest(self.path)
            if existing.get("complete"):
                raise StoreError(
                    f"{self.path} already holds a complete store; choose another --out or delete it"
                )
            if not resume:
                raise StoreError(f"{self.path} holds an incomplete store; resume it or delete it")
        elif self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path} exists and is not a directory; choose another --out")
        elif self.path.exists() and any(self.path.iterdir()):
            raise StoreError(f"{self.path} exists and is not empty; choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self.arrays: dict[str, np.memmap] = {}
        reopened = existing is not None and existing.get("arrays_planned") == {
            k: {"shape": list(s), "dtype": d} for k, (s, d, _) in shapes.items()
        }
        for name, (shape, dtype, file_name) in shapes.items():
            file_path = self.path / file_name
            if reopened and file_path.exists():
                self.arrays[name] = np.load(file_path, mmap_mode="r+", allow_pickle=False)
            else:
                self.arrays[name] = np.lib.format.open_memmap(file_path, mode="w+", dtype=dtype, shape=shape)
        self.manifest: dict = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "complete": False,
            "created": utc_now(),
            "writer": f"deepearth_jax {__version__}",
            "provenance": self.provenance,
            "arrays_planned": {k: {"shape": list(s), "dtype": d} for k, (s, d, _) in shapes.items()},
        }
        if reopened:
            self.manifest["progress"] = existing.get("progress", {})
            self.manifest["created"] = existing.get("created", self.manifest["created"])
        write_json_atomic(self.path / MANIFEST_FILE, self.manifest)

    @property
    def vision(self) -> np.memmap | None:
        """The writable `(N_vision, T, H, W, D)` memmap."""
        return self.arrays.get("vision")

    @property
    def language(self) -> np.memmap | None:
        """The writable `(N_language, L)` float32 memmap (None in an observation-only store)."""
        return self.arrays.get("language")

    @property
    def progress(self) -> dict:
        """Free-form resume state kept in the incomplete manifest (e.g. which source files are done)."""
        return self.manifest.setdefault("progress", {})

    @_writes
    def save_progress(self) -> None:
        """Flushes the arrays, then records `progress` (so recorded progress never runs ahead of the data).

        The arrays are then mapped afresh, so that the pages written so far leave this process's resident set
        (a long conversion's RSS stays bounded by what it writes between two calls).
        """
        self._flush_and_remap()
        write_json_atomic(self.path / MANIFEST_FILE, self.manifest)

    @_writes
    def record_progress(self, progress: dict) -> None:
        """Writes the manifest with `progress` as its recorded progress, touching no array (the caller has
        made the rows it describes durable itself). Safe on another thread while the caller writes rows."""
        write_json_atomic(self.path / MANIFEST_FILE, {**self.manifest, "progress": progress})

    def _flush_and_remap(self) -> None:
        for name in list(self.arrays):
            array = self.arrays.pop(name)
            array.flush()
            file_name = array.filename
            del array
            self.arrays[name] = np.load(file_name, mmap_mode="r+", allow_pickle=False)

    @_writes
    def truncate_vision(self, num_rows: int) -> None:
        """Shrinks vision.npy to its first `num_rows` rows, in place (no data moves).

        For conversions that preallocate an upper bound of rows and write them in order: rows never written
        (skipped as bad) are cut off the end. The .npy header keeps its length (padded with spaces), and
        the planned shape in the manifest follows, so a resumed conversion reopens the shrunk file.
        """
        if "vision" not in self.arrays:
            raise StoreError(f"{self.path} has no vision array to truncate")
        array = self.arrays.pop("vision")
        array.flush()
        shape, dtype, file_name = (num_rows, *array.shape[1:]), array.dtype, Path(array.filename)
        if not 0 <= num_rows <= array.shape[0]:
            raise StoreError(f"cannot truncate vision.npy of {array.shape[0]} rows to {num_rows}")
        del array
        header_bytes = npy_header_bytes(file_name)
        with open(file_name, "rb") as f:
            version = np.lib.format.read_magic(f)
        prefix_bytes = 10 if version == (1, 0) else 12
        text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        padding = header_bytes - prefix_bytes - len(text) - 1
        if padding < 0:
            raise StoreError(f"cannot rewrite the header of {file_name}")
        with open(file_name, "r+b") as f:
            f.seek(prefix_bytes)
            f.write((text + " " * padding + "\n").encode("latin1"))
            f.truncate(header_bytes + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
            f.flush()
            os.fsync(f.fileno())
        self.arrays["vision"] = np.load(file_name, mmap_mode="r+", allow_pickle=False)
        self.manifest["arrays_planned"]["vision"]["shape"] = list(shape)
        write_json_atomic(self.path / MANIFEST_FILE, self.manifest)

    @_writes
    def finalize(
        self,
        observations: pa.Table,
        species: pa.Table,
        *,
        skipped: list[dict] | None = None,
        extra: dict | None = None,
        progress: Callable[[int], None] | None = None,
        known_chunks: dict[str, dict[int, str]] | None = None,
    ) -> dict:
        """Writes the tables, checksums everything and marks the store complete; returns the manifest.

        `known_chunks` maps an array name to the chunk digests its writer computed while writing (see
        `array_checksums`); those chunks are not read again. The optional columns of
        OPTIONAL_OBSERVATION_FIELDS in `observations` are kept; other extra columns are dropped.
        """
        schema = observation_schema(observations.column_names)
        observations = observations.select(schema.names).cast(schema)
        species = species.select(SPECIES_SCHEMA.names).cast(SPECIES_SCHEMA)
        for array in self.arrays.values():
            array.flush()
        pq.write_table(observations, self.path / OBSERVATIONS_FILE)
        pq.write_table(species, self.path / SPECIES_FILE)
        arrays_meta = {}
        for name, array in self.arrays.items():
            file_name = VISION_FILE if name == "vision" else LANGUAGE_FILE
            known = (known_chunks or {}).get(name)
            sums, _ = array_checksums(self.path / file_name, progress=progress, known=known)
            arrays_meta[name] = {
                "file": file_name,
                "shape": list(array.shape),
                "dtype": str(array.dtype),
                "checksums": sums,
            }
        self.arrays.clear()
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "complete": True,
            "created": self.manifest["created"],
            "finished": utc_now(),
            "writer": f"deepearth_jax {__version__}",
            "provenance": self.provenance,
            "counts": {
                "observations": observations.num_rows,
                "species": species.num_rows,
                "vision_rows": arrays_meta.get("vision", {"shape": [0]})["shape"][0],
                "language_rows": arrays_meta.get("language", {"shape": [0]})["shape"][0],
                "observations_with_vision": int(
                    np.count_nonzero(observations.column("vision_row").to_numpy() >= 0)
                ),
            },
            "arrays": arrays_meta,
            "files": {
                OBSERVATIONS_FILE: file_sha256(self.path / OBSERVATIONS_FILE),
                SPECIES_FILE: file_sha256(self.path / SPECIES_FILE),
            },
            "skipped": list(skipped or []),
            "features": {},
        }
        if not arrays_meta:
            manifest["observation_only"] = True
        manifest.update(extra or {})
        write_json_atomic(self.path / MANIFEST_FILE, manifest)
        self.manifest = manifest
        return manifest


def species_table(
    taxon_ids: Sequence[str],
    taxon_names: Sequence[str],
    language_rows: Sequence[int],
    species_index: np.ndarray,
    vision_rows: np.ndarray,
) -> pa.Table:
    """Builds species.parquet from per-species ids/names/language rows (-1: none) and per-observation
    indices."""
    n = len(taxon_ids)
    counts = np.bincount(species_index, minlength=n)
    vision_counts = np.bincount(species_index[vision_rows >= 0], minlength=n)
    return pa.table(
        {
            "species_index": pa.array(np.arange(n, dtype=np.int32)),
            "taxon_id": pa.array(list(taxon_ids), pa.string()),
            "taxon_name": pa.array(list(taxon_names), pa.string()),
            "language_row": pa.array(np.asarray(language_rows, np.int64)),
            "num_observations": pa.array(counts.astype(np.int64)),
            "num_vision": pa.array(vision_counts.astype(np.int64)),
        },
        schema=SPECIES_SCHEMA,
    )


def observation_table(
    *,
    gbif_id: np.ndarray,
    taxon_id: Sequence[str | None],
    taxon_name: Sequence[str],
    species_index: np.ndarray,
    latitude: np.ndarray,
    longitude: np.ndarray,
    year: np.ndarray,
    month: np.ndarray,
    day: np.ndarray,
    clock: dict[str, np.ndarray | None],
    vision_row: np.ndarray,
    source_split: Sequence[str | None],
    image_url: Sequence[str | None],
    image_index: np.ndarray | int = 1,
    has_language: bool = True,
    optional: dict[str, pa.Array] | None = None,
) -> pa.Table:
    """Builds observations.parquet's table (OBSERVATION_SCHEMA), one row per observation.

    `clock` holds `hour`, `minute` and `second` as float arrays with NaN where unknown (stored as null), or
    None for a column the source lacks (all null). The language row of an observation is its species index,
    or -1 with `has_language=False` (an observation-only store). `image_index` (default 1) is the image of the
    GBIF record each row is; `optional` adds columns of OPTIONAL_OBSERVATION_FIELDS by name.
    """
    n = len(gbif_id)
    image_index = np.broadcast_to(np.asarray(image_index, np.int64), (n,))

    def nullable(values: np.ndarray | None) -> pa.Array:
        if values is None:
            return pa.nulls(n, pa.int32())
        known = np.isfinite(values)
        return pa.array(np.where(known, values, 0).astype(np.int32), pa.int32(), mask=~known)

    species_index = np.asarray(species_index, np.int32)
    table = pa.table(
        {
            "observation_id": pa.array(
                ids_lib.make_observation_ids(gbif_id, image_index).tolist(), pa.string()
            ),
            "gbif_id": pa.array(np.asarray(gbif_id, np.int64)),
            "image_index": pa.array(image_index.astype(np.int32)),
            "taxon_id": pa.array(list(taxon_id), pa.string()),
            "taxon_name": pa.array(list(taxon_name), pa.string()),
            "species_index": pa.array(species_index),
            "latitude": pa.array(np.asarray(latitude, np.float64)),
            "longitude": pa.array(np.asarray(longitude, np.float64)),
            "elevation": pa.nulls(n, pa.float64()),
            "year": pa.array(np.asarray(year).astype(np.int32)),
            "month": pa.array(np.asarray(month).astype(np.int32)),
            "day": pa.array(np.asarray(day).astype(np.int32)),
            **{name: nullable(clock.get(name)) for name in ("hour", "minute", "second")},
            "vision_row": pa.array(np.asarray(vision_row, np.int64)),
            "language_row": pa.array(
                species_index.astype(np.int64) if has_language else np.full(n, -1, np.int64)
            ),
            "source_split": pa.array(list(source_split), pa.string()),
            "image_url": pa.array(list(image_url), pa.string()),
        },
        schema=OBSERVATION_SCHEMA,
    )
    fields = {f.name: f for f in OPTIONAL_OBSERVATION_FIELDS}
    for name, values in (optional or {}).items():
        if name not in fields:
            raise StoreError(f"{name!r} is not an optional observation column ({', '.join(fields)})")
        table = table.append_column(fields[name], pa.array(values, fields[name].type))
    return table.select(observation_schema(table.column_names).names)
