"""The conversion end to end: layout detection, options, resume, and finishing the store."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from deepearth_jax.data.convert import dashboard, hf
from deepearth_jax.data.convert.errors import ConvertError, summarize_bad
from deepearth_jax.data.convert.observations import Observations, read_observations
from deepearth_jax.data.convert.occurrence_read import is_occurrence_source
from deepearth_jax.data.convert.occurrences import convert_occurrences
from deepearth_jax.data.convert.vision import Meter, VisionPlan, VisionSink
from deepearth_jax.data.sources import (
    DASHBOARD_INDEX_FILE,
    DASHBOARD_MMAP_FILE,
    HF_OBSERVATIONS_FILE,
    HF_VISION_DIR,
    HF_VISION_INDEX_FILE,
)
from deepearth_jax.data.store import MANIFEST_FILE, Store, StoreError, open_store, read_manifest
from deepearth_jax.data.store_writer import StoreWriteError, StoreWriter, observation_table, species_table

log = logging.getLogger(__name__)

HF = "hf"
DASHBOARD = "dashboard"
_SKIP_HINT = "rerun with --skip-bad to convert the rest (the skipped rows are recorded in the manifest)"


def detect_layout(source: Path) -> str:
    """`"hf"` or `"dashboard"`; raises StoreError saying what is missing."""
    source = Path(source)
    if not source.is_dir():
        raise StoreError(f"source {source} is not a directory")
    for name in (HF_OBSERVATIONS_FILE, HF_VISION_INDEX_FILE, DASHBOARD_MMAP_FILE, DASHBOARD_INDEX_FILE):
        if (source / name).is_symlink() and not (source / name).exists():
            raise StoreError(f"source {source}: {name} is a broken symlink or a symlink loop")
    if not (source / HF_OBSERVATIONS_FILE).is_file():
        raise StoreError(
            f"source {source} has no {HF_OBSERVATIONS_FILE} (for an occurrence table, give the file itself, "
            "or a Darwin Core Archive directory with meta.xml)"
        )
    if (source / DASHBOARD_MMAP_FILE).is_file():
        if not (source / DASHBOARD_INDEX_FILE).is_file():
            raise StoreError(f"source {source} has embeddings.mmap but no embeddings_index.db")
        return DASHBOARD
    if (source / HF_VISION_INDEX_FILE).is_file():
        return HF
    raise StoreError(
        f"source {source} is neither the HF layout (vision_index.parquet + vision_embeddings/) nor the "
        "dashboard layout (embeddings.mmap + embeddings_index.db)"
    )


def convert(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str = "float16",
    vision_shape: tuple[int, ...] | None = None,
    skip_bad: bool = False,
    progress: bool = False,
) -> Store:
    """Converts an HF or dashboard dataset at `source` into a store at `out`; returns it opened.

    An occurrence table (a file, or a Darwin Core Archive directory with meta.xml) becomes an
    observation-only store instead (`occurrences.convert_occurrences`; dtype does not apply).

    Args:
      source: the dataset directory (layout recognised by its files, see the package docstring), or an
        occurrence table.
      out: the store directory: new, empty, or an incomplete conversion of the same source to resume.
      dtype: vision dtype in the store, "float16" (default; values beyond +-65504 are bad rows) or "float32".
      vision_shape: `(T, H, W, D)`; default from the HF files' original_shape, or (8, 24, 24, 1408).
      skip_bad: convert the good rows and record the bad ones in the manifest's `skipped`, instead of failing.
      progress: show progress bars (rows/s, MB/s) on stderr.

    Raises:
      ConvertError: bad rows without skip_bad (one line: per-kind counts and the first ids).
      StoreError: an unreadable or unrecognised source, or an `out` that cannot be written or resumed.
    """
    source, out = Path(source), Path(out)
    if not source.exists() and not source.is_symlink():
        raise StoreError(f"source {source} does not exist")
    if is_occurrence_source(source):
        if vision_shape is not None:
            raise StoreError(f"{source} is an occurrence table: it has no vision embeddings to shape")
        _check_out(out)
        existing = _existing_conversion(out)
        if existing is not None and existing.get("provenance", {}).get("source_layout") != "occurrences":
            raise StoreError(f"{out} holds an incomplete conversion of another source; delete it")
        return convert_occurrences(source, out, skip_bad=skip_bad, resume=existing is not None)
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
    if vision_shape is not None and (len(vision_shape) != 4 or min(vision_shape) < 1):
        raise ValueError(f"vision shape must be four positive sizes T,H,W,D, got {vision_shape}")
    layout = detect_layout(source)
    _check_out(out)
    existing = _existing_conversion(out)
    start_time = time.perf_counter()
    obs, plan = _read_and_plan(source, layout, vision_shape, skip_bad, progress)
    options = {"dtype": dtype, "vision_shape": list(plan.shape) if plan.shape else None}
    fingerprint = {
        "layout": layout,
        "files": _fingerprint_files([source / HF_OBSERVATIONS_FILE, *plan.source_files], source),
        **options,
    }
    num_vision_rows = _planned_rows(out, existing, fingerprint, plan.num_rows)
    try:
        _write(source, out, layout, obs, plan, num_vision_rows, fingerprint, options, skip_bad, progress)
    except StoreWriteError as e:
        raise StoreWriteError(
            f"{e}; what was converted so far is kept: rerun the same command to resume once that is fixed"
        ) from None
    log.info("converted %s -> %s in %.1f s", source, out, time.perf_counter() - start_time)
    return open_store(out)


def _write(
    source: Path,
    out: Path,
    layout: str,
    obs: Observations,
    plan: VisionPlan,
    num_vision_rows: int,
    fingerprint: dict,
    options: dict,
    skip_bad: bool,
    progress: bool,
) -> None:
    """Steps 3-4 into a new store, or one resumed where its recorded progress ends."""
    writer = StoreWriter(
        out,
        num_vision_rows=num_vision_rows,
        vision_shape=plan.shape,
        vision_dtype=options["dtype"],
        num_language_rows=len(obs.taxon_names),
        language_dim=obs.language.shape[1],
        provenance={
            "source_layout": layout,
            "source": str(source.resolve()),
            "options": {**options, "skip_bad": skip_bad},
        },
        resume=True,
    )
    state = writer.progress
    if state.get("fingerprint") != fingerprint:
        state.clear()
        state.update({"fingerprint": fingerprint, "units": {}, "next_row": 0})
    writer.language[:] = obs.language
    writer.save_progress()
    if state["units"]:
        log.info("resuming %s: %d of %d source units already done", out, len(state["units"]), len(plan.units))
    known = _copy_units(source, layout, plan, writer, options["dtype"], skip_bad, progress)
    _finish(writer, obs, plan, known)


def _read_and_plan(
    source: Path, layout: str, vision_shape, skip_bad: bool, progress: bool
) -> tuple[Observations, VisionPlan]:
    """Steps 1-2: observations read and validated, vision rows located; fails before writing anything."""
    obs_path = source / HF_OBSERVATIONS_FILE
    meter = Meter(pq.ParquetFile(obs_path).metadata.num_rows, progress, "observations")
    try:
        obs = read_observations(obs_path, progress=lambda rows: meter.update(rows, 0))
    finally:
        meter.close()
    if obs.bad and not skip_bad:
        raise ConvertError(f"{summarize_bad(obs.bad)}; nothing written; {_SKIP_HINT}", obs.bad)
    if not len(obs.gbif_id):
        raise ConvertError(f"{obs_path} has no usable observation", obs.bad)
    plan = (hf.plan if layout == HF else dashboard.plan)(source, obs, vision_shape)
    if plan.bad and not skip_bad:
        raise ConvertError(f"{summarize_bad(plan.bad)}; nothing written; {_SKIP_HINT}", plan.bad)
    return obs, plan


def _planned_rows(out: Path, existing: dict | None, fingerprint: dict, num_rows: int) -> int:
    """Rows of vision.npy: the plan's, or those of the incomplete conversion being resumed."""
    if existing is None:
        return num_rows
    done = existing.get("progress", {})
    if done.get("fingerprint") not in (None, fingerprint):
        raise StoreError(
            f"{out} holds an incomplete conversion of another source or with other options; delete it "
            "or choose another --out"
        )
    planned = existing.get("arrays_planned", {}).get("vision")
    if done.get("fingerprint") == fingerprint and planned:
        return planned["shape"][0]
    return num_rows


