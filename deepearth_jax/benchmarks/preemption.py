"""What the loop's per-call stop question costs on two `jax.distributed` processes (localhost, CPU).

Each process has one CPU device; a tiny data-parallel step (one all-reduce of a 16 x 16 array, so compute is
nil) is timed with and without `checkpoint.StopOnSigterm.reached` after every call, for both ways the
processes agree on stopping: "jax" (JAX's preemption sync point, the default) and "allgather" (one allgather
of the SIGTERM flags per call, used when JAX's preemption service is off). Best of alternating rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODES = {"jax": {}, "allgather": {"JAX_ENABLE_PREEMPTION_SERVICE": "false"}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calls", type=int, default=500, help="step calls per timed round (default 500)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds, the best kept (default 5)")
    p.add_argument("--json", type=Path, default=None, help="write the result rows to this JSON file")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # process id of a child
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.worker is not None:
        row = _worker(args.worker, args.port, args.calls, args.rounds)
        if args.worker == 0:
            print(json.dumps(row), flush=True)
        return 0
    rows = [_two_processes(how, env, args.calls, args.rounds) for how, env in MODES.items()]
    print(f"{'agreement':>10} {'step us':>9} {'step + reached us':>18} {'reached alone us':>17}")
    for row in rows:
        print(
            f"{row['how']:>10} {row['step_us']:9.1f} {row['step_plus_reached_us']:18.1f} "
            f"{row['reached_alone_us']:17.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json}")
    return 0


def _two_processes(how: str, env: dict, calls: int, rounds: int) -> dict[str, Any]:
    """Runs processes 0 and 1 of one measurement; returns process 0's row."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "deepearth_jax.benchmark", "preemption", f"--calls={calls}"]
    command += [f"--rounds={rounds}", f"--port={port}"]
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1", **env}
    procs = [
        subprocess.Popen([*command, f"--worker={pid}"], env=env, stdout=subprocess.PIPE, text=True)
        for pid in range(2)
    ]
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a {how} measurement process failed (exit {[p.returncode for p in procs]})")
    row = json.loads(outs[0].strip().splitlines()[-1])
    if row["how"] != how:
        raise RuntimeError(f"expected agreement {how!r}, the processes used {row['how']!r}")
    return row


def _worker(pid: int, port: int, calls: int, rounds: int) -> dict[str, Any]:
    """One of the two processes: the timings (us per call), the same on both."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from deepearth_jax import parallel
    from deepearth_jax.checkpoint import StopOnSigterm

    parallel.initialize_distributed(f"127.0.0.1:{port}", 2, pid, "on")
    mesh = parallel.make_mesh(-1)
    x = jax.make_array_from_process_local_data(
        NamedSharding(mesh, PartitionSpec("data")), np.ones((4, 16), np.float32)
    )
    carry = [jax.device_put(jnp.zeros((16, 16)), NamedSharding(mesh, PartitionSpec()))]
    step = jax.jit(lambda w, x: w - 1e-3 * jnp.mean(x) * jnp.ones_like(w))  # mean over both processes
    stopper = StopOnSigterm()

    def timed(n: int, ask: bool) -> float:
        start = time.perf_counter()
        for i in range(n):
            carry[0] = step(carry[0], x)
            if ask:
                stopper.reached(i)
        carry[0].block_until_ready()
        return (time.perf_counter() - start) / n * 1e6

    timed(50, True)  # compile, warm up
    timed(50, False)
    best = {False: float("inf"), True: float("inf")}
    for _ in range(rounds):
        for ask in (False, True):
            best[ask] = min(best[ask], timed(calls, ask))
    start = time.perf_counter()
    for i in range(calls):
        stopper.reached(i)
    alone = (time.perf_counter() - start) / calls * 1e6
    return {
        "how": stopper.how,
        "calls": calls,
        "step_us": round(best[False], 1),
        "step_plus_reached_us": round(best[True], 1),
        "reached_alone_us": round(alone, 2),
    }
