"""Convert benchmark: `python -m deepearth_jax.benchmark convert --source DIR [--out STORE] [--json PATH]`.

Measures, in one run on the same files:
  * the ceiling: a plain pyarrow read of every `vision_embeddings/*.parquet` (decoding the embedding column
    to numpy, nothing else), or for a dashboard source a plain sequential read of `embeddings.mmap`;
  * the conversion: `python -m deepearth_jax.data convert` in a child process, end to end (start-up,
    observations, vision rows, checksums), its CPU-seconds and peak RSS (its VmHWM, polled);
  * with `--compare-pyarrow` (HF sources), the same conversion with the embedding column decoded by pyarrow
    instead of the direct page reader (`convert/pages.py`), three ways (PYARROW_READERS), alternating with
    it `--repeats` times, so all see the same machine and page cache (pages.py stays only while it is
    clearly faster than the fastest of them).
Throughput is decoded float32 source bytes of vision embeddings per second. The ceiling runs first and again
after the conversions, so the page cache is as warm for both (the figures say which pass was which).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from deepearth_jax.data import convert as convert_lib
from deepearth_jax.data import sources
from deepearth_jax.data import store as store_lib
from deepearth_jax.errors import CliError
from deepearth_jax.io import format_bytes

_READ_BYTES = 64 << 20

# The conversion with the embedding column decoded by pyarrow (the direct page reader off), three ways:
# convert's own pyarrow path (one batch at a time on one prefetch thread, `iter_batches`); row groups decoded
# by 4 threads at once, in order (convert's pyarrow path before round five); whole files decoded in
# parallel, each on its own thread, the current file and the next (so the next file's decoding overlaps
# this one's cast and write).
_ROW_GROUPS_IN_PARALLEL = """
import threading
import pyarrow.parquet as pq
from deepearth_jax.data.background import ordered_map
hf.DIRECT_PAGES = False
def _decoded(path, parquet, columns, batch_rows, size):
    local = threading.local()
    def read(group):
        if not hasattr(local, "file"):
            local.file = pq.ParquetFile(path, buffer_size=8 << 20, pre_buffer=False)
        table = local.file.read_row_group(group, columns=columns)
        return [hf._decode(b, size) for b in table.to_batches(max_chunksize=batch_rows)]
    groups = range(parquet.metadata.num_row_groups)
    for decoded in ordered_map(read, groups, 4, depth=5, name="convert-decode"):
        yield from decoded
