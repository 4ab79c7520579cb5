"""The run directory: checked usable up front, and locked so one trainer at a time writes into it.

The lock is `fcntl.flock` on an open file descriptor: the kernel drops it when the process dies, so a crash
leaves no stale lock to clean up; the file records the holder's pid and host for the refusal message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from deepearth_jax.errors import WorkdirError

LOCK_NAME = "run.lock"


def prepare(workdir: Path) -> None:
    """Creates `workdir` and checks that it is a writable directory; one-line WorkdirError otherwise."""
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"workdir {workdir} is a regular file, not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create workdir {workdir}: {e.strerror or e}") from None
    if not os.access(workdir, os.R_OK | os.W_OK | os.X_OK):
        raise WorkdirError(f"workdir {workdir} is not readable and writable by this user")


@contextlib.contextmanager
def locked(workdir: Path, enabled: bool = True) -> Iterator[None]:
    """Holds `<workdir>/run.lock` for the block; WorkdirError at once when another process holds it."""
    if not enabled:
        yield
        return
    path = workdir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise WorkdirError(f"cannot open lock file {path}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise WorkdirError(
                f"workdir {workdir} is in use by another trainer ({holder}); "
                f"wait for it or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
