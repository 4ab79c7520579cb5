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
    """Earth4D sizes for the data: coarse space (2..16 cells), nearly no absolute time, 4..16-cell season."""
    import ml_collections

    e = ml_collections.ConfigDict()
    # Coarse on purpose: a few thousand observations cannot fill 50 m cells, and a held-out year lies beyond
    # every trained time cell: fine grids only memorise (demo: train top-1 0.92, test 0.03 at 1024/512 cells).
    e.levels = 4 if tiny else 6
    e.features = 2
    e.log2_table_size = 10 if tiny else 14
    e.spatial_resolution = (4.0, 64.0) if tiny else (2.0, 16.0)
    e.time_resolution = (1.5, 2.0)
    # Chosen on the demo's validation rows (top-1 0.43 vs 0.39 at 2..32 space, 4..32 season).
    e.doy_resolution = (4.0, 16.0)
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
    c.model.dropout = 0.3
    c.model.encoder = encoder_config(arg.tiny)
    c.optimizer.name = "adamw"
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 1e-4
    c.batch_size = 64
    c.num_epochs = 15
    if arg.tiny:
        common.tiny(c)
        c.model.hidden = (32,)
        c.model.blocks = 1
    c.lock()
    return c
