"""Convert benchmark: `python -m deepearth_jax.benchmark convert --source DIR [--out STORE] [--json PATH]`.

Measures, in one run on the same files:
  * the ceiling: a plain pyarrow read of every `vision_embeddings/*.parquet` (decoding the embedding column
    to numpy, nothing else), or for a dashboard source a plain sequential read of `embeddings.mmap`;
  * the conversion: `python -m deepearth_jax.data convert` in a child process, end to end (start-up,
    observations, vision rows, checksums), and the child's peak RSS (its VmHWM, polled).
Throughput is decoded float32 source bytes of vision embeddings per second. The ceiling runs first and again
after the conversion, so the page cache is as warm for both (the figures say which pass was which).
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
from deepearth_jax.io import format_bytes

_READ_BYTES = 64 << 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", type=Path, required=True, help="an HF or dashboard dataset directory")
    p.add_argument(
        "--out", type=Path, default=None, help="store to write (default: a temporary one, deleted)"
    )
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="store vision dtype")
    p.add_argument("--vision-shape", default=None, help="T,H,W,D, passed to convert (dashboard sources)")
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


def _run_child(command: list[str]) -> tuple[int, float, int, str]:
    """Runs a command; returns (exit status, seconds, peak RSS in bytes, last stderr line).

    The peak is the child's VmHWM, polled every 20 ms (it only grows, so only growth in the last 20 ms could
    be missed). Not ru_maxrss: Linux carries the parent's RSS at fork into the child's ru_maxrss, which
    would charge this process's own memory to the conversion.
    """
    start = time.perf_counter()
    peak = 0
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        while process.poll() is None:
            peak = max(peak, _peak_rss(process.pid))
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
    return process.returncode, seconds, peak, (tail[0] if tail else "")


def run(args: argparse.Namespace) -> int:
    source = args.source
    layout = convert_lib.detect_layout(source)
    if layout == convert_lib.HF:
        shape = None

        def ceiling() -> tuple[int, int, float]:
            return read_hf_embeddings(source / sources.HF_VISION_DIR)
    else:
        shape = sources.parse_shape(args.vision_shape) if args.vision_shape else sources.REAL_VISION_SHAPE
        row_bytes = math.prod(shape) * 4

        def ceiling() -> tuple[int, int, float]:
            return read_mmap(source / sources.DASHBOARD_MMAP_FILE, row_bytes)

    out = args.out
    temporary = None
    if out is None:
        temporary = Path(tempfile.mkdtemp(prefix="deepearth-convert-bench-"))
        out = temporary / "store"
    try:
        rows_read, bytes_read, ceiling_first = ceiling()
        command = [sys.executable, "-m", "deepearth_jax.data", "convert", str(source), "--out", str(out)]
        command += ["--dtype", args.dtype] + (
            ["--vision-shape", args.vision_shape] if args.vision_shape else []
        )
        status, seconds, peak_rss, tail = _run_child(command)
        if status != 0:
            raise store_lib.StoreError(f"convert failed (exit {status}): {tail}")
        _, _, ceiling_second = ceiling()
        store = store_lib.open_store(out)
        vision_rows = int(store.manifest["counts"]["vision_rows"])
        row_values = math.prod(store.vision_shape) if store.vision_shape else 0
        # Decoded float32 source bytes of the rows converted (what the ceiling also decodes).
        source_bytes = vision_rows * row_values * 4
        store_bytes = sum(f.stat().st_size for f in Path(out).iterdir() if f.is_file())
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    ceiling_seconds = min(ceiling_first, ceiling_second)
    figures = {
        "source": str(source),
        "layout": layout,
        "dtype": args.dtype,
        "vision_shape": list(store.vision_shape) if store.vision_shape else None,
        "vision_rows": vision_rows,
        "source_vision_bytes": source_bytes,
        "store_bytes": store_bytes,
        "ceiling_rows_read": rows_read,
        "ceiling_bytes_read": bytes_read,
        "ceiling_seconds_first_pass": round(ceiling_first, 3),
        "ceiling_seconds_second_pass": round(ceiling_second, 3),
        "ceiling_mb_per_s": round(bytes_read / ceiling_seconds / 1e6, 3),
        "convert_seconds": round(seconds, 3),
        "convert_mb_per_s": round(source_bytes / seconds / 1e6, 3),
        "convert_rows_per_s": round(vision_rows / seconds, 2),
        "convert_read_ratio": round(source_bytes / seconds / (bytes_read / ceiling_seconds), 3),
        "convert_peak_rss_bytes": peak_rss,
        "cpus": os.cpu_count(),
        "machine": os.uname().machine,
    }
    print(f"convert benchmark: {source} ({layout}), {vision_rows} vision rows {figures['vision_shape']}")
    print(f"  source vision bytes (float32)  {format_bytes(source_bytes)}")
    print(
        f"  pyarrow/plain read (ceiling)   {figures['ceiling_mb_per_s']:>8.1f} MB/s  "
        f"(best of 2 passes: {ceiling_first:.2f} s, {ceiling_second:.2f} s)"
    )
    print(
        f"  convert, end to end            {figures['convert_mb_per_s']:>8.1f} MB/s  "
        f"({seconds:.2f} s, {figures['convert_rows_per_s']:.1f} rows/s, -> {args.dtype})"
    )
    print(f"  convert / read                 {figures['convert_read_ratio']:>8.2f}")
    print(f"  convert peak RSS               {format_bytes(peak_rss)}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0
