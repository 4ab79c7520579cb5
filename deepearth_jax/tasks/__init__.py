"""Tasks: what a run learns and how it is scored, one module each, chosen by name with `config.task`.

A task module (`classification.py`, `masked_autoencoding.py`, ...) provides:

    TRAIN_METRICS        names whose per-example sums the train step accumulates (`loss` first)
    loss(model, inputs, labels, mask) -> (mean loss, {"<name>_sum": ..., "count": ...})
    eval_constants(store) -> {name: host array}   device constants of the eval step (e.g. retrieval targets)
    eval_outputs(model, inputs, labels, species, constants) -> per-example outputs {name: (B, ...)}
    summarize(outputs) -> {metric: value}          host metrics of a set of examples
    example_scores(outputs) -> {metric: (N,)}      per-example values of the mean metrics (bootstrap CIs)
    BASELINES            optional; True: scored beside the frequency and kNN-in-space baselines
    log_prior(train_labels, C), fit(outputs, log_prior) -> {name: value}, apply_fit(outputs, fitted,
                         log_prior) -> outputs    optional: something fitted on the VALIDATION outputs (never
                         on test; e.g. the late fusion exponent) and applied to every subset's outputs
    prediction_columns(outputs, species_names, class_names) -> {column: values}   predictions.parquet
    SPECIES_COLUMNS, species_scores(outputs, select, species) -> [...]            per_species.csv
    write_figures(outputs, class_names, out_dir, step)                            extra report pictures

`inputs` are the batch without `species` and `mask`; `labels` (B,) int32 classes (-1: species absent from
training); `species` (B,) int32 store species; `mask` (B,) bool (False: padding). Adding a task is adding
one module here.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

from deepearth_jax.errors import ConfigError


def names() -> tuple[str, ...]:
    """The task modules of this package."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)))


def from_config(config: Any) -> ModuleType:
    """The task module named by `config.task`; ValueError naming the known ones otherwise."""
    name = config.task
    if name not in names():
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")
