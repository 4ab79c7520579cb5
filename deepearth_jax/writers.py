"""Where a run's metrics go: `metrics.jsonl` (one JSON object a write) and TensorBoard events (tensorboardX).

Both are written by process 0 only. A resumed run first drops the lines logged after its checkpoint, so the
file reads as one uninterrupted run.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)


def _summary_writer_class() -> type:
    from tensorboardX import SummaryWriter

    return SummaryWriter


def read_records(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a torn last line (power loss, full disk) is dropped with a warning.

    Raises ValueError naming the file and line for a damaged line before the last.
    """
    text = Path(path).read_text()
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("not an object with a step")
        except ValueError as e:
            if number == len(lines) or (number == len(lines) - 1 and not lines[-1]):
                log.warning("%s: dropping a torn last line %d (%s)", path, number, e)
                break
            raise ValueError(f"{path}: line {number} is not a metrics record ({e})") from None
        records.append(record)
    return records


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
            kept = [line for line in read_records(self.path) if line["step"] <= truncate_after]
            self.path.write_text("".join(json.dumps(line) + "\n" for line in kept))
        # tensorboardX imports torch when it is installed (seconds): import it while the first step compiles.
        importer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="import-tensorboardx")
        self._writer_class = importer.submit(_summary_writer_class)
        importer.shutdown(wait=False)

    def write(self, step: int, epoch: float, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        record = {"step": int(step), "epoch": round(float(epoch), 4)} | values
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is None:
            self.tensorboard = self._writer_class.result()(str(self._tensorboard_dir))
        for tag, value in values.items():
            self.tensorboard.add_scalar(tag, value, int(step))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        elif self.enabled:
            self._writer_class.result()  # let the import finish before the interpreter may exit
