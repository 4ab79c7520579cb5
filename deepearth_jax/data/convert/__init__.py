"""The published layouts -> a store: `python -m deepearth_jax.data convert SOURCE --out STORE`.

SOURCE is recognised as
  * an occurrence table (a file: GBIF simple download / Darwin Core text, Parquet, a Darwin Core Archive zip;
    or a directory with meta.xml): an observation-only store of place, date and species, no embeddings
    (`occurrences` states its rules; the rest of this docstring is about the embedding layouts); or
  * the Hugging Face layout (DATA.md §1): `observations.parquet`, `vision_index.parquet`,
    `vision_embeddings/embeddings_{file_idx:06d}.parquet` (flat or nested float16/float32 lists); or
  * the dashboard layout (DATA.md §2): the same `observations.parquet` beside `embeddings.mmap` (raw float32
    rows, no header) and `embeddings_index.db` (SQLite `embedding_index`, `file_offset` in bytes).

How it runs:
  1. observations.parquet is read in batches: metadata, and one language vector per species (the most
     common vector among its rows; rows holding another one are bad).
  2. Every observation row is validated; with bad rows and no `--skip-bad` the command stops here, before
     anything is written.
  3. Vision rows are copied one source unit at a time (an embeddings file, or a chunk of ~256 MB of the
     mmap) straight into `vision.npy`, in source order. Reading, casting and writing overlap: a prefetch
     thread decodes the next batches of ~64 MB (a flat float32 embedding column straight from its Parquet
     pages, `pages.py`; anything else by pyarrow) while a pool of threads checks and casts this one in
     cache-sized pieces and writes the good rows with pwrite, and one thread hashes them (the checksum
     chunks) in row order. Once a unit's rows are durable (fsync, in the background while the next unit is
     copied) it is recorded in the incomplete manifest, so a rerun of the same command resumes after the
     last recorded unit and ends with the same bytes as an uninterrupted run. RAM holds a few batches,
     whatever the dataset's size.
  4. The tables are written, what was not hashed on the way is checksummed, and the manifest is marked
     complete (atomically).

Decisions:
  * vision_index.parquet may list a gbif_id several times: the first entry wins (as in the original); the
    number dropped is recorded in the manifest (`conversion.vision_index_duplicates_dropped`). Inside an
    embeddings file the first row of a gbif_id wins, later ones are counted (`embedding_duplicates_dropped`);
    `row_idx`, when present, is not needed and not used.
  * A vision row is stored in float16 unless --dtype float32: a value of magnitude >= 65520 (which float16
    would turn into Inf) makes the row bad, never a silent Inf.
  * A bad vision row (wrong shape, NaN/Inf, float16 overflow, no embedding row) drops the vision of that
    observation only (it keeps vision_row -1: never zeros); a bad observation row (duplicate id, no
    coordinates, no or an impossible date or clock time, no or a blank taxon, bad language vector) drops
    the observation. A --vision-shape the source contradicts, or a dashboard index that gives one row to
    several observations, is refused outright. Without `--skip-bad` either
    fails the command with per-kind counts and the first ids. A failure during step 3 leaves the store
    incomplete (`verify` and `open_store` reject it) with its progress, so that `--skip-bad` can resume it
    without rereading finished files; a failure in step 1-2 writes nothing.
  * Species are ordered by (taxon_name, taxon_id); observations keep the source order; vision rows follow
    the source files' order.

Modules: `observations` (steps 1-2), `vision` (what both layouts share in step 3), `hf` and `dashboard` (each
layout's plan and copy), `run` (the conversion end to end, resume), `cli` (the command line), `errors` (bad
rows), `columns` (arrow columns as numpy); `occurrence_read` (occurrence tables read by pyarrow and
python-dwca-reader), `occurrence_dates` (eventDate and year/month/day), `occurrences` (rows validated, the
observation-only store written).
"""

from deepearth_jax.data.convert.cli import add_convert_arguments, run_convert
from deepearth_jax.data.convert.columns import flatten_list_column
from deepearth_jax.data.convert.errors import BAD_KINDS, ConvertError, summarize_bad
from deepearth_jax.data.convert.occurrences import convert_occurrences
from deepearth_jax.data.convert.run import DASHBOARD, HF, convert, detect_layout
from deepearth_jax.data.sources import parse_original_shape, resolve_vision_shape

__all__ = [
    "BAD_KINDS",
    "DASHBOARD",
    "HF",
    "ConvertError",
    "add_convert_arguments",
    "convert",
    "convert_occurrences",
    "detect_layout",
    "flatten_list_column",
    "parse_original_shape",
    "resolve_vision_shape",
    "run_convert",
    "summarize_bad",
]
