"""The error a model raises for a config it cannot be built from (a bad width, head count or field).

models/ imports nothing of the project, so this is a plain ValueError here: `steps.create_train_state`,
the one place that builds a model from a user's config, turns it into `errors.ConfigError` (one line).
Every other ValueError out of a model is an internal error.
"""

from __future__ import annotations


class ModelConfigError(ValueError):
    """A model config field the model cannot be built from; the message names the field and the value."""
