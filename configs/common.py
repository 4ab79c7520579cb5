"""Fields shared by every config. Each config file calls `base_config()` and then sets its own fields.

Not a config by itself; see configs/vision.py, language.py, mae.py, attentive_probe.py.
"""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
    """The `:arg` of `--config file.py:arg` as fields of `spec`: `"tiny"` sets a bool, `"k=v,..."` the rest.

    `parse_arg("tiny", tiny=False).tiny == True`; an unknown name raises ValueError naming the known ones.
    """
    result = ml_collections.ConfigDict(spec)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if key not in spec:
            raise ValueError(f"unknown config argument {key!r}; known: {', '.join(spec)}")
        if not sep and not isinstance(spec[key], bool):
            raise ValueError(f"config argument {key!r} takes a value: {key}=VALUE")
        result[key] = (
            value.lower() in ("", "true", "1") if isinstance(spec[key], bool) else type(spec[key])(value)
        )
    return result


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # Data. An empty store means the embedded demo: a deterministic synthetic store built once and cached.
    c.store = ""  # a store directory made by `python -m deepearth_jax.data convert|synth`
    c.split_file = ""  # a split JSON from `python -m deepearth_jax.data split`; "" = default split, cached
    c.fold = -1  # block-CV fold held out as test (split made with --folds); -1 = the file's train/test
    c.allow_missing = False  # tolerate split ids absent from the store (counted in the log)
    # What a batch carries (deepearth_jax/data/modes.py): language (the species vector) | vision (tokens) |
    # vision_pooled (their mean) | multimodal (language + vision) | multimodal_geo (+ place and date) |
    # geo (place and date only) | vision_geo (pooled vision + place and date).
    c.mode = "vision_pooled"
    # What is learned and scored, a module of deepearth_jax/tasks/:
    # classification | masked_autoencoding | geo_presence | fusion.
    c.task = "classification"

    c.model = ml_collections.ConfigDict()
    c.model.name = "vision_classifier"
    c.model.hidden = (128, 128)
    c.model.dropout = 0.3
    # Compute dtype of matmuls and activations: float32 | bfloat16. Parameters, optimizer state and the loss
    # stay float32 (MaxText's dtype / weight_dtype split); float16 vision tokens are read as they are stored.
    c.dtype = "float32"

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"  # adam | adamw
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "constant"  # constant | cosine
    c.optimizer.warmup_steps = 0
    c.optimizer.grad_clip = 0.0  # global-norm clip; 0 = off
    c.optimizer.accumulate_steps = 1  # gradient accumulation (optax.MultiSteps); 1 = off

    c.batch_size = 32  # global, over all devices and hosts
    # Evaluation batch, global; 0 = the training batch, or for modes of one small vector per example
    # (language, vision_pooled, geo, vision_geo) its smallest multiple >= 256 (fewer, fuller eval steps).
    c.eval_batch_size = 0
    c.num_epochs = 20
    c.num_steps = -1  # > 0 overrides num_epochs
    c.steps_per_call = 1  # K train steps per jit call (lax.scan over K batches)
    c.device_epochs = False  # whole epochs on device (inputs must fit in device memory; language, pooled)

    c.profile_steps = ""  # "START,COUNT": a jax.profiler trace of those steps in <workdir>/profile/
    c.log_every_steps = 50
    c.eval_every_steps = -1  # -1 = at the end of every epoch
    c.checkpoint_every_steps = 200
    c.best_metric = "validation/top1"  # never test/...: selection must not see the test set
    c.best_mode = "max"  # max | min
    c.seed = 0
    # After selection, train again from scratch on train + validation for the selected step count and test
    # that model too (summary.json "refit"; deepearth_jax/refit.py). Off: see BENCHMARKS.md "Refit".
    c.refit = False

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices on the data axis; -1 = all devices of all hosts
    c.mesh.shard_params = False  # also split large kernels over the data axis

    c.distributed = ml_collections.ConfigDict()
    c.distributed.mode = "auto"  # auto (explicit flags or a detected cluster) | on | off
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = -1
    c.distributed.process_id = -1

    c.data = ml_collections.ConfigDict()
    c.data.num_threads = 4
    c.data.buffer_mb = 512  # host memory for batches in flight
    c.data.device_prefetch = 2  # batches placed on device ahead of the step

    # The embedded demo store (used when `store` is empty).
    c.demo = ml_collections.ConfigDict()
    c.demo.observations = 4000
    c.demo.species = 60
    c.demo.vision_shape = (2, 6, 6, 128)
    c.demo.language_dim = 256
    c.demo.seed = 0
    c.demo.regions = 5  # spatial test regions of the demo's default split (10 x 10 km, >= 15 km apart)
    return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a config for a CPU smoke run in seconds."""
    c.batch_size = 16
    c.num_epochs = 2
    c.log_every_steps = 5
    c.checkpoint_every_steps = 10
    c.demo.observations = 400
    c.demo.species = 10
    c.demo.vision_shape = (2, 3, 3, 16)
    c.demo.language_dim = 32
    c.demo.regions = 2  # five 10 km regions would swallow most of a 400-observation store
    c.model.hidden = (32, 32)
    return c
