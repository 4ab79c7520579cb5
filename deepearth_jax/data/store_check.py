"""Checking a store: chunked array checksums, `verify` (re-read everything) and the `info` report.

Checksums are computed by the writer when a store is finished and recomputed by `verify_store` on request;
`open_store` checks only the cheap facts (see the store module).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deepearth_jax.data.store import (
    CHECKSUM_CHUNK_BYTES,
    OBSERVATION_SCHEMA,
    Store,
    StoreError,
    npy_header_bytes,
    open_array,
    open_store,
    read_manifest,
    store_file,
)
from deepearth_jax.io import file_sha256, format_bytes


def rows_per_chunk(row_bytes: int) -> int:
    """How many rows of `row_bytes` each are hashed together (at least one)."""
    return max(1, CHECKSUM_CHUNK_BYTES // max(1, row_bytes))


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
    known: dict[int, str] | None = None,
) -> tuple[dict, int]:
    """Chunked checksums of a .npy file: `({header_sha256, rows_per_chunk, chunk_sha256}, non_finite_count)`.

    Rows are hashed in chunks of about CHECKSUM_CHUNK_BYTES, on `workers` threads (hashlib releases the GIL).
    `progress(nbytes)` is called as chunks finish. `known` gives digests of chunks already hashed by the
    writer as it wrote them (chunk index -> sha256); only the others are read (not with check_finite).
    """
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    header_bytes = npy_header_bytes(path)
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
    if known and not check_finite:
        for i in range(len(starts)):
            digests[i] = known.get(i, "")
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
            if not digests[i]
        }
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            digests[i], bad = future.result()
            non_finite += bad
            if progress is not None:
                progress((min(n, starts[i] + per_chunk) - starts[i]) * row_bytes)
    return {"header_sha256": header_sha, "rows_per_chunk": per_chunk, "chunk_sha256": digests}, non_finite


def verify_store(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> list[str]:
    """Re-reads everything in a store; returns the problems found (empty when the store is sound).

    Checks what `open_store` checks (the manifest's fields, files inside the store, shapes, sizes, row
    counts and references), and on top: every file's and array chunk's checksum, the finiteness of every
    embedding value, and that no two observations share a vision row or an id. `progress(nbytes)` is called
    as array bytes are read.
    """
    path = Path(path)
    try:
        manifest = read_manifest(path)
    except StoreError as e:
        return [str(e)]
    if not manifest.get("complete", False):
        return [f"store {path} is incomplete: its conversion never finished"]
    problems: list[str] = []
    for name, expected in manifest["files"].items():
        try:
            if file_sha256(store_file(path, name)) != expected:
                problems.append(f"{name}: checksum mismatch (the file changed after the store was written)")
        except StoreError as e:
            problems.append(str(e))
    for info in manifest["arrays"].values():
        try:
            array = open_array(path, info)
        except StoreError as e:
            problems.append(str(e))
            continue
        problems.extend(_check_array(path / info["file"], info, array.shape[0], progress))
    if problems:
        return problems
    try:
        store = open_store(path)
    except StoreError as e:
        return [str(e)]
    return _check_references(store)


def _check_array(
    file_path: Path, info: dict, num_rows: int, progress: Callable[[int], None] | None
) -> list[str]:
    """Checksums and finiteness of one array against its manifest entry."""
    problems = []
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
                last = min(num_rows, (i + 1) * per_chunk) - 1
                problems.append(
                    f"{info['file']}: checksum mismatch in rows {i * per_chunk}..{last} (chunk {i})"
                )
    if non_finite:
        problems.append(f"{info['file']}: {non_finite} non-finite value(s) (NaN or Inf)")
    return problems


def _check_references(store: Store) -> list[str]:
    """What open_store leaves to verify in the tables: shared vision rows and repeated ids."""
    problems = []
    vision_rows = store.column("vision_row")
    used = vision_rows[vision_rows >= 0]
    if len(np.unique(used)) != len(used):
        problems.append("observations.parquet: several observations share one vision_row")
    ids = store.observation_ids
    if len(set(ids.tolist())) != len(ids):
        problems.append("observations.parquet: duplicate observation ids")
    return problems


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
    if store.observation_only:
        lines.append("embeddings none: an observation-only store (place, date, species); geo modes only")
    optional = [c for c in store.observations.column_names if c not in OBSERVATION_SCHEMA.names]
    if optional:
        lines.append(f"columns    also {', '.join(optional)}")
    total = 0
    arrays = () if store.observation_only else (("vision", store.vision), ("language", store.language))
    for name, array in arrays:
        if array is None:
            lines.append(f"{name:<10} none")
            continue
        nbytes = int(array.nbytes)
        total += nbytes
        lines.append(f"{name:<10} {array.shape} {array.dtype}  {format_bytes(nbytes)}")
    if not store.observation_only:
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
