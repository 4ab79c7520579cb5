"""Vision species classifier: mean over (T, H, W) of the V-JEPA 2 tokens -> D -> 128 -> 128 -> C.

Trains from the pooled-feature cache (`mode=vision_pooled`, computed once per store), whole epochs at a time
on the device (`device_epochs`: one vector per example fits; the quick start's costs are then the model's,
not the per-step feed). `--config.mode=vision --config.device_epochs=false` streams the full tokens instead
(the same model, pooling inside the jit); `--config.device_epochs=false` alone streams pooled batches.

    python -m deepearth_jax.train --config configs/vision.py --workdir checkpoints/vision
    python -m deepearth_jax.train --config configs/vision.py:tiny --workdir /tmp/w    # CPU smoke run
    python -m deepearth_jax.train --config configs/vision.py --config.store=/data/cfnp_store \
        --config.split_file=/data/split.json --workdir checkpoints/vision
"""

from __future__ import annotations

from configs import common


def get_config(arg: str | None = None):
    arg = common.parse_arg(arg, tiny=False)
    c = common.base_config()
    c.mode = "vision_pooled"
    c.model.name = "vision_classifier"
    c.model.hidden = (128, 128)
    c.model.dropout = 0.3
    c.optimizer.lr = 1e-3
    c.batch_size = 32
    c.num_epochs = 30
    # Whole epochs on device; the :tiny smoke run streams batches (the path the tests exercise step by step).
    c.device_epochs = not arg.tiny
    if arg.tiny:
        common.tiny(c)
    c.lock()
    return c
