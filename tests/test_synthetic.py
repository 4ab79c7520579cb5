import sqlite3

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import small_dataset

from deepearth_jax.data import sources, synthetic, synthetic_layouts
from deepearth_jax.errors import StoreError


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = small_dataset(seed=5), small_dataset(seed=5), small_dataset(seed=6)
    np.testing.assert_array_equal(a.gbif_id, b.gbif_id)
    np.testing.assert_array_equal(a.vision_row(3), b.vision_row(3))
    np.testing.assert_array_equal(a.language_vectors, b.language_vectors)
    assert not np.array_equal(a.vision_row(3), c.vision_row(3))
    assert not np.array_equal(a.gbif_id, c.gbif_id)


def test_realistic_structure():
    ds = synthetic.SyntheticDataset(
        synthetic.SyntheticConfig(
            observations=4000, species=40, vision_shape=(8, 2, 2, 16), language_dim=8, seed=1
        )
    )
    box = synthetic.FLORIDA_BOX
    assert (ds.latitude >= box["south"]).all() and (ds.latitude <= box["north"]).all()
    assert (ds.longitude >= box["west"]).all() and (ds.longitude <= box["east"]).all()
    years = np.bincount(ds.year - 2010, minlength=16)
    assert ds.year.min() == 2010 and ds.year.max() == 2025
    assert years[-4:].sum() > 3 * years[:4].sum()  # growing over time
    counts = np.sort(np.bincount(ds.species_index, minlength=40))[::-1]
    assert counts.min() >= 1 and counts[:4].sum() > 0.25 * counts.sum()  # long-tailed
    assert len(np.unique(ds.gbif_id)) == 4000
    row = ds.vision_row(0)
    t_spread = np.abs(row - row.mean(0)).mean()
    token_spread = np.abs(row - row.mean((1, 2), keepdims=True)).mean()
    assert t_spread < 0.1 * token_spread  # the 8 time steps are near-duplicates
    assert ds.source_split[ds.year == 2025].tolist() == ["temporal_test"] * int((ds.year == 2025).sum())


def _fit_ridge(x, y, classes, lam=1.0):
    mu, sd = x.mean(0), x.std(0) + 1e-6
    a = np.c_[(x - mu) / sd, np.ones(len(x))]
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ np.eye(classes)[y])
    return lambda z: np.argmax(np.c_[(z - mu) / sd, np.ones(len(z))] @ w, 1)


def _accuracy(x, y, test, classes):
    return float((_fit_ridge(x[~test], y[~test], classes)(x[test]) == y[test]).mean())


@pytest.fixture(scope="module")
def probe_data():
    ds = synthetic.SyntheticDataset(
        synthetic.SyntheticConfig(
            observations=3000, species=20, vision_shape=(2, 2, 2, 32), language_dim=8, seed=0
        )
    )
    pooled = np.stack([ds.vision_row(i).mean((0, 1, 2)) for i in range(ds.num_observations)])
    return ds, pooled


def test_mean_pool_probe_is_learnable_not_trivial(probe_data):
    ds, x = probe_data
    y = ds.species_index
    rng = np.random.default_rng(0)
    accuracy = np.mean([_accuracy(x, y, rng.random(len(y)) < 0.2, 20) for _ in range(3)])
    majority = np.bincount(y).max() / len(y)
    assert majority + 0.25 < accuracy < 0.95, (accuracy, majority)


def test_held_out_sites_are_harder_than_a_random_split(probe_data):
    ds, x = probe_data
    y = ds.species_index
    rng = np.random.default_rng(1)
    sites = np.unique(ds.site)
    site_acc, random_acc = [], []
    for _ in range(5):
        held = np.isin(ds.site, rng.choice(sites, len(sites) // 5, replace=False))
        site_acc.append(_accuracy(x, y, held, 20))
        random_acc.append(_accuracy(x, y, rng.permutation(held), 20))  # same test size, random rows
    assert np.mean(site_acc) < np.mean(random_acc) - 0.05, (site_acc, random_acc)


def test_held_out_year_is_harder_on_the_same_rows(probe_data):
    ds, x = probe_data
    y = ds.species_index
    last = np.flatnonzero(ds.year == 2025)
    test = np.zeros(len(y), bool)
    test[last[::2]] = True  # half of 2025 is the test set for both models
    seen_year = _fit_ridge(x[~test], y[~test], 20)(x[test])
    without_year = ds.year < 2025
    held_year = _fit_ridge(x[without_year], y[without_year], 20)(x[test])
    assert (held_year == y[test]).mean() < (seen_year == y[test]).mean()


def test_hf_layout_files(tmp_path):
    ds = small_dataset(observations=50, seed=3)
    out = synthetic_layouts.write_hf(ds, tmp_path / "hf")
    files = sorted((out / "vision_embeddings").iterdir())
    assert len(files) >= 3 and files[0].name == "embeddings_000000.parquet"
    index = pq.read_table(out / "vision_index.parquet")
    assert index.column_names == ["gbif_id", "file_idx", "row_idx"]
    assert len(set(index["gbif_id"].to_pylist())) == int(ds.has_vision.sum())
    table = pq.read_table(files[1])
    assert table["original_shape"][0].as_py() == "[2, 2, 3, 8]"
    assert table.schema.field("embedding").type.value_type == "float"
    first = index.filter(pq.read_table(out / "vision_index.parquet")["file_idx"].to_numpy() == 1)
    np.testing.assert_array_equal(
        np.asarray(table["embedding"][0].as_py(), np.float32),
        ds.vision_row(int(np.flatnonzero(ds.gbif_id == first["gbif_id"][0].as_py())[0])).reshape(-1),
    )
    obs = pq.read_table(out / "observations.parquet")
    assert obs.num_rows == 50 and obs["has_vision"].to_pylist() == ds.has_vision.tolist()
    assert sources.original_shape_text((8, 24, 24, 1408)) == "[4608, 1408]"
    with pytest.raises(StoreError, match="not an empty directory"):
        synthetic_layouts.write_hf(ds, out)


def test_dashboard_layout_files(tmp_path):
    ds = small_dataset(observations=30, seed=4)
    out = synthetic_layouts.write_dashboard(ds, tmp_path / "dash")
    row_values = int(np.prod(ds.config.vision_shape))
    rows = np.fromfile(out / "embeddings.mmap", np.float32).reshape(-1, row_values)
    assert len(rows) == int(ds.has_vision.sum())
    db = sqlite3.connect(out / "embeddings_index.db")
    entries = db.execute("SELECT gbif_id, file_offset, taxon_name FROM embedding_index").fetchall()
    db.close()
    assert len(entries) == len(rows)
    for gbif, offset, name in entries[:5]:
        i = int(np.flatnonzero(ds.gbif_id == gbif)[0])
        np.testing.assert_array_equal(rows[offset // (row_values * 4)], ds.vision_row(i).reshape(-1))
        assert name == ds.taxon_names[ds.species_index[i]]
