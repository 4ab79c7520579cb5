"""Species prior from place and date: Earth4D encoding of (latitude, longitude, time, day of year) -> residual
MLP -> species logits. No images: what place and date alone say about the species.

    python -m deepearth_jax.train --config configs/geo_prior.py --workdir checkpoints/geo
    python -m deepearth_jax.train --config configs/geo_prior.py:tiny --workdir /tmp/g      # CPU smoke run
    python -m deepearth_jax.train --config configs/geo_prior.py:loss=sinr --workdir /tmp/g # SINR's loss

`loss=softmax` (default): cross-entropy over the species (task classification); `loss=sinr`: SINR's "assume
negative full" with random background points in the region (task geo_presence).
"""

from __future__ import annotations

from configs import common

LOSS_TASKS = {"softmax": "classification", "sinr": "geo_presence"}


def encoder_config(tiny: bool):
    """Earth4D sizes: the module's defaults (a ~100 km region over ~15 years), fewer and smaller when tiny."""
    import ml_collections

    e = ml_collections.ConfigDict()
    e.levels = 4 if tiny else 12
    e.features = 2
    e.log2_table_size = 10 if tiny else 15
    e.spatial_resolution = (8.0, 64.0) if tiny else (8.0, 1024.0)
    e.time_resolution = (4.0, 64.0) if tiny else (4.0, 512.0)
    e.doy_resolution = (4.0, 32.0) if tiny else (4.0, 64.0)
    return e


def get_config(arg: str | None = None):
    arg = common.parse_arg(arg, tiny=False, loss="softmax")
    if arg.loss not in LOSS_TASKS:
        raise ValueError(f"unknown loss {arg.loss!r}; expected one of {', '.join(LOSS_TASKS)}")
    c = common.base_config()
    c.mode = "geo"
    c.task = LOSS_TASKS[arg.loss]
    c.model.name = "geo_prior"
    c.model.hidden = (256,)
    c.model.blocks = 2
    c.model.dropout = 0.1
    c.model.encoder = encoder_config(arg.tiny)
    c.optimizer.lr = 1e-3
    c.batch_size = 64
    c.num_epochs = 30
    if arg.tiny:
        common.tiny(c)
        c.model.hidden = (32,)
        c.model.blocks = 1
    c.lock()
    return c
