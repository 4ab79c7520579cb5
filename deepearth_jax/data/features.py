"""The pooled-feature cache: the mean of every vision embedding over `(T, H, W)`, computed once per store.

The mean-pool vision classifier only ever sees `mean(vision[i], axis=(T, H, W))`, `(D,)`: 1408 numbers out
of 6.5 million. One streaming pass computes them for every vision row with a jitted JAX mean on the
accelerator when there is one (numpy's on a CPU-only host: faster there) and keeps them as
`(N_vision, D)` float32, so training reads 5.6 KB per example, not 13 MB.

The cache lives OUTSIDE the store, which training and evaluation never write (it may be shared and
read-only): `<cache dir>/pooled/<key>/vision_mean.npy` beside `vision_mean.json` (its provenance: the vision
checksums it was derived from, the file's own SHA-256, the reduction, when, by which version, from which
store path). The cache dir is `$DEEPEARTH_CACHE` or `~/.cache/deepearth_jax` (io.default_cache_dir). `key` is
the store's identity: a digest of its manifest's vision checksums and the reduction, so a re-converted store
(new vision) gets a new key, and two copies of one store share one cache. It is reused across runs while
the checksums match and the file's own digest holds (hashed once per process), rebuilt otherwise. Files are
created with the user's umask (no 0600) and renamed into place, the record after the array, so an
interrupted build is never mistaken for a fresh one.

A store written by an older version may hold `features/vision_mean.npy` recorded in its manifest: it is
read (never written) while it is fresh.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import logging
import os
import secrets
from pathlib import Path

import numpy as np

from deepearth_jax import __version__
from deepearth_jax.data import store as store_lib
from deepearth_jax.errors import StoreError
from deepearth_jax.io import default_cache_dir, file_sha256, progress_bar

log = logging.getLogger(__name__)

VISION_MEAN = "vision_mean"
LEGACY_FILE = f"{store_lib.FEATURES_DIR}/{VISION_MEAN}.npy"  # inside the store: older versions only
CACHE_VERSION = 1
REDUCTION = "float32 mean over (T, H, W) of each vision embedding"
# Rows per streamed chunk: about this many bytes of vision at a time.
_CHUNK_BYTES = 64 << 20


def _vision_checksums(store: store_lib.Store) -> dict:
    try:
        return store.manifest["arrays"]["vision"]["checksums"]
    except KeyError:
        raise StoreError(f"store {store.path} has no vision checksums in its manifest") from None


# Cache files already hashed by this process: every batch reader (one per evaluation) asks again.
_VERIFIED: dict[tuple[str, str], tuple[int, int]] = {}


def _stamp(path: Path) -> tuple[int, int] | None:
    """(mtime in ns, size) of a file, or None when it is missing."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def cache_key(store: store_lib.Store) -> str:
    """16 hex digits naming the store's pooled cache: its vision checksums and the reduction."""
    identity = {"vision": _vision_checksums(store), "reduction": REDUCTION, "cache_version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(store: store_lib.Store, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the pooled cache of `store` lives: `<cache dir>/pooled/<key>/vision_mean.npy`."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "pooled" / cache_key(store) / f"{VISION_MEAN}.npy"


def _intact(store: store_lib.Store, path: Path, entry: dict) -> np.ndarray | None:
    """The `(N_vision, D)` memmap at `path` when `entry` derives it from the current vision, intact."""
    if path.is_symlink() or not path.is_file():
        return None
    if entry.get("derived_from", {}).get("vision") != _vision_checksums(store):
        log.info("pooled vision cache %s is stale (vision changed): rebuilding", path)
        return None
    key, stamp = (str(path.absolute()), str(entry.get("sha256"))), _stamp(path)
    if stamp is None or (_VERIFIED.get(key) != stamp and file_sha256(path) != entry.get("sha256")):
        log.info("pooled vision cache %s is missing or damaged: rebuilding", path)
        return None
    _VERIFIED[key] = stamp  # hashed once per process while the file stays untouched
    cached = np.load(path, mmap_mode="r", allow_pickle=False)
    expected = (store.vision.shape[0], store.vision.shape[-1])
    if cached.shape != expected or cached.dtype != np.float32:
        log.info("pooled vision cache %s has shape %s %s: rebuilding", path, cached.shape, cached.dtype)
        return None
    return cached


def _in_store(store: store_lib.Store) -> np.ndarray | None:
    """An older version's cache inside the store (recorded in its manifest), read only, when fresh."""
    entry = store.manifest.get("features", {}).get(VISION_MEAN)
    if not entry or entry.get("file") != LEGACY_FILE:
        return None
    try:
        return _intact(store, store.path / LEGACY_FILE, entry)
    except OSError as e:  # e.g. the 0600 file an older version left, owned by another user
        log.info("cannot read the pooled vision cache in store %s (%s): using the cache dir", store.path, e)
        return None


def _in_cache(store: store_lib.Store, path: Path) -> np.ndarray | None:
    try:
        entry = json.loads(path.with_suffix(".json").read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict):
        return None
    try:
        return _intact(store, path, entry)
    except OSError as e:
        log.info("cannot read the pooled vision cache %s (%s): rebuilding", path, e)
        return None


def _temporary(path: Path) -> Path:
    """A fresh name beside `path` (created by the caller with the umask's mode, unlike mkstemp's 0600)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{path.suffix}")


def _write_record(path: Path, entry: dict) -> None:
    tmp = _temporary(path)
    try:
        with open(tmp, "x") as f:  # mode 0666 less the umask
            json.dump(entry, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@functools.cache
def _mean_fn(use_jax: bool | None = None):
    """`(R, T, H, W, D) -> (R, D)` float32 mean: jitted JAX on an accelerator, numpy on the CPU backend.

    `use_jax` forces one or the other (None: decide by the default backend).

    On the CPU numpy's float32-accumulating mean is the faster of the two (XLA converts float16 element by
    element); both accumulate in float32, not float16.
    """
    import jax
    import jax.numpy as jnp

    if use_jax is None:
        use_jax = jax.default_backend() != "cpu"
    if not use_jax:
        return lambda x: np.mean(x, axis=tuple(range(1, x.ndim - 1)), dtype=np.float32)
    return jax.jit(lambda x: jnp.mean(x.astype(jnp.float32), axis=tuple(range(1, x.ndim - 1))))


def compute_pooled(
    vision: np.ndarray, out: np.ndarray, batch_rows: int, progress: bool = False, use_jax: bool | None = None
) -> None:
    """Writes `mean(vision[i], axis=(T, H, W))` as float32 into `out[i]` for every row, in one pass.

    Chunks of `batch_rows` rows are read on a background thread (the memmap copy releases the GIL) while
    the previous chunk is reduced (a jitted JAX mean on an accelerator; every chunk has the same shape, so
    it compiles once).
    """
    n = vision.shape[0]
    if n == 0:
        return
    batch_rows = max(1, min(int(batch_rows), n))
    mean = _mean_fn(use_jax)
    # Zeroed, so the unused tail of a short last chunk is finite (it is reduced and dropped).
    buffers = [np.zeros((batch_rows, *vision.shape[1:]), vision.dtype) for _ in range(2)]

    def read(start: int, buffer: np.ndarray) -> int:
        stop = min(n, start + batch_rows)
        np.copyto(buffer[: stop - start], vision[start:stop])
        return stop - start

    bar = progress_bar(n, "pooling vision", enabled=progress)
    starts = list(range(0, n, batch_rows))
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pool-read") as pool:
        pending = pool.submit(read, starts[0], buffers[0])
        for i, start in enumerate(starts):
            count = pending.result()
            if i + 1 < len(starts):
                pending = pool.submit(read, starts[i + 1], buffers[(i + 1) % 2])
            out[start : start + count] = np.asarray(mean(buffers[i % 2]))[:count]
            bar.update(count)
    bar.close()


def _build(store: store_lib.Store, path: Path, rows: int, progress: bool) -> np.ndarray:
    """Pools into `path` (a temporary name, then renamed) and records it beside; returns the memmap."""
    vision = store.vision
    shape = (vision.shape[0], vision.shape[-1])
    tmp = _temporary(path)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        compute_pooled(vision, out, rows, progress)
        out.flush()
        del out
        digest = file_sha256(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    entry = {
        "file": path.name,
        "shape": list(shape),
        "dtype": "float32",
        "sha256": digest,
        "reduction": REDUCTION,
        "derived_from": {"store": str(store.path), "vision": _vision_checksums(store)},
        "created": store_lib.utc_now(),
        "writer": f"deepearth_jax {__version__}",
    }
    _write_record(path.with_suffix(".json"), entry)
    log.info("pooled vision cache written: %s %s float32 (for store %s)", path, shape, store.path)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def pooled_vision(
    store: store_lib.Store,
    *,
    batch_rows: int | None = None,
    progress: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """The `(N_vision, D)` float32 mean over `(T, H, W)` of every vision row, from the cache or built now.

    Reuses the cache (module docstring; `cache_dir` default io.default_cache_dir()) while it derives from
    the current vision array and its checksum holds; otherwise computes it in one streaming pass
    (`batch_rows` rows at a time, default about 64 MB) and records it. Never writes into the store. Returns
    a read-only memmap (an in-memory array, with a warning, when the cache dir is not writable). Raises
    StoreError for a store without vision.
    """
    if not store.has_vision:
        raise StoreError(f"store {store.path} has no vision embeddings to pool")
    path = cache_path(store, cache_dir)
    for cached in (_in_store(store), _in_cache(store, path)):
        if cached is not None:
            return cached
    vision = store.vision
    row_bytes = int(np.prod(vision.shape[1:])) * vision.itemsize
    rows = batch_rows if batch_rows is not None else max(1, _CHUNK_BYTES // row_bytes)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # 0777 less the umask
        return _build(store, path, rows, progress)
    except OSError as e:
        log.warning("cannot write the pooled vision cache in %s (%s): pooling in memory", path.parent, e)
    result = np.empty((vision.shape[0], vision.shape[-1]), np.float32)
    compute_pooled(vision, result, rows, progress)
    return result
