"""`config.profile_steps = "START,COUNT"`: a `jax.profiler` trace of those training steps.

The trace goes to `<workdir>/profile/` (`plugins/profile/<run>/*.xplane.pb`, one per process), which
TensorBoard's profile plugin (`tensorboard --logdir <workdir>/profile`) and Perfetto (xprof's trace viewer)
read. Each traced call is a `StepTraceAnnotation`, so the step view lines up with the loop's steps. The trace
starts at the first step call at or after START and stops (after the device has finished) once COUNT steps
have run; a call advancing K steps is traced whole. Empty (the default): nothing is done at all.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import jax

log = logging.getLogger(__name__)

PROFILE_DIR = "profile"


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
    """`"START,COUNT"` -> (START, COUNT) with START >= 0, COUNT >= 1; "" -> None; ValueError otherwise."""
    spec = str(spec).strip().strip("()[]")
    if not spec:
        return None
    parts = [p.strip() for p in spec.split(",")]
    try:
        start, count = (int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"profile_steps must be START,COUNT (two integers, e.g. --config.profile_steps=5,3), got {spec!r}"
        ) from None
    if start < 0 or count < 1:
        raise ValueError(f"profile_steps START must be >= 0 and COUNT >= 1, got {start},{count}")
    return start, count


class StepProfiler:
    """Starts and stops one trace around the step calls `profile_steps` names (a no-op when it is empty)."""

    def __init__(self, spec: str, workdir: Path):
        self.window = parse_profile_steps(spec)
        self.directory = Path(workdir) / PROFILE_DIR
        self.active = False
        self.done = self.window is None

    def step(self, step: int) -> contextlib.AbstractContextManager:
        """Context of the call that starts at `step`: starts the trace when the window begins, and
        annotates the call while tracing."""
        if self.done:
            return contextlib.nullcontext()
        start, _ = self.window
        if not self.active and step >= start:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory))
            self.active = True
            log.info("profiling from step %d into %s", step, self.directory)
        if not self.active:
            return contextlib.nullcontext()
        return jax.profiler.StepTraceAnnotation("train", step_num=step)

    def after(self, step: int, outputs) -> None:
        """After a call that ended at `step` (its `outputs` are waited for before the trace stops)."""
        if self.active and step >= sum(self.window):
            self.stop(outputs)

    def stop(self, outputs=None) -> None:
        if not self.active:
            return
        if outputs is not None:
            jax.block_until_ready(outputs)
        jax.profiler.stop_trace()
        self.active, self.done = False, True
        log.info("profile written to %s", self.directory)
