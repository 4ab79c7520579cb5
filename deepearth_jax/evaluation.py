"""Evaluation over a whole subset: every example exactly once, metrics overall and per split reason.

Used by the trainer at intervals and by `python -m deepearth_jax.evaluate` on a restored checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import ml_collections
import numpy as np

from deepearth_jax import baselines, parallel, tasks
from deepearth_jax import metrics as metrics_lib
from deepearth_jax.data import modes, pipeline
from deepearth_jax.data.split.reasons import reason_group  # temporal, spatial, fold, buffer, ...
from deepearth_jax.errors import ConfigError

log = logging.getLogger(__name__)

SUBSETS = ("validation", "test", "train")
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclasses.dataclass
class EvalResult:
    """Metrics (`{"validation/top1": ...}`) and per-example outputs (host numpy, padding removed)."""

    metrics: dict
    outputs: dict  # "row" (N,) store rows + every per-example output of the eval step


SMALL_ROW_EVAL_BATCH = 256


def eval_batch_size(config: ml_collections.ConfigDict) -> int:
    """The global evaluation batch: `config.eval_batch_size`, or when 0 the training batch, raised for modes
    of one small vector per example to its smallest multiple >= SMALL_ROW_EVAL_BATCH (so it divides the
    same devices and processes)."""
    size = int(config.get("eval_batch_size", 0))
    if size < 0:
        raise ConfigError(f"eval_batch_size must be >= 0 (0 = automatic), got {size}")
    if size:
        return size
    batch = int(config.batch_size)
    if config.mode in modes.DEVICE_EPOCH_MODES:
        return batch * max(1, -(-SMALL_ROW_EVAL_BATCH // batch))
    return batch


class Evaluator:
    """Runs the jitted eval step over the validation rows (or others) and reduces the outputs to metrics."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        data,
        eval_step,
        mesh,
        subset: str = "validation",
        intervals: bool = False,
        fitted: dict | None = None,
    ):
        """`subset`: validation (selection during training), test (reports) or train; `intervals` adds
        95% bootstrap intervals (`<name>_ci: [lo, hi]`) beside each of the task's `example_scores`;
        `fitted`: what the task's `fit` would learn on validation, given (a refit model, whose validation
        rows are training rows, keeps the selected model's) instead of fitted here."""
        if subset not in SUBSETS:
            raise ValueError(f"unknown subset {subset!r}; known: {', '.join(SUBSETS)}")
        self.config, self.data, self.eval_step, self.mesh, self.subset = config, data, eval_step, mesh, subset
        self.batch_size = eval_batch_size(config)
        parallel.check_global_batch(self.batch_size, mesh)
        self.intervals = intervals
        self.fitted = fitted
        self.task = tasks.from_config(config)
        self.rows = getattr(data, f"{subset}_rows")
        fold = None if config.fold < 0 else int(config.fold)
        reasons = (
            data.split.reason_of_rows(data.store, self.rows, fold=fold)
            if len(self.rows)
            else np.zeros(0, object)
        )
        self.reason_of_row = dict(zip(self.rows.tolist(), reasons.tolist(), strict=True))
        # Per-row reason groups, looked up with searchsorted at each evaluation (no per-example Python).
        order = np.argsort(self.rows, kind="stable")
        self._sorted_rows = self.rows[order]
        self._sorted_groups = np.asarray([reason_group(r) for r in reasons.tolist()], dtype=object)[order]
        self._baselines: baselines.Baselines | None = None  # built at the first classifier evaluation

    def groups_of(self, rows: np.ndarray) -> np.ndarray:
        """The reason group (temporal, spatial, fold, ...) of each of `rows` (all from this subset)."""
        if len(rows) == 0:
            return np.zeros(0, object)
        return self._sorted_groups[np.searchsorted(self._sorted_rows, rows)]

    def run(self, state) -> EvalResult:
        """Evaluates `state` on every example of the subset once."""
        if len(self.rows) == 0:
            return EvalResult({}, {})
        merged = self.run_raw(state)
        fitted: dict = {}
        # Something fitted on validation (e.g. the late fusion exponent) scores the other subsets; validation
        # itself is reported without it (its rows would score their own fit).
        if hasattr(self.task, "fit") and self.subset != "validation":
            prior = self._log_prior()
            fitted = self.fitted
            if fitted is None:
                fitted = self.task.fit(self._validation_outputs(state), prior)
            merged = self.task.apply_fit(merged, fitted, prior)
        metrics = self.reduce(merged)
        metrics.update({f"{self.subset}/{k}": v for k, v in fitted.items()})
        return EvalResult(metrics, merged)

    def run_raw(self, state) -> dict:
        """The eval step's per-example outputs on every example of the subset, padding removed."""
        keys = ("species", "mask", "row", *modes.input_keys(self.config.mode))
        host_rows: list[np.ndarray] = []

        def host_batches():
            for batch in pipeline.eval_batches(
                self.data.store,
                self.rows,
                mode=self.config.mode,
                global_batch_size=self.batch_size,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
                num_threads=self.config.data.num_threads,
                buffer_bytes=self.config.data.buffer_mb << 20,
            ):
                host_rows.append(batch["row"])
                yield {k: batch[k] for k in keys if k != "row"}

        collected: list[dict] = []
        sharding = parallel.batch_sharding(self.mesh)
        for i, batch in enumerate(pipeline.device_prefetch(host_batches(), sharding, depth=2)):
            outputs = parallel.to_host(self.eval_step(state, batch))
            outputs = {k: np.asarray(v) for k, v in outputs.items()}
            outputs["row"] = host_rows[i] if jax.process_count() == 1 else _global_rows(host_rows[i])
            collected.append(outputs)
        merged = {k: np.concatenate([c[k] for c in collected]) for k in collected[0]}
        keep = merged.pop("mask").astype(bool)
        return {k: v[keep] for k, v in merged.items()}

    def _log_prior(self) -> np.ndarray:
        species = self.data.store.column("species_index")[self.data.train_rows]
        return self.task.log_prior(self.data.label_map[species], len(self.data.class_species))

    def _validation_outputs(self, state) -> dict:
        """The raw outputs of `state` on the validation rows (what the task's `fit` may learn from)."""
        validation = Evaluator(self.config, self.data, self.eval_step, self.mesh, subset="validation")
        if len(validation.rows) == 0:
            log.warning("no validation rows: %s keeps its defaults, fitted on nothing", self.config.task)
            return {"labels": np.zeros(0, np.int32)}
        return validation.run_raw(state)

    def evaluate(self, state) -> dict:
        return self.run(state).metrics

    def reduce(self, out: dict) -> dict:
        """Per-example outputs -> `{"<subset>/<metric>": value, "<subset>/<group>/<metric>": ...}`."""
        prefix = self.subset
        groups = self.groups_of(out["row"])
        labels = out["labels"]
        result: dict[str, float] = {}

        def add(name: str, select: np.ndarray | None = None) -> None:
            part = out if select is None else {k: v[select] for k, v in out.items()}
            if len(part["row"]) == 0:
                return
            result.update({f"{name}/{k}": v for k, v in self.task.summarize(part).items()})
            result[f"{name}/count"] = float(len(part["row"]))
            if self.intervals:
                for k, values in self.task.example_scores(part).items():
                    result[f"{name}/{k}_ci"] = _interval(values)
            if getattr(self.task, "BASELINES", False):  # frequency, kNN, weighted kNN, KDE on the same rows
                if self._baselines is None:
                    self._baselines = baselines.Baselines(self.data, self.rows)
                if select is None:  # what validation chose (k, bandwidth), once beside the overall metrics
                    result.update({f"{name}/{k}": v for k, v in self._baselines.choices().items()})
                for base, hits in self._baselines.hits(part["row"], part["labels"]).items():
                    result.update({f"{name}/{base}/{k}": float(np.mean(v)) for k, v in hits.items()})
                    if self.intervals:
                        result.update({f"{name}/{base}/{k}_ci": _interval(v) for k, v in hits.items()})

        add(prefix)
        for group in sorted(set(groups.tolist())):
            add(f"{prefix}/{group}", groups == group)
        unseen = labels < 0
        result[f"{prefix}/unseen_species/count"] = float(unseen.sum())
        unseen_species = self.data.store.column("species_index")[out["row"][unseen]]
        result[f"{prefix}/unseen_species/species/count"] = float(len(np.unique(unseen_species)))
        if unseen.any():
            add(f"{prefix}/unseen_species", unseen)
            add(f"{prefix}/seen_species", ~unseen)
        return result


