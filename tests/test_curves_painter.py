"""curves.png drawn by a child process started with the run, and in-process when that child fails."""

from __future__ import annotations

import json
import subprocess
import sys

from deepearth_jax import writers


def _metrics(path):
    rows = [{"step": s, "epoch": s / 2, "train/loss": 2.0 / s, "train/top1": s / 10} for s in range(1, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_child_draws_the_curves(tmp_path, caplog):
    painter = writers.CurvesPainter(enabled=True)
    try:
        painter.start(_metrics(tmp_path / "m.jsonl"), tmp_path / "c.png", "t")
        painter.wait()
    finally:
        painter.close()
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "failed" not in caplog.text  # drawn by the child, not by the fallback


def test_a_failed_child_falls_back_to_drawing_here(tmp_path, caplog):
    painter = writers.CurvesPainter(enabled=False)
    painter._child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.exit('broken')"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    painter.start(_metrics(tmp_path / "m.jsonl"), tmp_path / "c.png", "t")
    painter.wait()
    assert "the curves process failed" in caplog.text
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_close_without_draw_ends_the_child_and_draws_nothing(tmp_path):
    painter = writers.CurvesPainter(enabled=True)
    child = painter._child
    painter.close()
    assert child.returncode == 0 and not list(tmp_path.iterdir())
