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
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepearth_jax import __version__
from deepearth_jax.io import file_sha256, write_json_atomic  # noqa: F401  (re-exported)

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


def _utc_now() -> str:
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


# ----------------------------------------------------------------------------------------------------------
# Checksums


def rows_per_chunk(row_bytes: int) -> int:
    """How many rows of `row_bytes` each are hashed together (at least one)."""
    return max(1, CHECKSUM_CHUNK_BYTES // max(1, row_bytes))


def _npy_header_bytes(path: Path) -> int:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        return f.tell()


def _hash_bytes(path: Path, offset: int, nbytes: int, dtype: np.dtype, check_finite: bool) -> tuple[str, int]:
    """Hashes `nbytes` of a file from `offset`; returns (sha256, number of non-finite values).

    Read with plain file reads, not through a memmap: mapped pages would stay in this process's resident
    set until the whole file is done, so hashing a 100 GB array would show as 100 GB of RSS.
    """
    buffer = np.empty(nbytes, np.uint8)
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        view = memoryview(buffer)
        got = 0
        while got < nbytes:
            n = f.readinto(view[got:])
            if not n:
                raise StoreError(f"{path} is shorter than its header says")
            got += n
    bad = 0
    if check_finite and np.issubdtype(dtype, np.floating):
        values = buffer.view(dtype)
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    return hashlib.sha256(buffer).hexdigest(), bad


def array_checksums(
    path: Path,
    *,
    check_finite: bool = False,
    progress: Callable[[int], None] | None = None,
    workers: int = 2,
) -> tuple[dict, int]:
    """Chunked checksums of a .npy file: `({header_sha256, rows_per_chunk, chunk_sha256}, non_finite_count)`.

    Rows are hashed in chunks of about CHECKSUM_CHUNK_BYTES, on `workers` threads (hashlib releases the GIL).
    `progress(nbytes)` is called as chunks finish.
    """
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    header_bytes = _npy_header_bytes(path)
    with open(path, "rb") as f:
        header_sha = hashlib.sha256(f.read(header_bytes)).hexdigest()
    n = array.shape[0] if array.ndim else 0
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize if array.ndim else 0
    per_chunk = rows_per_chunk(row_bytes)
    starts = list(range(0, n, per_chunk))
    digests: list[str] = [""] * len(starts)
    non_finite = 0
    dtype = array.dtype
    del array
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {
            pool.submit(
                _hash_bytes,
                path,
                header_bytes + s * row_bytes,
                (min(n, s + per_chunk) - s) * row_bytes,
                dtype,
                check_finite,
            ): i
            for i, s in enumerate(starts)
        }
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            digests[i], bad = future.result()
            non_finite += bad
            if progress is not None:
                progress((min(n, starts[i] + per_chunk) - starts[i]) * row_bytes)
    return {"header_sha256": header_sha, "rows_per_chunk": per_chunk, "chunk_sha256": digests}, non_finite


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
    """Opens a complete store: reads the manifest and the tables, memory-maps the arrays (milliseconds).

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


def verify_store(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> list[str]:
    """Re-reads everything in a store; returns the problems found (empty when the store is sound).

    Checks: the manifest, completeness, table checksums and row counts, array shapes and dtypes, every
    array chunk's checksum, finiteness of every embedding value, and row references from the tables into
    the arrays. `progress(nbytes)` is called as array bytes are read.
    """
    path = Path(path)
    try:
        manifest = read_manifest(path)
    except StoreError as e:
        return [str(e)]
    problems: list[str] = []
    if not manifest.get("complete", False):
        problems.append(f"store {path} is incomplete: its conversion never finished")
    for name, expected in manifest.get("files", {}).items():
        file_path = path / name
        if not file_path.is_file():
            problems.append(f"{name} is missing")
        elif file_sha256(file_path) != expected:
            problems.append(f"{name}: checksum mismatch (the file changed after the store was written)")
    for info in manifest.get("arrays", {}).values():
        file_path = path / info["file"]
        if not file_path.is_file():
            problems.append(f"{info['file']} is missing")
            continue
        try:
            array = np.load(file_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            problems.append(f"{info['file']}: unreadable header ({e})")
            continue
        if array.shape != tuple(info["shape"]) or str(array.dtype) != info["dtype"]:
            problems.append(
                f"{info['file']}: shape/dtype {array.shape} {array.dtype}, manifest says "
                f"{tuple(info['shape'])} {info['dtype']}"
            )
            continue
        sums, non_finite = array_checksums(file_path, check_finite=True, progress=progress)
        if sums["header_sha256"] != info["checksums"]["header_sha256"]:
            problems.append(f"{info['file']}: header checksum mismatch")
        expected_chunks = info["checksums"]["chunk_sha256"]
        per_chunk = info["checksums"]["rows_per_chunk"]
        if sums["rows_per_chunk"] != per_chunk or len(sums["chunk_sha256"]) != len(expected_chunks):
            problems.append(f"{info['file']}: checksum layout differs from the manifest")
        else:
            for i, (got, want) in enumerate(zip(sums["chunk_sha256"], expected_chunks, strict=True)):
                if got != want:
                    last = min(array.shape[0], (i + 1) * per_chunk) - 1
                    problems.append(
                        f"{info['file']}: checksum mismatch in rows {i * per_chunk}..{last} (chunk {i})"
                    )
        if non_finite:
            problems.append(f"{info['file']}: {non_finite} non-finite value(s) (NaN or Inf)")
    if problems:
        return problems
    try:
        store = open_store(path)
    except StoreError as e:
        return [str(e)]
    problems.extend(_check_references(store))
    return problems


def _check_references(store: Store) -> list[str]:
    problems = []
    vision_rows = store.column("vision_row")
    n_vision = 0 if store.vision is None else store.vision.shape[0]
    bad = (vision_rows < -1) | (vision_rows >= n_vision)
    if bad.any():
        problems.append(
            f"observations.parquet: {int(bad.sum())} vision_row value(s) outside [-1, {n_vision})"
        )
    used = vision_rows[vision_rows >= 0]
    if len(np.unique(used)) != len(used):
        problems.append("observations.parquet: several observations share one vision_row")
    language_rows = store.column("language_row")
    n_language = 0 if store.language is None else store.language.shape[0]
    bad = (language_rows < 0) | (language_rows >= n_language)
    if bad.any():
        problems.append(
            f"observations.parquet: {int(bad.sum())} language_row value(s) outside [0, {n_language})"
        )
    species_index = store.column("species_index")
    if ((species_index < 0) | (species_index >= store.num_species)).any():
        problems.append("observations.parquet: species_index outside the species table")
    ids = store.observation_ids
    if len(set(ids.tolist())) != len(ids):
        problems.append("observations.parquet: duplicate observation ids")
    return problems


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def store_info(store: Store, top_species: int = 10) -> str:
    """A human-readable summary: counts, shapes, dtypes, bytes, and the head of the species histogram."""
    m = store.manifest
    lines = [
        f"store      {store.path}",
        f"format     {m['format']} v{m['version']}, written {m.get('created', '?')}",
    ]
    prov = m.get("provenance", {})
    if prov:
        lines.append(f"source     {prov.get('source_layout', '?')}: {prov.get('source', '?')}")
    years = store.column("year")
    lines.append(
        f"counts     {store.num_observations} observations, {store.num_species} species, "
        f"years {int(years.min()) if len(years) else '-'}..{int(years.max()) if len(years) else '-'}"
    )
    total = 0
    for name, array in (("vision", store.vision), ("language", store.language)):
        if array is None:
            lines.append(f"{name:<10} none")
            continue
        nbytes = int(array.nbytes)
        total += nbytes
        lines.append(f"{name:<10} {array.shape} {array.dtype}  {format_bytes(nbytes)}")
    lines.append(f"bytes      {format_bytes(total)} of embeddings")
    n_vision = int((store.column("vision_row") >= 0).sum())
    lines.append(f"with vision {n_vision} of {store.num_observations} observations")
    skipped = m.get("skipped", [])
    if skipped:
        lines.append(f"skipped    {len(skipped)} source row(s) at conversion (see manifest.json 'skipped')")
    counts = store.species.column("num_observations").to_numpy()
    names = store.species_names
    order = np.argsort(-counts, kind="stable")[:top_species]
    lines.append(f"species    top {len(order)} by observations:")
    width = max((len(names[i]) for i in order), default=0)
    peak = max(1, int(counts[order[0]])) if len(order) else 1
    for i in order:
        bar = "#" * max(1, round(30 * int(counts[i]) / peak))
        lines.append(f"  {names[i]:<{width}}  {int(counts[i]):>7}  {bar}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Writing


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
      num_language_rows, language_dim: shape of language.npy.
      provenance: what the store was made from (recorded in the manifest).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        num_vision_rows: int,
        vision_shape: Sequence[int] | None,
        vision_dtype: str = "float16",
        num_language_rows: int,
        language_dim: int,
        provenance: dict,
        resume: bool = False,
    ):
        self.path = Path(path)
        if vision_dtype not in ("float16", "float32"):
            raise StoreError(f"vision dtype must be float16 or float32, got {vision_dtype!r}")
        self.provenance = dict(provenance)
        shapes = {
            "vision": ((int(num_vision_rows), *map(int, vision_shape or ())), vision_dtype, VISION_FILE),
            "language": ((int(num_language_rows), int(language_dim)), "float32", LANGUAGE_FILE),
        }
        if vision_shape is None:
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
            "created": _utc_now(),
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
    def language(self) -> np.memmap:
        """The writable `(N_language, L)` float32 memmap."""
        return self.arrays["language"]

    @property
    def progress(self) -> dict:
        """Free-form resume state kept in the incomplete manifest (e.g. which source files are done)."""
        return self.manifest.setdefault("progress", {})

    def save_progress(self) -> None:
        """Flushes the arrays, then records `progress` (so recorded progress never runs ahead of the data).

        The arrays are then mapped afresh, so that the pages written so far leave this process's resident set
        (a long conversion's RSS stays bounded by what it writes between two calls).
        """
        self._flush_and_remap()
        write_json_atomic(self.path / MANIFEST_FILE, self.manifest)

    def _flush_and_remap(self) -> None:
        for name in list(self.arrays):
            array = self.arrays.pop(name)
            array.flush()
            file_name = array.filename
            del array
            self.arrays[name] = np.load(file_name, mmap_mode="r+", allow_pickle=False)

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
        header_bytes = _npy_header_bytes(file_name)
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

    def finalize(
        self,
        observations: pa.Table,
        species: pa.Table,
        *,
        skipped: list[dict] | None = None,
        extra: dict | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict:
        """Writes the tables, checksums everything and marks the store complete; returns the manifest."""
        observations = observations.select(OBSERVATION_SCHEMA.names).cast(OBSERVATION_SCHEMA)
        species = species.select(SPECIES_SCHEMA.names).cast(SPECIES_SCHEMA)
        for array in self.arrays.values():
            array.flush()
        pq.write_table(observations, self.path / OBSERVATIONS_FILE)
        pq.write_table(species, self.path / SPECIES_FILE)
        arrays_meta = {}
        for name, array in self.arrays.items():
            file_name = VISION_FILE if name == "vision" else LANGUAGE_FILE
            sums, _ = array_checksums(self.path / file_name, progress=progress)
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
            "finished": _utc_now(),
            "writer": f"deepearth_jax {__version__}",
            "provenance": self.provenance,
            "counts": {
                "observations": observations.num_rows,
                "species": species.num_rows,
                "vision_rows": arrays_meta.get("vision", {"shape": [0]})["shape"][0],
                "language_rows": arrays_meta["language"]["shape"][0],
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
    """Builds species.parquet from per-species ids/names/language rows and per-observation indices."""
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
