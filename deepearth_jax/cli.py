"""What every command line of the project shares: user errors become one line and exit status 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from deepearth_jax.data.store import StoreError
from deepearth_jax.io import close_progress_bars

# Errors that mean bad input (a path, a file, a flag), not a bug: shown as one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (StoreError, ValueError, KeyError, FileNotFoundError)


def run_command(
    command: Callable[[], int | None],
    extra_errors: tuple[type[BaseException], ...] = (),
    interrupted: str = "interrupted",
) -> int:
    """Runs `command`; returns its status, 2 after a user error or a refused file operation (printed as one
    `error: ...` line), 130 on Ctrl-C."""
    try:
        return int(command() or 0)
    except (*USER_ERRORS, *extra_errors) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        return _error(message, 2)
    except OSError as e:  # the file system refused (full disk, read-only, permissions, symlink loops)
        where = f"{e.filename}: " if e.filename else ""
        return _error(f"{where}{e.strerror or e}", 2)
    except KeyboardInterrupt:
        return _error(interrupted, 130)


def _error(message: str, status: int) -> int:
    """Prints `error: message` on a line of its own: bars an exception left open are closed first."""
    close_progress_bars()
    print(f"error: {message}", file=sys.stderr)
    return status


def setup_logging(verbose: bool = False, timestamps: bool = False) -> None:
    """INFO (DEBUG with verbose) for our loggers; absl, jax and orbax only from WARNING unless verbose."""
    fmt = (
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
        if timestamps
        else "%(levelname)s %(name)s: %(message)s"
    )
    # force: absl (imported by our dependencies) has already configured the root logger.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, force=True)
    for noisy in ("absl", "jax", "orbax"):  # their INFO lines bury ours
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
