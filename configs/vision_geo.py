"""Vision fused with place and date in one model: pooled V-JEPA 2 features and the Earth4D trunk of
(latitude, longitude, time, day of year), joined by a learned gate, then an MLP head. Evaluation reports the
fusion's gain over vision alone (paired 95% interval) and the late fusion rule, fitted on validation; the
prediction is the learned head or that rule, whichever validation prefers (tasks/fusion.py), so noise images
are ignored rather than memorised (BENCHMARKS.md, "Fusion on real places").

    python -m deepearth_jax.train --config configs/vision_geo.py --workdir checkpoints/vision_geo
    python -m deepearth_jax.train --config configs/vision_geo.py:tiny --workdir /tmp/vg     # CPU smoke run
"""

from __future__ import annotations

from configs import common
from configs.geo_prior import encoder_config


def get_config(arg: str | None = None):
    arg = common.parse_arg(arg, tiny=False)
    c = common.base_config()
    c.mode = "vision_geo"
    # Scored beside its own vision-only, place-and-date-only and late-fusion predictions (tasks/fusion.py).
    c.task = "fusion"
    c.model.name = "vision_geo"
    c.model.hidden = (256,)
    c.model.geo_blocks = 2
    c.model.head = (256,)
    c.model.dropout = 0.3
    c.model.encoder = encoder_config(arg.tiny)
    c.optimizer.lr = 1e-3
    c.batch_size = 32
    c.num_epochs = 30
    # The best validation top-1 of the learned head, vision alone or place and date alone (tasks/fusion.py):
    # with uninformative images the learned head memorises them and its own top-1 would select badly.
    c.best_metric = "validation/selection/top1"
    if arg.tiny:
        common.tiny(c)
        c.model.hidden = (32,)
        c.model.geo_blocks = 1
        c.model.head = (32,)
    c.lock()
    return c
