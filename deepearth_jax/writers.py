"""Where a run's metrics go: `metrics.jsonl` (one JSON object a write) and TensorBoard events (tensorboardX).

Both are written by process 0 only. A resumed run first drops the lines logged after its checkpoint, so the
file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path


class MetricWriters:
    """`write(step, epoch, {"train/loss": ...})` to metrics.jsonl and TensorBoard; silent when not enabled."""

    def __init__(self, workdir: Path, enabled: bool, truncate_after: int):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self.tensorboard = None
        if not enabled:
            return
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line and json.loads(line)["step"] <= truncate_after
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        from tensorboardX import SummaryWriter  # imported here: only process 0 writes events

        self.tensorboard = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, epoch: float, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        record = {"step": int(step), "epoch": round(float(epoch), 4)} | values
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for tag, value in values.items():
            self.tensorboard.add_scalar(tag, value, int(step))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
