"""Loading plain-Python config files: `configs/vision.py` or `configs/vision.py:tiny`."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:arg]` by calling its `get_config(arg)`; raises ValueError with the path."""
    path_text, _, arg = spec.partition(":")
    path = Path(path_text)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_deepearth_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} has no get_config(arg) function")
    return module.get_config(arg or None)


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: dict[str, str]
) -> ml_collections.ConfigDict:
    """Sets `{"optimizer.lr": "3e-4"}` style overrides, parsing values as the field's type.

    A misspelled field fails at once with the closest existing names.
    """
    for dotted, text in overrides.items():
        node = config
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            if part not in keys:
                where = ".".join(parts[:i]) or "config"
                close = difflib.get_close_matches(part, keys, n=3)
                hint = (
                    f"; did you mean {', '.join(close)}?" if close else f"; fields: {', '.join(sorted(keys))}"
                )
                raise ValueError(f"unknown config field {dotted!r} ({part!r} is not in {where}){hint}")
            if i < len(parts) - 1:
                node = node[part]
        node[parts[-1]] = _parse_like(text, node[parts[-1]], dotted)
    return config


def _parse_like(text: str, current, name: str):
    import ast

    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"config field {name} takes true or false, got {text!r}")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"config field {name}: cannot parse {text!r}") from None
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    return value


def similar_field_hint(config: ml_collections.ConfigDict, name: str) -> str:
    close = difflib.get_close_matches(name, list(config.keys()), n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""
