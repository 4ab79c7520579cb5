"""Species prior from place and date: Earth4D encoding of (latitude, longitude, time, day of year) -> residual
MLP -> species logits. No images: what place and date alone say about the species.

    python -m deepearth_jax.train --config configs/geo_prior.py --workdir checkpoints/geo
    python -m deepearth_jax.train --config configs/geo_prior.py:tiny --workdir /tmp/g      # CPU smoke run
    python -m deepearth_jax.train --config configs/geo_prior.py:loss=sinr --workdir /tmp/g # SINR's loss

`loss=softmax` (default): cross-entropy over the species (task classification); `loss=sinr`: SINR's "assume
negative full" with random background points in the region (task geo_presence).

Two parts add their logits: a smooth prior (a coarse Earth4D, 2..16 cells over the region, through a
residual MLP) and a site memory (`model.memory`: a fine Earth4D, ~1 km down to ~60 m, read out linearly;
`model.site_memory=false` turns it off). Real observers revisit the same spots, so a species seen at a site is
likely there again; the smooth prior cannot say so, the memory can, and where no training row ever was the
memory's cells are untrained and it adds ~0. `model.memory_dropout` silences the memory on that share of
training rows so the smooth prior learns to stand alone (what held-out regions need). The settings were chosen
on validation rows of the real Central Florida observations (BENCHMARKS.md, "Real data"); checkpoints are
selected by validation top-5, the figure the geo prior is judged by.
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


def memory_config(tiny: bool):
    """Earth4D sizes of the site memory: fine space (128..2048 cells: ~1 km down to ~60 m over the ~125 km
    of the Central Florida box), in all five grids with two cells of time and of season, so it can also
    remember a site's recent half of the record apart from its older one."""
    import ml_collections

    e = ml_collections.ConfigDict()
    e.levels = 2 if tiny else 4
    e.features = 4
    # Chosen on the Central Florida validation rows: 2^16 as good as 2^18 (top-5 0.178 vs 0.180, seed 0),
    # four times smaller; space alone (grids=("xy",)) remembered less (temporal top-5 0.200 vs 0.224).
    e.log2_table_size = 10 if tiny else 16
    e.spatial_resolution = (128.0, 2048.0)
    e.time_resolution = (1.5, 2.0)
    e.doy_resolution = (2.0, 2.0)
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
    c.model.site_memory = True
    c.model.memory = memory_config(arg.tiny)
    c.model.memory_dropout = 0.5
    c.model.encoder = encoder_config(arg.tiny)
    c.optimizer.name = "adamw"
    c.optimizer.lr = 3e-3
    c.optimizer.weight_decay = 1e-4
    c.batch_size = 64
    c.num_epochs = 15
    c.best_metric = "validation/top5"
    if arg.tiny:
        common.tiny(c)
        c.model.hidden = (32,)
        c.model.blocks = 1
    c.lock()
    return c
