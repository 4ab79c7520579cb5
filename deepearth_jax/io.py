"""Small file helpers every part of the package shares: atomic JSON, hashing, one progress bar."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any

from deepearth_jax.errors import WorkdirError

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Where derived data is cached (the demo store, pooled features, compiled programs): `$DEEPEARTH_CACHE`,
    else `~/.cache/deepearth_jax`. Never inside a store: a store may be shared and read-only."""
    return Path(os.environ.get("DEEPEARTH_CACHE", Path.home() / ".cache" / "deepearth_jax"))


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Writes JSON to `path` through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are meant to be shared
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json_lines(path: str | os.PathLike, required: tuple[str, ...] = ("step",)) -> list[dict]:
    """The records of a JSON-lines file such as metrics.jsonl: one JSON object per non-empty line, each with
    the keys `required`. The one reader of metrics.jsonl (the trainer's summary, resume, the curves).

    A torn last line (a write cut by power loss or a full disk) is dropped with a warning. Raises WorkdirError
    naming the file and line for a damaged line before the last.
    """
    lines = Path(path).read_text().split("\n")
    last = len(lines) - 1 if lines[-1] else len(lines) - 2  # index of the last line with text, if any
    records = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            missing = [k for k in required if not isinstance(record, dict) or k not in record]
            if not isinstance(record, dict) or missing:
                raise ValueError(f"not an object with {', '.join(missing or required) or 'fields'}")
        except ValueError as e:
            if index >= last:
                log.warning("%s: dropping a torn last line %d (%s)", path, index + 1, e)
                break
            raise WorkdirError(
                f"{path}: line {index + 1} is not a metrics record ({e}); repair or delete that line"
            ) from None
        records.append(record)
    return records


def file_sha256(path: str | os.PathLike, block: int = 8 << 20) -> str:
    """SHA-256 of a whole file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


class _NoBar:
    """Stands in for a progress bar when none is shown, so callers never test for None."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


_OPEN_BARS: weakref.WeakSet = weakref.WeakSet()


def close_progress_bars() -> None:
    """Closes every bar still open (each ends its line), so that a message printed next starts on a fresh
    line instead of being glued to a bar an exception left behind."""
    for bar in list(_OPEN_BARS):
        bar.close()


def progress_bar(
    total: int,
    desc: str,
    *,
    enabled: bool = True,
    unit: str = "row",
    initial: int = 0,
    unit_scale: bool = False,
    mininterval: float = 0.5,
):
    """A tqdm bar on stderr when `enabled` and there is work; otherwise a silent stand-in.

    Only command-line entry points pass `enabled=True`; library code stays quiet.
    """
    if not enabled or total <= 0:
        return _NoBar()
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        unit_scale=unit_scale,
        dynamic_ncols=True,
        mininterval=mininterval,
        file=sys.stderr,
    )
    _OPEN_BARS.add(bar)
    return bar


def format_bytes(n: float) -> str:
    """`1234567` -> `"1.2 MB"` (decimal units)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