def _copy_units(
    source: Path,
    layout: str,
    plan: VisionPlan,
    writer: StoreWriter,
    dtype: str,
    skip_bad: bool,
    progress: bool,
) -> dict[int, str]:
    """Step 3: copies the units not yet done, recording each in the manifest once its rows are on disk;
    returns the vision checksum chunks hashed on the way (VisionSink.settle)."""
    state = writer.progress

    def fail_if_bad(records: list[dict]) -> None:
        bad = [b for r in records for b in r["bad"]]
        if bad and not skip_bad:
            raise ConvertError(
                f"{summarize_bad(plan.bad + bad)} (stopped after {len(state['units'])} of {len(plan.units)} "
                f"source units); {writer.path} is left incomplete, which verify rejects: rerun with "
                "--skip-bad to resume it and skip these rows, or delete it",
                plan.bad + bad,
            )

    fail_if_bad(list(state["units"].values()))
    todo = [(name, what) for name, what in plan.units if name not in state["units"]]
    sink = VisionSink(writer, state["next_row"]) if writer.vision is not None else None
    meter = Meter(plan.num_rows, progress, "convert")
    meter.update(sum(len(r["gbif_ids"]) for r in state["units"].values()), 0)
    try:
        for name, what in todo:
            if layout == HF:
                path = source / HF_VISION_DIR / name
                record = hf.copy_file(path, what, plan.shape, dtype, sink, state["next_row"], meter)
            else:
                path = source / DASHBOARD_MMAP_FILE
                record = dashboard.copy_chunk(path, what, plan.shape, dtype, sink, state["next_row"], meter)
            state["units"][name] = record
            state["next_row"] = record["start"] + len(record["gbif_ids"])
            sink.commit_progress({**state, "units": dict(state["units"])})
            if record["bad"] and not skip_bad:
                sink.settle()  # the failed unit is recorded, so --skip-bad resumes after it
                fail_if_bad([record])
        return sink.settle() if sink is not None else {}
    finally:
        meter.close()
        if sink is not None:
            sink.close()


