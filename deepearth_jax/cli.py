"""What every command line of the project shares: user errors become one line and exit status 2; any other
exception is a bug and keeps its traceback."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable

from deepearth_jax.errors import UserError
from deepearth_jax.io import close_progress_bars

# The status after a bug (anything but a UserError or OSError): not 2, which means bad input.
BUG_STATUS = 1


def run_command(command: Callable[[], int | None], interrupted: str = "interrupted") -> int:
    """Runs `command`; returns its status: 2 after a UserError or a refused file operation (printed as one
    `error: ...` line), 130 on Ctrl-C, 1 after any other exception (its traceback, then a line saying it is
    a bug: a bare ValueError or KeyError there is never mistaken for bad input)."""
    try:
        return int(command() or 0)
    except UserError as e:
        return _error(str(e), 2)
    except OSError as e:  # the file system refused (full disk, read-only, permissions, symlink loops)
        where = f"{e.filename}: " if e.filename else ""
        return _error(f"{where}{e.strerror or e}", 2)
    except KeyboardInterrupt:
        return _error(interrupted, 130)
    except Exception as e:
        close_progress_bars()
        traceback.print_exc()
        return _error(
            f"internal error ({type(e).__name__}), not bad input: this is a bug in deepearth_jax. Please "
            "report it to the maintainers with the traceback above and the command line you ran "
            "(add -v where the command has it for debug logs).",
            BUG_STATUS,
        )


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
