"""Where a run's metrics go: `metrics.jsonl` (one JSON object a write) and TensorBoard events (tensorboardX).

Both are written by process 0 only. A resumed run first drops the lines logged after its checkpoint, so the
file reads as one uninterrupted run.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Mapping
from pathlib import Path


def _summary_writer_class() -> type:
    from tensorboardX import SummaryWriter

    return SummaryWriter


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
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line and json.loads(line)["step"] <= truncate_after
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
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
