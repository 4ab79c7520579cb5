"""Shared fixtures: tiny synthetic source datasets (HF and dashboard layouts) in tmp_path, and test seeds.

Every random input is drawn from `test_seed()`, which is fixed by default so that the suite gives the same
result every run. `DEEPEARTH_TEST_SEED=random python -m pytest` (or `=N`) explores other seeds; the seed is
printed in the header and beside every failure, and `DEEPEARTH_TEST_SEED=N` replays it.
"""

from __future__ import annotations

import os
import secrets
import zlib
from pathlib import Path

import pytest

from deepearth_jax.data import synthetic, synthetic_layouts


def _base_seed() -> int:
    text = os.environ.get("DEEPEARTH_TEST_SEED", "0").strip()
    if text == "random":
        return secrets.randbelow(1 << 30)
    try:
        return int(text)
    except ValueError:
        raise SystemExit(f"DEEPEARTH_TEST_SEED must be an integer or 'random', got {text!r}") from None


BASE_SEED = _base_seed()


def _session_compilation_cache() -> None:
    """JAX's persistent compilation cache, fresh for this test session: the many tiny runs compile the same
    programs again and again (a new jit per run), and the cache turns each repeat into a lookup. Removed at
    exit; never shared with another session, so no stale program is ever reused."""
    import atexit
    import shutil
    import tempfile

    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return
    directory = tempfile.mkdtemp(prefix="deepearth-tests-jax-cache-")
    atexit.register(shutil.rmtree, directory, True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


_session_compilation_cache()


def test_seed(salt: str = "") -> int:
    """A seed fixed by BASE_SEED, the running test's id and `salt`: different per test, equal every run."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    return (BASE_SEED * 1_000_003 + zlib.crc32(f"{current}|{salt}".encode())) % (1 << 30)


test_seed.__test__ = False  # a helper, not a test


# Optional packages (in no extra the README installs): the tests that need one skip with this reason, unless
# DEEPEARTH_TEST_REQUIRE names it (CI's run with PyTorch installed), where a missing package fails instead.
OPTIONAL_PACKAGES = {
    "torch": "PyTorch (the CPU build is enough: pip install torch --index-url https://download.pytorch.org/whl/cpu)"
}


def optional_import(name: str, needed_for: str):
    """The module `name`, or a skip of the calling test (or module) saying what needs it and how to add it."""
    required = {n.strip() for n in os.environ.get("DEEPEARTH_TEST_REQUIRE", "").split(",") if n.strip()}
    if name in required:
        import importlib

        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"{needed_for} needs {OPTIONAL_PACKAGES.get(name, name)}")


def pytest_report_header(config) -> str:
    return f"deepearth_jax test seed: DEEPEARTH_TEST_SEED={BASE_SEED}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        report.sections.append(("test seed", f"replay with DEEPEARTH_TEST_SEED={BASE_SEED}"))
    return report


def small_dataset(
    observations: int = 40,
    species: int = 5,
    vision_shape: tuple[int, int, int, int] = (2, 2, 3, 8),
    language_dim: int = 12,
    seed: int = 0,
    vision_fraction: float = 0.9,
) -> synthetic.SyntheticDataset:
    """A synthetic dataset of a few KB (vision rows of 96 values, language vectors of 12)."""
    return synthetic.SyntheticDataset(
        synthetic.SyntheticConfig(
            observations=observations,
            species=species,
            vision_shape=vision_shape,
            language_dim=language_dim,
            seed=seed,
            vision_fraction=vision_fraction,
        )
    )


def store_and_split(
    root: Path,
    *,
    observations: int = 600,
    species: int = 12,
    vision_shape: tuple[int, int, int, int] = (2, 3, 3, 8),
    language_dim: int = 16,
    seed: int = 3,
) -> tuple[Path, Path]:
    """`(store dir, split file)`: a tiny synthetic store in `root` and its default split (seed 0)."""
    from deepearth_jax.data import split as split_lib

    store = synthetic.make_synthetic_store(
        root / "store",
        observations=observations,
        species=species,
        vision_shape=vision_shape,
        language_dim=language_dim,
        seed=seed,
    )
    split_lib.write_split(split_lib.make_split(store, seed=0), root / "split.json")
    return root / "store", root / "split.json"


@pytest.fixture
def hf_source(tmp_path: Path) -> tuple[synthetic.SyntheticDataset, Path]:
    """(dataset, directory) of a tiny HF-layout dataset, fresh per test."""
    dataset = small_dataset(seed=test_seed())
    return dataset, synthetic_layouts.write_hf(dataset, tmp_path / "hf")


@pytest.fixture
def dashboard_source(tmp_path: Path) -> tuple[synthetic.SyntheticDataset, Path]:
    """(dataset, directory) of a tiny dashboard-layout dataset, fresh per test."""
    dataset = small_dataset(seed=test_seed())
    return dataset, synthetic_layouts.write_dashboard(dataset, tmp_path / "dash")
