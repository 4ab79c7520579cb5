"""The pooled-feature cache: the mean of every vision embedding over `(T, H, W)`, computed once per store.

The mean-pool vision classifier only ever sees `mean(vision[i], axis=(T, H, W))`, `(D,)`: 1408 numbers out
of 6.5 million. One streaming pass computes them for every vision row with a jitted JAX mean on the
accelerator when there is one (numpy's on a CPU-only host: faster there) and stores
`features/vision_mean.npy`, `(N_vision, D)` float32, so training reads 5.6 KB per example, not 13 MB.

Provenance lives in the store manifest under `features.vision_mean`: the vision array's checksums it was
derived from, the file's own SHA-256, the reduction, when and by which version. The cache is reused while
both checksums still match and rebuilt otherwise (stale or damaged); the file is replaced atomically and
recorded in the manifest afterwards, so an interrupted build is never mistaken for a fresh one.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from deepearth_jax import __version__
from deepearth_jax.data import store as store_lib
from deepearth_jax.errors import StoreError
from deepearth_jax.io import file_sha256, progress_bar

log = logging.getLogger(__name__)

VISION_MEAN = "vision_mean"
VISION_MEAN_FILE = f"{store_lib.FEATURES_DIR}/{VISION_MEAN}.npy"
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


def _fresh_cache(store: store_lib.Store) -> np.ndarray | None:
    """The cached `(N_vision, D)` memmap when it is recorded, derived from the current vision and intact."""
    entry = store.manifest.get("features", {}).get(VISION_MEAN)
    if not entry:
        return None
    path = store.path / VISION_MEAN_FILE
    if entry.get("file") != VISION_MEAN_FILE or path.is_symlink() or not path.is_file():
        log.info("pooled vision cache of %s is not the regular file %s: rebuilding", store.path, path)
        return None
    expected = (store.vision.shape[0], store.vision.shape[-1])
    if entry.get("derived_from", {}).get("vision") != _vision_checksums(store):
        log.info("pooled vision cache %s is stale (vision changed): rebuilding", path)
        return None
    key, stamp = (str(path.absolute()), str(entry.get("sha256"))), _stamp(path)
    if stamp is None or (_VERIFIED.get(key) != stamp and file_sha256(path) != entry.get("sha256")):
        log.info("pooled vision cache %s is missing or damaged: rebuilding", path)
        return None
    _VERIFIED[key] = stamp  # hashed once per process while the file stays untouched
    cached = np.load(path, mmap_mode="r", allow_pickle=False)
    if cached.shape != expected or cached.dtype != np.float32:
        log.info("pooled vision cache %s has shape %s %s: rebuilding", path, cached.shape, cached.dtype)
        return None
    return cached


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


def pooled_vision(
    store: store_lib.Store, *, batch_rows: int | None = None, progress: bool = False
) -> np.ndarray:
    """The `(N_vision, D)` float32 mean over `(T, H, W)` of every vision row, from the cache or built now.

    Reuses `<store>/features/vision_mean.npy` when the manifest says it derives from the current vision
    array and its checksum holds; otherwise computes it in one streaming pass (`batch_rows` rows at a time,
    default about 64 MB) and records it. Returns a read-only memmap (an in-memory array when the store
    directory is not writable, with a warning). Raises StoreError for a store without vision.
    """
    if not store.has_vision:
        raise StoreError(f"store {store.path} has no vision embeddings to pool")
    cached = _fresh_cache(store)
    if cached is not None:
        return cached
    vision = store.vision
    row_bytes = int(np.prod(vision.shape[1:])) * vision.itemsize
    rows = batch_rows if batch_rows is not None else max(1, _CHUNK_BYTES // row_bytes)
    shape = (vision.shape[0], vision.shape[-1])
    features_dir = store.path / store_lib.FEATURES_DIR
    try:
        features_dir.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{VISION_MEAN}.", suffix=".npy", dir=features_dir)
        os.close(fd)
    except OSError as e:
        log.warning("cannot write the pooled vision cache in %s (%s): pooling in memory", features_dir, e)
        result = np.empty(shape, np.float32)
        compute_pooled(vision, result, rows, progress)
        return result
    final = store.path / VISION_MEAN_FILE
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        compute_pooled(vision, out, rows, progress)
        out.flush()
        del out
        digest = file_sha256(Path(tmp))
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    entry = {
        "file": VISION_MEAN_FILE,
        "shape": list(shape),
        "dtype": "float32",
        "sha256": digest,
        "reduction": REDUCTION,
        "derived_from": {"vision": _vision_checksums(store)},
        "created": store_lib.utc_now(),
        "writer": f"deepearth_jax {__version__}",
    }
    store.manifest = store_lib.update_manifest(
        store.path, lambda m: m.setdefault("features", {}).__setitem__(VISION_MEAN, entry)
    )
    log.info("pooled vision cache written: %s %s float32", final, shape)
    return np.load(final, mmap_mode="r", allow_pickle=False)