# Second-level metrics worth a headline: the baselines, a fusion's branches, its gains and fitted exponent.
HEADLINE_PARTS = (
    "baseline_frequency",
    "baseline_knn",
    "baseline_knn_weighted",
    "baseline_kde",
    "vision_only",
    "geo_only",
    "late_fusion",
    "learned",
    "fusion",
    "gain",
)


def headline(row: dict, group: str | None = None) -> str:
    """`test/top1=0.654 [0.630, 0.677], test/baseline_knn/top1=...`: the overall metrics of a metrics dict,
    with the baselines' and a fusion's top-1, gains and fitted exponent beside them; those of one reason group
    (temporal, spatial, ...) with `group`."""
    parts = []
    for key, value in row.items():
        names = key.split("/")
        if (
            names[0] not in ("test", "validation")
            or key.endswith(("_ci", "/count"))
            or not isinstance(value, float)
        ):
            continue
        if group is not None:
            if len(names) < 3 or names[1] != group:
                continue
            names = [names[0], *names[2:]]
        rest = names[1:]
        if not (
            len(rest) == 1
            or (
                len(rest) == 2
                and rest[0] in HEADLINE_PARTS
                and rest[1] in ("top1", "top5", "exponent", "vision_weight", "late_rule")
            )
            or (len(rest) == 3 and rest[0] == "gain" and rest[2] == "top1")
        ):
            continue
        ci = row.get(f"{key}_ci")
        sign = "+" if rest[0] == "gain" else ""
        parts.append(f"{key}={value:{sign}.4f}" + (f" [{ci[0]:{sign}.4f}, {ci[1]:{sign}.4f}]" if ci else ""))
    return ", ".join(parts)


def _interval(values: np.ndarray) -> list[float]:
    """95% bootstrap interval of the mean of per-example values (a paired one when they are differences)."""
    low, high = metrics_lib.bootstrap_ci(values, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)
    return [low, high]


def _global_rows(local_rows: np.ndarray) -> np.ndarray:
    """All processes' rows of one global batch, in process order (matches the global batch layout)."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(local_rows, tiled=True))