def _finish(writer: StoreWriter, obs: Observations, plan: VisionPlan, known: dict[int, str]) -> None:
    """Step 4: vision.npy cut to the rows written, the tables built, the store checksummed (vision chunks
    hashed while they were written are not read again) and completed."""
    state = writer.progress
    records = [state["units"][name] for name, _ in plan.units]
    vision_row_of = {g: r["start"] + k for r in records for k, g in enumerate(r["gbif_ids"])}
    if writer.vision is not None and writer.vision.shape[0] != state["next_row"]:
        writer.truncate_vision(state["next_row"])
    skipped = obs.bad + plan.bad + [b for r in records for b in r["bad"]]
    vision_row = np.array([vision_row_of.get(int(g), -1) for g in obs.gbif_id], np.int64)
    observations = observation_table(species_index=obs.species_index, vision_row=vision_row, **obs.columns)
    species = species_table(
        obs.taxon_ids, obs.taxon_names, np.arange(len(obs.taxon_names)), obs.species_index, vision_row
    )
    has_row = vision_row >= 0
    stats = {
        "source_observations": obs.source_rows,
        "observations": len(obs.gbif_id),
        "observations_with_vision": int(has_row.sum()),
        "skipped_observations": sum(b["dropped"] == "observation" for b in skipped),
        "skipped_vision": sum(b["dropped"] == "vision" for b in skipped),
        **plan.stats,
        "embedding_duplicates_dropped": sum(r["duplicates"] for r in records),
        "embedding_rows_not_indexed": sum(r["not_indexed"] for r in records),
        "has_vision_without_embedding": int((obs.has_vision & ~has_row).sum()),
        "embedding_without_has_vision": int((~obs.has_vision & has_row).sum()),
    }
    writer.finalize(
        observations, species, skipped=skipped, extra={"conversion": stats}, known_chunks={"vision": known}
    )


def _existing_conversion(out: Path) -> dict | None:
    """The manifest of an incomplete store at `out` (to resume), None when `out` is new or empty."""
    if not (out / MANIFEST_FILE).exists():
        return None
    manifest = read_manifest(out)
    if manifest.get("complete"):
        raise StoreError(f"{out} already holds a complete store; choose another --out or delete it")
    return manifest


def _fingerprint_files(paths: list[Path], root: Path) -> dict:
    """`{relative path: [size, mtime_ns]}` of the source files, to know a resumed conversion's source."""
    out = {}
    for p in paths:
        try:
            st = p.stat()
        except OSError as e:
            raise StoreError(f"cannot read source file {p}: {e.strerror}") from None
        out[str(p.relative_to(root))] = [st.st_size, st.st_mtime_ns]
    return out


def _check_out(out: Path) -> None:
    """Refuses, before any reading, an `out` that cannot become a store directory: one under a regular
    file, or in a directory this process may not write."""
    if out.exists() and not out.is_dir():
        raise StoreError(f"--out {out} exists and is not a directory")
    parent = out
    while not parent.exists():
        if parent.is_symlink():
            raise StoreError(f"--out {out}: {parent} is a broken symlink or a symlink loop")
        parent = parent.parent
    if not parent.is_dir():
        raise StoreError(f"--out {out} lies under {parent}, which is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"--out {out}: cannot write in {parent} (read-only or no permission)")
