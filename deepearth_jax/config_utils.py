"""Config files and their command-line overrides, parsed by `ml_collections.config_flags`.

    --config configs/vision.py[:arg]   --config.optimizer.lr=3e-4   --config.model.hidden="(64, 32)"

A config file is plain Python whose `get_config(arg=None)` returns a locked `ConfigDict`; the files import
their shared fields as a package (`from configs import common`), so commands run from the repository root.
Every failure is one line: a missing or raising config file, a misspelled field (naming the nearest ones),
a value of the wrong type.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections import config_flags

from deepearth_jax.errors import ConfigError

OVERRIDE_PREFIX = "--config."


def _parse(spec: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    argv = ["config", f"--config={spec}", *overrides]
    flag_values = flags.FlagValues()  # a fresh registry per call: no global flag state
    holder = config_flags.DEFINE_config_file(
        "config", None, "config file", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    # config_flags loads every config file as module "config_<flag name>" with load_module(), which reuses a
    # module left in sys.modules: a second file without get_config would silently run the first one's.
    sys.modules.pop("config_config", None)
    try:
        flag_values(argv)
    except ImportError as e:  # the config's own imports, e.g. `configs` outside the repository root
        raise ConfigError(f"config file {spec} failed: {e} (run from the repository root)") from None
    except flags.IllegalFlagValueError as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        if "Error whilst parsing config file" in lines[0]:
            raise ConfigError(f"config file {spec} failed: {lines[-1]}") from None
        raise ConfigError(lines[0].removeprefix("flag ")) from None
    except (SyntaxError, AttributeError, NameError, TypeError) as e:  # not a config file (no get_config)
        raise ConfigError(f"config file {spec} failed: {type(e).__name__}: {e}") from None
    return holder.value


def _check_field(config: ml_collections.ConfigDict, dotted: str) -> None:
    """Raises ValueError naming the closest fields when `dotted` (e.g. "optimizer.lr") is not in `config`."""
    node, parts = config, dotted.split(".")
    for i, part in enumerate(parts):
        keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        if part not in keys:
            where = ".".join(parts[:i]) or "config"
            close = difflib.get_close_matches(part, keys, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; fields: {', '.join(sorted(keys))}"
            raise ConfigError(f"unknown config field {dotted!r} ({part!r} is not in {where}){hint}")
        node = node[part]


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The locked config of `path/to/config.py[:arg]` with `--config.FIELD=VALUE` overrides applied.

    Values are parsed as the field's type by config_flags; ValueError (one line) on any bad input.
    """
    path = Path(spec.partition(":")[0])
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    for item in overrides:
        if not item.startswith(OVERRIDE_PREFIX) or "=" not in item:
            raise ConfigError(f"unrecognised argument {item!r} (overrides look like --config.FIELD=VALUE)")
    if overrides:
        base = _parse(spec, ())
        for item in overrides:
            _check_field(base, item[len(OVERRIDE_PREFIX) :].partition("=")[0])
    return _parse(spec, overrides)