hf._decoded_batches = _decoded
"""
_FILES_IN_PARALLEL = """
import queue, threading
import pyarrow.parquet as pq
hf.DIRECT_PAGES = False
_AHEAD, _started = 2, {}
def _eager(batches, size):
    slots = queue.Queue(2)
    def work():
        try:
            for batch in batches:
                slots.put(hf._decode(batch, size))
            slots.put(None)
        except BaseException as e:
            slots.put(e)
    threading.Thread(target=work, daemon=True).start()
    while (item := slots.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item
def _decoded(path, parquet, columns, batch_rows, size):
    files = sorted(path.parent.glob("*.parquet"))
    for p in files[files.index(path) : files.index(path) + _AHEAD]:
        if p not in _started:
            f = pq.ParquetFile(p, buffer_size=8 << 20, pre_buffer=False)
            _started[p] = _eager(f.iter_batches(batch_size=batch_rows, columns=columns), size)
    return _started.pop(path)
hf._decoded_batches = _decoded
"""
PYARROW_READERS = {
    "pyarrow-iter-batches": "hf.DIRECT_PAGES = False\n",
    "pyarrow-row-groups": _ROW_GROUPS_IN_PARALLEL,
    "pyarrow-files-in-parallel": _FILES_IN_PARALLEL,
}


def _child_code(patch: str) -> str:
    return (
        "import sys\nfrom deepearth_jax.data.convert import hf\n"
        f"{patch}\nfrom deepearth_jax.data.__main__ import main\nsys.exit(main())\n"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", type=Path, required=True, help="an HF or dashboard dataset directory")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the last conversion is kept (default: none; every store is temporary)",
    )
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="store vision dtype")
    p.add_argument("--vision-shape", default=None, help="T,H,W,D, passed to convert (dashboard sources)")
    p.add_argument(
        "--compare-pyarrow",
        action="store_true",
        help="HF sources: also convert with the embedding column decoded by pyarrow (not convert/pages.py), "
        f"three ways ({', '.join(PYARROW_READERS)}), alternating with the default reader",
    )
    p.add_argument("--repeats", type=int, default=1, help="conversions per reader, alternating (default 1)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")


def read_hf_embeddings(vision_dir: Path) -> tuple[int, int, float]:
    """Plain pyarrow read of every embeddings file: `(rows, decoded bytes, seconds)`."""
    rows = nbytes = 0
    start = time.perf_counter()
    for path in sorted(vision_dir.glob("*.parquet")):
        parquet = pq.ParquetFile(path, buffer_size=8 << 20, pre_buffer=False)
        for batch in parquet.iter_batches(batch_size=4, columns=["embedding"]):
            values, _, _ = convert_lib.flatten_list_column(batch.column(0))
            rows += batch.num_rows
            nbytes += values.nbytes
    return rows, nbytes, time.perf_counter() - start


def read_mmap(path: Path, row_bytes: int) -> tuple[int, int, float]:
    """Plain sequential read of a raw float32 file: `(rows, bytes, seconds)`."""
    buffer = bytearray(_READ_BYTES)
    nbytes = 0
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            nbytes += n
    return nbytes // row_bytes, nbytes, time.perf_counter() - start


def _peak_rss(pid: int) -> int:
    """VmHWM of a running process in bytes (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _run_child(command: list[str]) -> tuple[int, float, float, int, str]:
    """Runs a command; returns (exit status, seconds, CPU-seconds (user + system), peak RSS in bytes, last
    stderr line).

    The peak is the child's VmHWM, polled every 20 ms (it only grows, so only growth in the last 20 ms could
    be missed). Not ru_maxrss: Linux carries the parent's RSS at fork into the child's ru_maxrss, which
    would charge this process's own memory to the conversion. The CPU time is the child's own (wait4).
    """
    start = time.perf_counter()
    peak = 0
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _peak_rss(process.pid))
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
    cpu = usage.ru_utime + usage.ru_stime
    return process.returncode, seconds, cpu, peak, (tail[0] if tail else "")


def _ceiling(args: argparse.Namespace, layout: str):
    """The plain read of the source's vision embeddings, as a function returning `(rows, bytes, seconds)`."""
    if layout == convert_lib.HF:
        return lambda: read_hf_embeddings(args.source / sources.HF_VISION_DIR)
    shape = sources.parse_shape(args.vision_shape) if args.vision_shape else sources.REAL_VISION_SHAPE
    return lambda: read_mmap(args.source / sources.DASHBOARD_MMAP_FILE, math.prod(shape) * 4)


def _convert(args: argparse.Namespace, out: Path, reader: str) -> dict:
    """One conversion into `out` in a child process: its seconds, CPU-seconds and peak RSS."""
    start = [sys.executable, "-m", "deepearth_jax.data"] if reader == "pages" else [sys.executable, "-c"]
    command = start + ([] if reader == "pages" else [_child_code(PYARROW_READERS[reader])])
    command += ["convert", str(args.source), "--out", str(out), "--dtype", args.dtype]
    command += ["--vision-shape", args.vision_shape] if args.vision_shape else []
    status, seconds, cpu, peak_rss, tail = _run_child(command)
    if status != 0:
        raise store_lib.StoreError(f"convert failed (exit {status}): {tail}")
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss": peak_rss}


def run(args: argparse.Namespace) -> int:
    layout = convert_lib.detect_layout(args.source)
    if args.repeats < 1:
        raise CliError(f"--repeats must be at least 1, got {args.repeats}")
    if args.compare_pyarrow and layout != convert_lib.HF:
        raise CliError("--compare-pyarrow needs an HF source (the dashboard layout has no Parquet pages)")
    readers = ["pages", *PYARROW_READERS] if args.compare_pyarrow else ["pages"]
    order = [reader for _ in range(args.repeats) for reader in readers]
    ceiling = _ceiling(args, layout)
    temporary = Path(tempfile.mkdtemp(prefix="deepearth-convert-bench-"))
    runs: dict[str, list[dict]] = {reader: [] for reader in readers}
    try:
        rows_read, bytes_read, ceiling_first = ceiling()
        for k, reader in enumerate(order):  # every run but the last into a scratch store of ours
            last = k == len(order) - 1
            out = args.out if last and args.out is not None else temporary / "store"
            shutil.rmtree(temporary / "store", ignore_errors=True)
            runs[reader].append(_convert(args, out, reader))
        _, _, ceiling_second = ceiling()
        store = store_lib.open_store(out)
        store_bytes = sum(f.stat().st_size for f in Path(out).iterdir() if f.is_file())
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    passes = (rows_read, bytes_read, ceiling_first, ceiling_second)
    figures = _figures(args, layout, store, store_bytes, passes)
    figures.update(_reader_figures(runs, figures["source_vision_bytes"], figures["vision_rows"]))
    figures["convert_read_ratio"] = round(figures["convert_mb_per_s"] / figures["ceiling_mb_per_s"], 3)
    _print(args, figures)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def _figures(args: argparse.Namespace, layout: str, store, store_bytes: int, ceiling: tuple) -> dict:
    """The source, the store and the ceiling's figures."""
    rows_read, bytes_read, first, second = ceiling
    vision_rows = int(store.manifest["counts"]["vision_rows"])
    row_values = math.prod(store.vision_shape) if store.vision_shape else 0
    return {
        "source": str(args.source),
        "layout": layout,
        "dtype": args.dtype,
        "vision_shape": list(store.vision_shape) if store.vision_shape else None,
        "vision_rows": vision_rows,
        # Decoded float32 source bytes of the rows converted (what the ceiling also decodes).
        "source_vision_bytes": vision_rows * row_values * 4,
        "store_bytes": store_bytes,
        "ceiling_rows_read": rows_read,
        "ceiling_bytes_read": bytes_read,
        "ceiling_seconds_first_pass": round(first, 3),
        "ceiling_seconds_second_pass": round(second, 3),
        "ceiling_mb_per_s": round(bytes_read / min(first, second) / 1e6, 3),
        "cpus": os.cpu_count(),
        "machine": os.uname().machine,
        "load_average": round(os.getloadavg()[0], 2),
    }


def _reader_figures(runs: dict[str, list[dict]], source_bytes: int, vision_rows: int) -> dict:
    """The default reader's best conversion as `convert_*`, each run as `runs`, and with the pyarrow readers
    beside it, the fastest of them, `pages_speedup` (its best seconds / the default reader's best) and
    `pages_cpu_ratio` (the fewest CPU-seconds of a pyarrow reader / the default reader's fewest)."""
    best = {reader: min(r["seconds"] for r in done) for reader, done in runs.items()}
    pages = min(runs["pages"], key=lambda r: r["seconds"])
    figures = {
        "convert_seconds": round(pages["seconds"], 3),
        "convert_cpu_seconds": round(pages["cpu_seconds"], 3),
        "convert_mb_per_s": round(source_bytes / pages["seconds"] / 1e6, 3),
        "convert_rows_per_s": round(vision_rows / pages["seconds"], 2),
        "convert_peak_rss_bytes": pages["peak_rss"],
        "runs": {r: [{k: round(v, 3) for k, v in one.items()} for one in done] for r, done in runs.items()},
    }
    if len(runs) > 1:
        cpu = {reader: min(r["cpu_seconds"] for r in done) for reader, done in runs.items()}
        fastest = min(PYARROW_READERS, key=best.get)
        figures["pyarrow_best_reader"] = fastest
        figures["pyarrow_convert_seconds"] = round(best[fastest], 3)
        figures["pyarrow_convert_mb_per_s"] = round(source_bytes / best[fastest] / 1e6, 3)
        figures["pages_speedup"] = round(best[fastest] / best["pages"], 3)
        figures["pages_cpu_ratio"] = round(min(cpu[r] for r in PYARROW_READERS) / cpu["pages"], 3)
    return figures


def _print(args: argparse.Namespace, figures: dict) -> None:
    f = figures
    rows, shape = f["vision_rows"], f["vision_shape"]
    print(f"convert benchmark: {f['source']} ({f['layout']}), {rows} vision rows {shape}")
    print(f"  source vision bytes (float32)  {format_bytes(f['source_vision_bytes'])}")
    print(
        f"  pyarrow/plain read (ceiling)   {f['ceiling_mb_per_s']:>8.1f} MB/s  (best of 2 passes: "
        f"{f['ceiling_seconds_first_pass']:.2f} s, {f['ceiling_seconds_second_pass']:.2f} s)"
    )
    print(
        f"  convert, end to end            {f['convert_mb_per_s']:>8.1f} MB/s  "
        f"({f['convert_seconds']:.2f} s, {f['convert_cpu_seconds']:.2f} CPU-s, "
        f"{f['convert_rows_per_s']:.1f} rows/s, -> {args.dtype})"
    )
    if "pages_speedup" in f:
        print(
            f"  convert, pages read by pyarrow {f['pyarrow_convert_mb_per_s']:>8.1f} MB/s  "
            f"({f['pyarrow_convert_seconds']:.2f} s, {f['pyarrow_best_reader']}, the fastest of "
            f"{len(PYARROW_READERS)} ways; pages.py {f['pages_speedup']:.2f}x faster, "
            f"{f['pages_cpu_ratio']:.2f}x less CPU; best of {args.repeats} each)"
        )
    print(f"  convert / read                 {f['convert_read_ratio']:>8.2f}")
    print(f"  convert peak RSS               {format_bytes(f['convert_peak_rss_bytes'])}")
