"""Where a run's metrics go: `metrics.jsonl` (one JSON object a write) and TensorBoard events (TFRecord
event files, written directly).

Both are written by process 0 only. A resumed run first drops the lines logged after its checkpoint, so the
file reads as one uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from deepearth_jax.io import read_json_lines

log = logging.getLogger(__name__)


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return table


_CRC32C = _crc32c_table()


def _masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of `data`."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, **fields: bytes) -> bytes:
    """An `Event` protobuf: wall_time, step and a `file_version` or a `summary`."""
    head = b"\x09" + struct.pack("<d", time.time()) + b"\x10" + _varint(step)
    if "file_version" in fields:
        return head + _field(3, fields["file_version"])
    return head + _field(5, fields["summary"])


class EventFile:
    """TensorBoard scalars in a TFRecord event file, written directly (tensorboardX imports torch when it
    is installed, which costs seconds at start-up): `add_scalar(tag, value, step)`, `close()`."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self._file = open(directory / name, "ab")  # noqa: SIM115 (closed by close())
        self._record(_event(0, file_version=b"brain.Event:2"))

    def _record(self, data: bytes) -> None:
        length = struct.pack("<Q", len(data))
        self._file.write(length + struct.pack("<I", _masked_crc(length)) + data)
        self._file.write(struct.pack("<I", _masked_crc(data)))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        value_proto = _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value)
        self._record(_event(int(step), summary=_field(1, value_proto)))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class MetricWriters:
    """`write(step, epoch, {"train/loss": ...})` to metrics.jsonl and TensorBoard; silent when not enabled."""

    def __init__(self, workdir: Path, enabled: bool, truncate_after: int):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self.tensorboard = None
        self._tensorboard_dir = Path(workdir) / "tensorboard"
        if not enabled:
            return
        if self.path.exists():
            kept = [line for line in read_json_lines(self.path) if line["step"] <= truncate_after]
            self.path.write_text("".join(json.dumps(line) + "\n" for line in kept))

    def write(self, step: int, epoch: float, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        record = {"step": int(step), "epoch": round(float(epoch), 4)} | values
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is None:
            self.tensorboard = EventFile(self._tensorboard_dir)
        for tag, value in values.items():
            self.tensorboard.add_scalar(tag, value, int(step))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


_DRAW_CURVES = """
import json, sys
from deepearth_jax import plots
from deepearth_jax.io import read_json_lines
line = sys.stdin.readline()
if line.strip():
    path, out, title = json.loads(line)
    plots.plot_curves(read_json_lines(path), out, title=title)
"""


class CurvesPainter:
    """Draws `curves.png` in a child process started with the run, which imports matplotlib while the run
    trains (its import and drawing would otherwise end the run); in this process if the child fails.

    `start` asks for the picture (the run goes on), `wait` returns once it is written; `close` (every exit
    path) ends a child that was never asked to draw.
    """

    def __init__(self, enabled: bool):
        self._child: subprocess.Popen | None = None
        self._request: tuple[Path, Path, str] | None = None
        if not enabled:
            return
        import deepearth_jax

        root = str(Path(deepearth_jax.__file__).resolve().parents[1])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-c", _DRAW_CURVES],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        except OSError as e:
            log.warning("could not start the curves process (%s); curves are drawn at the end", e)

    def start(self, metrics_path: Path, out: Path, title: str) -> None:
        """Asks for the curves of `metrics_path` (metrics.jsonl, complete by now) in `out` (PNG)."""
        self._request = (metrics_path, out, title)
        if self._child is not None:
            try:
                self._child.stdin.write(json.dumps([str(metrics_path), str(out), title]) + "\n")
                self._child.stdin.close()
                self._child.stdin = None  # communicate() then only waits
            except OSError:
                pass  # the child died: wait() says so and draws here

    def wait(self) -> None:
        """Returns when the picture asked for by `start` is written."""
        child, self._child = self._child, None
        if self._request is None:
            return
        if child is not None:
            try:
                _, err = child.communicate(timeout=300)
                if child.returncode == 0:
                    return
                log.warning("the curves process failed (%s); drawing here", (err or "").strip()[-300:])
            except (OSError, subprocess.TimeoutExpired) as e:
                child.kill()
                child.wait()
                log.warning("the curves process failed (%s); drawing here", e)
        from deepearth_jax import plots

        metrics_path, out, title = self._request
        plots.plot_curves(read_json_lines(metrics_path), out, title=title)

    def close(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            with contextlib.suppress(OSError, AttributeError):
                child.stdin.close()  # an empty line: the child exits without drawing
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
