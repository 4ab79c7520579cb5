"""Cross-modal masked autoencoder: encoders into a shared 512-d space, cross predictors, and a space-time
token (Earth4D of place and date) that decoders and cross predictors read beside each latent.

Evaluated by reconstruction losses and cross-modal retrieval (vision -> nearest species language vector),
which can name species never seen in training.

    python -m deepearth_jax.train --config configs/mae.py --workdir checkpoints/mae
    python -m deepearth_jax.train --config configs/mae.py:tiny --workdir /tmp/w
    python -m deepearth_jax.train --config configs/mae.py:space_time=false --workdir /tmp/w  # no token
"""

from __future__ import annotations

from configs import common
from configs.geo_prior import encoder_config


def get_config(arg: str | None = None):
    arg = common.parse_arg(arg, tiny=False, space_time=True)
    c = common.base_config()
    c.mode = "multimodal_geo" if arg.space_time else "multimodal"
    c.task = "masked_autoencoding"
    c.model.name = "mae"
    c.model.space_time = bool(arg.space_time)
    c.model.encoder = encoder_config(arg.tiny)
    c.model.hidden = (512,)
    c.model.dropout = 0.0
    c.model.shared_dim = 512
    c.model.mask_ratio = 0.5
    c.optimizer.name = "adamw"
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    c.batch_size = 32
    c.num_epochs = 10
    c.best_metric = "validation/retrieval_top1"
    if arg.tiny:
        common.tiny(c)
        c.model.shared_dim = 32
        c.optimizer.warmup_steps = 2
    c.lock()
    return c
