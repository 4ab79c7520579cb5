"""Synthetic datasets written in the published source layouts (DATA.md §1-2), so that `convert` is
exercised on exactly what users bring: the Hugging Face layout (`write_hf`) and the dashboard's
(`write_dashboard`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepearth_jax.data.sources import (
    DASHBOARD_INDEX_FILE,
    DASHBOARD_MMAP_FILE,
    HF_OBSERVATIONS_FILE,
    HF_VISION_DIR,
    HF_VISION_INDEX_FILE,
    original_shape_text,
)
from deepearth_jax.data.synthetic import SyntheticDataset
from deepearth_jax.errors import StoreError
from deepearth_jax.io import progress_bar

# Rows per vision_embeddings file: about as many as the published files hold (~45), but at least three
# files even for tiny data, so that resuming by file is exercised.
_HF_ROWS_PER_FILE = 50
_HF_MIN_FILES = 3
_ROW_GROUP_BYTES = 64 << 20


def _prepare_out(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StoreError(f"{out} exists and is not an empty directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _hf_rows_per_file(n_vision: int) -> int:
    return max(1, min(_HF_ROWS_PER_FILE, -(-n_vision // _HF_MIN_FILES)))


def _write_hf_observations(dataset: SyntheticDataset, path: Path, batch_rows: int = 1024) -> None:
    """observations.parquet as published: metadata, image urls, and the species' language vector per row."""
    cfg = dataset.config
    meta = dataset.metadata_columns()
    urls = dataset.image_urls()
    # 1..3 images per record; the first url is the one the store keeps.
    num_images = 1 + (dataset.gbif_id // 97) % 3
    schema = pa.schema(
        [
            ("gbif_id", pa.int64()),
            ("taxon_id", pa.string()),
            ("taxon_name", pa.string()),
            ("latitude", pa.float64()),
            ("longitude", pa.float64()),
            ("year", pa.int64()),
            ("month", pa.int64()),
            ("day", pa.int64()),
            ("hour", pa.int64()),
            ("minute", pa.int64()),
            ("second", pa.int64()),
            ("image_urls", pa.list_(pa.string())),
            ("num_images", pa.int64()),
            ("has_vision", pa.bool_()),
            ("language_embedding", pa.list_(pa.float32())),
            ("split", pa.string()),
        ]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, cfg.observations, batch_rows):
            rows = np.arange(start, min(cfg.observations, start + batch_rows))
            url_lists = [
                [urls[i]] + [urls[i].replace("original", f"extra_{k}") for k in range(1, int(num_images[i]))]
                for i in rows
            ]
            language = dataset.language_vectors[dataset.species_index[rows]]
            offsets = np.arange(len(rows) + 1, dtype=np.int32) * cfg.language_dim
            columns = {
                "gbif_id": pa.array(meta["gbif_id"][rows]),
                "taxon_id": pa.array(meta["taxon_id"][rows].tolist(), pa.string()),
                "taxon_name": pa.array(meta["taxon_name"][rows].tolist(), pa.string()),
                "latitude": pa.array(meta["latitude"][rows]),
                "longitude": pa.array(meta["longitude"][rows]),
                "year": pa.array(meta["year"][rows].astype(np.int64)),
                "month": pa.array(meta["month"][rows].astype(np.int64)),
                "day": pa.array(meta["day"][rows].astype(np.int64)),
                **{
                    name: pa.array(meta[name][rows].astype(np.int64), pa.int64(), mask=meta[name][rows] < 0)
                    for name in ("hour", "minute", "second")
                },
                "image_urls": pa.array(url_lists, pa.list_(pa.string())),
                "num_images": pa.array(num_images[rows].astype(np.int64)),
                "has_vision": pa.array(meta["has_vision"][rows]),
                "language_embedding": pa.ListArray.from_arrays(
                    pa.array(offsets), pa.array(language.reshape(-1), pa.float32())
                ),
                "split": pa.array(meta["split"][rows].tolist(), pa.string()),
            }
            writer.write_table(pa.table(columns, schema=schema))


def write_hf(dataset: SyntheticDataset, out: str | Path, *, progress: bool = False) -> Path:
    """Writes `dataset` in the published Hugging Face layout (DATA.md §1); returns the directory.

    Vision embeddings are float32 flat lists, about 50 rows per `vision_embeddings/embeddings_{:06d}.parquet`
    (at least three files), written a row group at a time so that RAM stays bounded at any size.
    `vision_index.parquet` lists `gbif_id, file_idx, row_idx`, with a few duplicate rows, as the published
    index has (the duplicates repeat the first entry's location).
    """
    cfg = dataset.config
    out = _prepare_out(out)
    _write_hf_observations(dataset, out / HF_OBSERVATIONS_FILE)

    vision_obs = np.flatnonzero(dataset.has_vision)
    per_file = _hf_rows_per_file(len(vision_obs))
    file_idx = np.arange(len(vision_obs)) // per_file
    row_idx = np.arange(len(vision_obs)) % per_file
    # About 2% of the index rows are repeated, like the published index (7,949 rows for 7,113 embeddings).
    rng = np.random.default_rng([cfg.seed, 3])
    repeat = np.ones(len(vision_obs), np.int64)
    repeat[rng.random(len(vision_obs)) < 0.02] = 2
    if len(vision_obs) > 1 and (repeat == 1).all():
        repeat[len(vision_obs) // 2] = 2  # at least one, so every dataset exercises the duplicate rule
    index = pa.table(
        {
            "gbif_id": pa.array(np.repeat(dataset.gbif_id[vision_obs], repeat)),
            "file_idx": pa.array(np.repeat(file_idx, repeat).astype(np.int64)),
            "row_idx": pa.array(np.repeat(row_idx, repeat).astype(np.int64)),
        }
    )
    pq.write_table(index, out / HF_VISION_INDEX_FILE)

    size = int(np.prod(cfg.vision_shape))
    row_bytes = size * 4
    group_rows = max(1, _ROW_GROUP_BYTES // row_bytes)
    schema = pa.schema(
        [("gbif_id", pa.int64()), ("embedding", pa.list_(pa.float32())), ("original_shape", pa.string())]
    )
    shape_text = original_shape_text(cfg.vision_shape)
    (out / HF_VISION_DIR).mkdir()
    bar = progress_bar(len(vision_obs), "synth hf", enabled=progress)
    for k in range(int(file_idx.max()) + 1 if len(vision_obs) else 0):
        rows = vision_obs[file_idx == k]
        # No dictionary for the embeddings: random floats make it slow and 30% larger than plain.
        path = out / HF_VISION_DIR / f"embeddings_{k:06d}.parquet"
        with pq.ParquetWriter(path, schema, use_dictionary=["original_shape"]) as writer:
            for start in range(0, len(rows), group_rows):
                group = rows[start : start + group_rows]
                flat = np.empty(len(group) * size, np.float32)
                for j, i in enumerate(group):
                    flat[j * size : (j + 1) * size] = dataset.vision_row(int(i)).reshape(-1)
                offsets = pa.array(np.arange(len(group) + 1, dtype=np.int64) * size, pa.int64())
                table = pa.table(
                    {
                        "gbif_id": pa.array(dataset.gbif_id[group]),
                        "embedding": pa.ListArray.from_arrays(offsets, pa.array(flat)).cast(
                            pa.list_(pa.float32())
                        ),
                        "original_shape": pa.array([shape_text] * len(group), pa.string()),
                    },
                    schema=schema,
                )
                writer.write_table(table, row_group_size=len(group))
                del flat, table
                bar.update(len(group))
    bar.close()
    return out


def write_dashboard(dataset: SyntheticDataset, out: str | Path, *, progress: bool = False) -> Path:
    """Writes `dataset` as the original dashboard left it (DATA.md §2); returns the directory.

    `observations.parquet` (the HF one) beside `embeddings.mmap` (raw float32 rows, no header, in a shuffled
    order, as the original appended them file by file) and `embeddings_index.db` (SQLite `embedding_index`,
    `file_offset` in bytes). Written one row at a time.
    """
    cfg = dataset.config
    out = _prepare_out(out)
    _write_hf_observations(dataset, out / HF_OBSERVATIONS_FILE)
    vision_obs = np.flatnonzero(dataset.has_vision)
    order = vision_obs[np.random.default_rng([cfg.seed, 4]).permutation(len(vision_obs))]
    row_bytes = int(np.prod(cfg.vision_shape)) * 4
    per_file = _hf_rows_per_file(len(vision_obs))
    meta = dataset.metadata_columns()
    bar = progress_bar(len(order), "synth dashboard", enabled=progress)
    records = []
    with open(out / DASHBOARD_MMAP_FILE, "wb") as f:
        for k, i in enumerate(order):
            f.write(dataset.vision_row(int(i)).tobytes())
            records.append(
                (
                    int(meta["gbif_id"][i]),
                    k * row_bytes,
                    str(meta["taxon_id"][i]),
                    str(meta["taxon_name"][i]),
                    float(meta["latitude"][i]),
                    float(meta["longitude"][i]),
                    int(meta["year"][i]),
                    int(meta["month"][i]),
                    int(meta["day"][i]),
                    None if meta["hour"][i] < 0 else int(meta["hour"][i]),
                    1,
                    str(meta["split"][i]),
                    int(np.searchsorted(vision_obs, i)) // per_file,
                )
            )
            bar.update(1)
    bar.close()
    db = sqlite3.connect(out / DASHBOARD_INDEX_FILE)
    try:
        db.execute(
            "CREATE TABLE embedding_index (gbif_id INTEGER PRIMARY KEY, file_offset INTEGER, taxon_id TEXT, "
            "taxon_name TEXT, latitude REAL, longitude REAL, year INTEGER, month INTEGER, day INTEGER, "
            "hour INTEGER, has_vision INTEGER, split TEXT, file_idx INTEGER)"
        )
        db.executemany(f"INSERT INTO embedding_index VALUES ({', '.join('?' * 13)})", records)
        db.commit()
    finally:
        db.close()
    return out
