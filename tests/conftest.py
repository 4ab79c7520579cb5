"""Shared fixtures: tiny synthetic source datasets (HF and dashboard layouts) in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepearth_jax.data import synthetic


def small_dataset(
    observations: int = 40,
    species: int = 5,
    vision_shape: tuple[int, int, int, int] = (2, 2, 3, 8),
    language_dim: int = 12,
    seed: int = 0,
) -> synthetic.SyntheticDataset:
    """A synthetic dataset of a few KB (vision rows of 96 values, language vectors of 12)."""
    return synthetic.SyntheticDataset(
        synthetic.SyntheticConfig(
            observations=observations,
            species=species,
            vision_shape=vision_shape,
            language_dim=language_dim,
            seed=seed,
        )
    )


@pytest.fixture
def hf_source(tmp_path: Path) -> tuple[synthetic.SyntheticDataset, Path]:
    """(dataset, directory) of a tiny HF-layout dataset, fresh per test."""
    dataset = small_dataset(seed=int(np.random.default_rng().integers(1 << 30)))
    return dataset, synthetic.write_hf(dataset, tmp_path / "hf")


@pytest.fixture
def dashboard_source(tmp_path: Path) -> tuple[synthetic.SyntheticDataset, Path]:
    """(dataset, directory) of a tiny dashboard-layout dataset, fresh per test."""
    dataset = small_dataset(seed=int(np.random.default_rng().integers(1 << 30)))
    return dataset, synthetic.write_dashboard(dataset, tmp_path / "dash")
