"""The pooled-feature cache: equals on-the-fly pooling, has provenance, is reused, is rebuilt when stale."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from conftest import test_seed

from deepearth_jax.data import features, store_check
from deepearth_jax.data import store as store_lib
from deepearth_jax.data.synthetic import make_synthetic_store


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache dir of this test's own ($DEEPEARTH_CACHE)."""
    monkeypatch.setenv("DEEPEARTH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def store(tmp_path, cache):
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


def _listing(path) -> dict:
    """Every entry under `path`: relative name -> (mode, size, mtime ns, bytes of files)."""
    out = {}
    for entry in sorted(path.rglob("*")):
        st = entry.lstat()
        data = entry.read_bytes() if entry.is_file() and not entry.is_symlink() else None
        out[str(entry.relative_to(path))] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    st = path.stat()
    out["."] = (st.st_mode, st.st_mtime_ns)
    return out


def test_cache_lives_outside_the_store_with_provenance_and_is_reused(store, cache, monkeypatch):
    before = _listing(store.path)
    first = np.array(features.pooled_vision(store))
    assert _listing(store.path) == before  # the store is never written: not its manifest, no features/
    path = features.cache_path(store)
    assert path.parent.parent.parent == cache and path.is_file()
    entry = json.loads(path.with_suffix(".json").read_text())
    assert entry["shape"] == [store.vision.shape[0], 8] and entry["dtype"] == "float32"
    assert entry["derived_from"]["vision"] == store.manifest["arrays"]["vision"]["checksums"]
    assert entry["sha256"] == store_lib.file_sha256(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["vision_mean.json", "vision_mean.npy"]

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a fresh cache was rebuilt")

    monkeypatch.setattr(features, "compute_pooled", no_rebuild)
    again = features.pooled_vision(store_lib.open_store(store.path))
    np.testing.assert_array_equal(again, first)


def test_cache_files_get_the_umask_not_0600(store, cache):
    old = os.umask(0o022)
    try:
        path = features.cache_path(store)
        features.pooled_vision(store)
    finally:
        os.umask(old)
    for p in (path, path.with_suffix(".json")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755


def test_copies_of_a_store_share_one_cache(store, cache, tmp_path, monkeypatch):
    import shutil

    pooled = np.array(features.pooled_vision(store))
    copy = store_lib.open_store(shutil.copytree(store.path, tmp_path / "copy"))
    assert features.cache_path(copy) == features.cache_path(store)
    monkeypatch.setattr(features, "compute_pooled", lambda *a, **k: pytest.fail("rebuilt for a copy"))
    np.testing.assert_array_equal(features.pooled_vision(copy), pooled)


def _rewrite_vision(store):
    """What a re-conversion would do: new vision values and their checksums in the manifest."""
    vision = np.load(store.path / store_lib.VISION_FILE, mmap_mode="r+")
    vision[0] = np.random.default_rng(test_seed()).normal(size=vision.shape[1:]).astype(vision.dtype)
    vision.flush()
    del vision
    sums, _ = store_check.array_checksums(store.path / store_lib.VISION_FILE)
    store_lib.update_manifest(store.path, lambda m: m["arrays"]["vision"].__setitem__("checksums", sums))
    return store_lib.open_store(store.path), sums


def test_stale_cache_is_rebuilt_after_the_vision_changes(store, cache):
    old_path = features.cache_path(store)
    features.pooled_vision(store)
    reopened, sums = _rewrite_vision(store)
    pooled = features.pooled_vision(reopened)
    np.testing.assert_allclose(pooled, _on_the_fly(reopened.vision), rtol=1e-5, atol=1e-6)
    new_path = features.cache_path(reopened)
    assert new_path != old_path  # keyed by the store's identity
    assert json.loads(new_path.with_suffix(".json").read_text())["derived_from"]["vision"] == sums


@pytest.mark.parametrize("damage", ["values", "record", "no record"])
def test_damaged_cache_is_rebuilt(store, cache, damage):
    features.pooled_vision(store)
    path = features.cache_path(store)
    if damage == "values":
        cached = np.load(path, mmap_mode="r+")
        cached[3] = 1e6
        cached.flush()
        del cached
    elif damage == "record":
        path.with_suffix(".json").write_text("{not json")
    else:
        path.with_suffix(".json").unlink()
    pooled = features.pooled_vision(store_lib.open_store(store.path))
    np.testing.assert_allclose(pooled, _on_the_fly(store.vision), rtol=1e-5, atol=1e-6)
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == store_lib.file_sha256(path)


def test_unwritable_cache_dir_pools_in_memory(store, tmp_path, monkeypatch):
    blocker = tmp_path / "not a directory"
    blocker.write_text("")
    monkeypatch.setenv("DEEPEARTH_CACHE", str(blocker))
    pooled = features.pooled_vision(store)
    assert not isinstance(pooled, np.memmap)
    np.testing.assert_allclose(pooled, _on_the_fly(store.vision), rtol=1e-5, atol=1e-6)


def _legacy_cache(store):
    """The cache an older version wrote inside the store, recorded in its manifest."""
    pooled = _on_the_fly(store.vision)
    (store.path / store_lib.FEATURES_DIR).mkdir()
    path = store.path / features.LEGACY_FILE
    np.save(path, pooled)
    entry = {
        "file": features.LEGACY_FILE,
        "sha256": store_lib.file_sha256(path),
        "derived_from": {"vision": store.manifest["arrays"]["vision"]["checksums"]},
    }
    store_lib.update_manifest(
        store.path, lambda m: m.setdefault("features", {}).__setitem__("vision_mean", entry)
    )
    return store_lib.open_store(store.path), pooled


def test_an_older_versions_cache_in_the_store_is_read_not_written(store, cache, monkeypatch):
    reopened, pooled = _legacy_cache(store)
    before = _listing(store.path)
    monkeypatch.setattr(
        features, "compute_pooled", lambda *a, **k: pytest.fail("a fresh legacy cache rebuilt")
    )
    np.testing.assert_array_equal(features.pooled_vision(reopened), pooled)
    assert _listing(store.path) == before and not cache.exists()


@pytest.mark.parametrize("change", ["symlink out", "file elsewhere"])
def test_legacy_cache_outside_the_store_is_never_read(store, cache, tmp_path, change):
    """The manifest or a symlink cannot make the legacy entry read another file: the cache dir's is built."""
    reopened, pooled = _legacy_cache(store)
    stranger = tmp_path / "stranger.npy"
    np.save(stranger, np.zeros_like(pooled))
    legacy = store.path / features.LEGACY_FILE
    manifest_path = store.path / store_lib.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["features"][features.VISION_MEAN]
    if change == "symlink out":
        legacy.unlink()
        legacy.symlink_to(stranger)
    else:
        entry["file"] = str(stranger)
        entry["sha256"] = store_lib.file_sha256(stranger)
        manifest_path.write_text(json.dumps(manifest))
    features._VERIFIED.clear()
    again = features.pooled_vision(store_lib.open_store(store.path))
    np.testing.assert_allclose(np.asarray(again), pooled, rtol=1e-5, atol=1e-6)
    assert np.load(stranger).max() == 0 and features.cache_path(reopened).is_file()


def test_an_unreadable_legacy_cache_falls_back_to_the_cache_dir(store, cache, monkeypatch):
    """An older version's 0600 file owned by another user cannot be read: the cache dir's is used."""
    reopened, pooled = _legacy_cache(store)
    real = features.file_sha256

    def refuse_legacy(path, *args, **kwargs):
        if str(path).endswith(features.LEGACY_FILE):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(features, "file_sha256", refuse_legacy)
    features._VERIFIED.clear()
    again = features.pooled_vision(reopened)
    np.testing.assert_allclose(np.asarray(again), pooled, rtol=1e-5, atol=1e-6)
    assert features.cache_path(reopened).is_file()
