"""Attentive probe: a learned query cross-attends the V-JEPA 2 vision tokens, then a linear head.

The standard probe for V-JEPA features; streams full tokens (`mode=vision`).

    python -m deepearth_jax.train --config configs/attentive_probe.py --workdir checkpoints/probe
    python -m deepearth_jax.train --config configs/attentive_probe.py:tiny --workdir /tmp/w
"""

from __future__ import annotations

from configs import common


def get_config(arg: str | None = None):
    arg = common.parse_arg(arg, tiny=False)
    c = common.base_config()
    c.mode = "vision"
    c.model.name = "attentive_probe"
    c.model.hidden = ()
    c.model.dropout = 0.0
    c.model.num_heads = 4
    c.model.num_queries = 1
    # Attend via jax.nn.dot_product_attention, the norm folded out, also in float32 (bfloat16 always does).
    c.model.fused_attention = False
    c.optimizer.name = "adamw"
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 1e-4
    c.batch_size = 32
    c.num_epochs = 10
    if arg.tiny:
        common.tiny(c)
        c.model.num_heads = 2
    c.lock()
    return c
