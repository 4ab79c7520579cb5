"""`python -m deepearth_jax.benchmark data`: the input pipeline against a raw memmap gather of the same rows.

Measures, from a warm page cache (every embedding array is read through its memmap first):
- the pipeline (`train_batches`): ms per batch, samples/s and GB/s of whole batches, best of `--repeats`
  stretches of `--runs` consecutive batches in steady state: each stretch starts with the read-ahead
  emptied and refilled by a warm-up of its depth plus one batch, so the reads in flight when it starts
  match those when it ends (no head start from a full read-ahead);
- the ceiling: `np.take(memmap, sorted rows, out=preallocated)` of exactly the rows the pipeline delivered
  in each stretch, right after it (embedding keys only), on one thread and split over `--threads`
  threads; the faster is the ceiling; `ratio` is pipeline / ceiling samples/s;
- anonymous memory (RssAnon, /proc/self/status) before the pipeline and at its peak over one full epoch,
  next to the store's embedding bytes: it should depend on the batch and prefetch sizes, not the store;
- with an accelerator (or `--device`): the host-to-device copy rate of one batch and the samples/s of
  batches delivered to the device through `device_prefetch`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import time
from pathlib import Path

import numpy as np

from deepearth_jax.data import modes, pipeline
from deepearth_jax.data.reader import BatchReader
from deepearth_jax.data.store import open_store
from deepearth_jax.errors import CliError

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="store directory")
    p.add_argument("--batch-size", type=int, default=16, help="examples per batch (default 16)")
    p.add_argument("--runs", type=int, default=10, help="batches per timed stretch (default 10)")
    p.add_argument("--repeats", type=int, default=5, help="timed stretches; the best is reported (default 5)")
    p.add_argument("--mode", choices=modes.MODES, default="vision", help="pipeline mode (default vision)")
    p.add_argument("--threads", type=int, default=4, help="pipeline reading threads (default 4)")
    p.add_argument(
        "--buffer-mb", type=float, default=512, help="pipeline read-ahead bytes in MiB (default 512)"
    )
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument(
        "--device",
        action="store_true",
        help="measure device transfer even on the CPU backend (automatic on GPU/TPU)",
    )
    p.add_argument("--no-rss-pass", action="store_true", help="skip the full-epoch RssAnon pass")


def rss_anon_bytes() -> int:
    """This process's anonymous resident memory (RssAnon of /proc/self/status), bytes; 0 where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _warm(arrays: dict[str, np.ndarray], chunk_bytes: int = 64 << 20) -> tuple[int, float]:
    """Reads every array once through its memmap (page cache and page tables); returns (bytes, seconds)."""
    total, start = 0, time.perf_counter()
    for array in arrays.values():
        row_bytes = max(1, int(np.prod(array.shape[1:])) * array.itemsize)
        rows = max(1, chunk_bytes // row_bytes)
        buffer = np.empty((rows, *array.shape[1:]), array.dtype)
        for s in range(0, array.shape[0], rows):
            e = min(array.shape[0], s + rows)
            np.copyto(buffer[: e - s], array[s:e])
        total += int(array.nbytes)
    return total, time.perf_counter() - start


def _time_stretch(batches: pipeline.TrainBatches, runs: int) -> tuple[float, list[np.ndarray]]:
    """Seconds for `runs` consecutive batches, and their rows."""
    rows = []
    start = time.perf_counter()
    for _ in range(runs):
        rows.append(next(batches)["row"].copy())
    return time.perf_counter() - start, rows


def _time_raw(reader: BatchReader, batch_rows: list[np.ndarray], threads: int) -> float:
    """Seconds to gather the embedding rows of `batch_rows` with np.take into preallocated buffers.

    With `threads > 1`, each batch is copied in `threads` chunks on as many threads.
    """
    index_of = {k: (reader.language_row if k == "language" else reader.vision_row) for k in reader.sources}
    indices = [{k: np.sort(index_of[k][rows]) for k in reader.sources} for rows in batch_rows]
    buffers = {k: np.empty((reader.batch_size, *s.shape[1:]), s.dtype) for k, s in reader.sources.items()}
    bounds = np.linspace(0, reader.batch_size, max(1, min(threads, reader.batch_size)) + 1).astype(int)
    spans = list(zip(bounds[:-1], bounds[1:], strict=True))

    def gather(batch: dict[str, np.ndarray], a: int, b: int) -> None:
        for key, source in reader.sources.items():
            np.take(source, batch[key][a:b], axis=0, out=buffers[key][a:b], mode="clip")

    with concurrent.futures.ThreadPoolExecutor(len(spans)) as pool:
        gather(indices[0], 0, reader.batch_size)  # fault the buffers in before timing
        start = time.perf_counter()
        for batch in indices:
            if len(spans) == 1:
                gather(batch, 0, reader.batch_size)
            else:
                for future in [pool.submit(gather, batch, a, b) for a, b in spans]:
                    future.result()
        return time.perf_counter() - start


def _rss_pass(batches: pipeline.TrainBatches) -> int:
    """Peak RssAnon (bytes) sampled after every batch of one full epoch."""
    peak = rss_anon_bytes()
    for _ in range(batches.steps_per_epoch):
        next(batches)
        peak = max(peak, rss_anon_bytes())
    return peak


def _device_figures(store, rows, args, batch_bytes: int) -> dict:
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    devices = jax.devices()
    if args.batch_size % len(devices):
        raise CliError(f"--batch-size {args.batch_size} is not divisible by the {len(devices)} devices")
    mesh = jax.make_mesh((len(devices),), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    figures: dict = {"backend": jax.default_backend(), "devices": len(devices)}
    with pipeline.train_batches(
        store,
        rows,
        mode=args.mode,
        global_batch_size=args.batch_size,
        seed=args.seed,
        num_threads=args.threads,
        buffer_bytes=int(args.buffer_mb * (1 << 20)),
    ) as batches:
        host = {k: v.copy() for k, v in next(batches).items()}
        jax.block_until_ready(jax.device_put(host, sharding))
        best = float("inf")
        for _ in range(max(1, args.repeats)):
            start = time.perf_counter()
            jax.block_until_ready(jax.device_put(host, sharding))
            best = min(best, time.perf_counter() - start)
        figures["h2d_gb_per_s"] = batch_bytes / best / 1e9
        figures["h2d_samples_per_s"] = args.batch_size / best
        stream = pipeline.device_prefetch(batches, sharding, depth=2)
        try:
            for _ in range(3):
                jax.block_until_ready(next(stream))
            start = time.perf_counter()
            for _ in range(args.runs):
                jax.block_until_ready(next(stream))
            elapsed = time.perf_counter() - start
        finally:
            stream.close()
    figures["delivered_samples_per_s"] = args.runs * args.batch_size / elapsed
    figures["delivered_ms_per_batch"] = 1000 * elapsed / args.runs
    return figures


def run(args: argparse.Namespace) -> int:
    if args.batch_size <= 0 or args.runs <= 0 or args.repeats <= 0:
        raise CliError("--batch-size, --runs and --repeats must be positive")
    store = open_store(args.store)
    rows = pipeline.usable_rows(store, np.arange(store.num_observations), args.mode)
    buffer_bytes = int(args.buffer_mb * (1 << 20))
    rss_before = rss_anon_bytes()
    batches = pipeline.train_batches(
        store, rows, mode=args.mode, global_batch_size=args.batch_size, seed=args.seed,
        num_threads=args.threads, buffer_bytes=buffer_bytes,
    )  # fmt: skip
    try:
        reader = batches.reader
        warm_bytes, warm_s = _warm(reader.sources)
        log.info("page cache warmed: read %.2f GB of embeddings in %.2f s", warm_bytes / 1e9, warm_s)
        pipe_s = raw1_s = rawn_s = float("inf")
        # Interleaved, so that the pipeline and the gather see the same load on a shared machine.
        for _ in range(args.repeats):
            # Back to the steady state: drop the read-ahead filled while the gather ran, then warm up.
            batches.set_state(batches.get_state())
            for _ in range(batches.prefetch + 1):
                next(batches)
            elapsed, timed_rows = _time_stretch(batches, args.runs)
            pipe_s = min(pipe_s, elapsed)
            raw1_s = min(raw1_s, _time_raw(reader, timed_rows, 1))
            rawn_s = min(rawn_s, _time_raw(reader, timed_rows, args.threads))
        rss_peak = rss_before if args.no_rss_pass else _rss_pass(batches)
    finally:
        batches.close()
    samples = args.runs * args.batch_size
    embedding_bytes = sum(
        int(np.prod(s.shape[1:])) * s.itemsize * args.batch_size for s in reader.sources.values()
    )
    raw_s = min(raw1_s, rawn_s)  # the ceiling: the faster of one thread and --threads threads
    result = {
        "store": str(store.path),
        "mode": args.mode,
        "batch_size": args.batch_size,
        "runs": args.runs,
        "repeats": args.repeats,
        "threads": args.threads,
        "reading_threads": batches.num_threads,
        "copy_threads_per_batch": reader.split,
        "prefetch_batches": batches.prefetch,
        "batch_bytes": reader.batch_bytes,
        "page_cache_warmed_bytes": warm_bytes,
        "page_cache_warm_s": warm_s,
        "ms_per_batch": 1000 * pipe_s / args.runs,
        "pipeline_samples_per_s": samples / pipe_s,
        "gb_per_s": reader.batch_bytes * args.runs / pipe_s / 1e9,
        "raw_ms_per_batch": 1000 * raw_s / args.runs,
        "raw_samples_per_s": samples / raw_s,
        "raw_gb_per_s": embedding_bytes * args.runs / raw_s / 1e9,
        "raw_1thread_samples_per_s": samples / raw1_s,
        "raw_threads_samples_per_s": samples / rawn_s,
        "ratio": raw_s / pipe_s,
        "store_embedding_bytes": sum(int(s.nbytes) for s in reader.sources.values()),
        "rss_anon_before_mb": rss_before / 2**20,
        "rss_anon_peak_mb": None if args.no_rss_pass else rss_peak / 2**20,
        "rss_anon_growth_mb": None if args.no_rss_pass else (rss_peak - rss_before) / 2**20,
    }
    import jax

    if args.device or jax.default_backend() != "cpu":
        result["device"] = _device_figures(store, rows, args, reader.batch_bytes)
    print(_report(result, args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _report(r: dict, args: argparse.Namespace) -> str:
    """The figures of `run` as the lines printed."""
    lines = [
        f"data benchmark: {r['store']}, mode {args.mode}, batch {args.batch_size}, {args.runs} batches, "
        f"best of {args.repeats}, {args.threads} threads, prefetch {r['prefetch_batches']} batches "
        f"of {r['batch_bytes'] / 1e6:.1f} MB",
        f"page cache warmed first: {r['page_cache_warmed_bytes'] / 1e9:.2f} GB read in "
        f"{r['page_cache_warm_s']:.2f} s",
        f"pipeline   {r['ms_per_batch']:8.1f} ms/batch {r['pipeline_samples_per_s']:9.1f} samples/s "
        f"{r['gb_per_s']:6.2f} GB/s",
        f"raw gather {r['raw_ms_per_batch']:8.1f} ms/batch {r['raw_samples_per_s']:9.1f} samples/s "
        f"{r['raw_gb_per_s']:6.2f} GB/s  (np.take from the memmap, same rows; best of 1 thread "
        f"{r['raw_1thread_samples_per_s']:.0f}/s and {args.threads} threads "
        f"{r['raw_threads_samples_per_s']:.0f}/s)",
        f"ratio      {r['ratio']:.2f} of the raw gather",
    ]
    if not args.no_rss_pass:
        lines.append(
            f"RssAnon    {r['rss_anon_before_mb']:.0f} MB before, {r['rss_anon_peak_mb']:.0f} MB peak "
            f"over one epoch (+{r['rss_anon_growth_mb']:.0f} MB); store embeddings "
            f"{r['store_embedding_bytes'] / 1e9:.2f} GB"
        )
    if "device" in r:
        d = r["device"]
        lines.append(
            f"device     {d['backend']} x{d['devices']}: host->device {d['h2d_gb_per_s']:.2f} GB/s "
            f"({d['h2d_samples_per_s']:.0f} samples/s); delivered {d['delivered_samples_per_s']:.1f} "
            f"samples/s ({d['delivered_ms_per_batch']:.1f} ms/batch)"
        )
    return "\n".join(lines)
