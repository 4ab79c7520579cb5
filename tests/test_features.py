"""The pooled-feature cache: equals on-the-fly pooling, has provenance, is reused, is rebuilt when stale."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import test_seed

from deepearth_jax.data import features
from deepearth_jax.data import store as store_lib
from deepearth_jax.data.synthetic import make_synthetic_store


@pytest.fixture
def store(tmp_path):
    seed = test_seed()
    return make_synthetic_store(
        tmp_path / f"s{seed}",
        observations=60,
        species=6,
        vision_shape=(2, 3, 3, 8),
        language_dim=8,
        seed=seed,
    )


def _on_the_fly(vision: np.ndarray) -> np.ndarray:
    return vision.astype(np.float32).mean(axis=(1, 2, 3))


@pytest.mark.parametrize("batch_rows", [None, 1, 7])
def test_pooled_cache_equals_on_the_fly_pooling(store, batch_rows):
    pooled = features.pooled_vision(store, batch_rows=batch_rows)  # 7 leaves a short last chunk
    assert pooled.shape == (store.vision.shape[0], 8) and pooled.dtype == np.float32
    np.testing.assert_allclose(pooled, _on_the_fly(store.vision), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_jax", [True, False])
def test_both_reductions_equal_on_the_fly_pooling(store, use_jax):
    out = np.full((store.vision.shape[0], 8), np.nan, np.float32)
    features.compute_pooled(store.vision, out, batch_rows=4, use_jax=use_jax)
    np.testing.assert_allclose(out, _on_the_fly(store.vision), rtol=1e-5, atol=1e-6)


def test_cache_is_recorded_with_provenance_and_reused(store, monkeypatch):
    first = np.array(features.pooled_vision(store))
    entry = store_lib.read_manifest(store.path)["features"]["vision_mean"]
    assert entry["file"] == "features/vision_mean.npy" and entry["shape"] == [store.vision.shape[0], 8]
    assert entry["derived_from"]["vision"] == store.manifest["arrays"]["vision"]["checksums"]
    assert entry["sha256"] == store_lib.file_sha256(store.path / entry["file"])
    assert store_lib.verify_store(store.path) == []  # the cache does not upset verify

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a fresh cache was rebuilt")

    monkeypatch.setattr(features, "compute_pooled", no_rebuild)
    again = features.pooled_vision(store_lib.open_store(store.path))
    np.testing.assert_array_equal(again, first)


def test_stale_cache_is_rebuilt_after_the_vision_changes(store):
    features.pooled_vision(store)
    # What a re-conversion would do: new vision values and their checksums in the manifest.
    vision = np.load(store.path / store_lib.VISION_FILE, mmap_mode="r+")
    vision[0] = np.random.default_rng(test_seed()).normal(size=vision.shape[1:]).astype(vision.dtype)
    vision.flush()
    del vision
    sums, _ = store_lib.array_checksums(store.path / store_lib.VISION_FILE)
    store_lib.update_manifest(store.path, lambda m: m["arrays"]["vision"].__setitem__("checksums", sums))
    reopened = store_lib.open_store(store.path)
    pooled = features.pooled_vision(reopened)
    np.testing.assert_allclose(pooled, _on_the_fly(reopened.vision), rtol=1e-5, atol=1e-6)
    assert store_lib.read_manifest(store.path)["features"]["vision_mean"]["derived_from"]["vision"] == sums


def test_damaged_cache_is_rebuilt(store):
    features.pooled_vision(store)
    path = store.path / features.VISION_MEAN_FILE
    cached = np.load(path, mmap_mode="r+")
    cached[3] = 1e6
    cached.flush()
    del cached
    pooled = features.pooled_vision(store_lib.open_store(store.path))
    np.testing.assert_allclose(pooled, _on_the_fly(store.vision), rtol=1e-5, atol=1e-6)


def test_read_only_store_pools_in_memory(store, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(features.tempfile, "mkstemp", refuse)
    pooled = features.pooled_vision(store)
    assert not isinstance(pooled, np.memmap)
    np.testing.assert_allclose(pooled, _on_the_fly(store.vision), rtol=1e-5, atol=1e-6)
    assert "vision_mean" not in store_lib.read_manifest(store.path).get("features", {})


@pytest.mark.parametrize("change", ["symlink out", "file elsewhere"])
def test_cache_outside_the_store_is_never_read(store, tmp_path, change):
    """The manifest or a symlink cannot make the cache read another file: it is rebuilt in the store."""
    import json

    pooled = np.asarray(features.pooled_vision(store))
    stranger = tmp_path / "stranger.npy"
    np.save(stranger, np.zeros_like(pooled))
    cache = store.path / features.VISION_MEAN_FILE
    manifest_path = store.path / store_lib.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["features"][features.VISION_MEAN]
    if change == "symlink out":
        cache.unlink()
        cache.symlink_to(stranger)
    else:
        entry["file"] = str(stranger)
        entry["sha256"] = store_lib.file_sha256(stranger)
        manifest_path.write_text(json.dumps(manifest))
    features._VERIFIED.clear()
    reopened = store_lib.open_store(store.path)
    again = features.pooled_vision(reopened)
    np.testing.assert_array_equal(np.asarray(again), pooled)
    assert not cache.is_symlink() and np.load(stranger).max() == 0
