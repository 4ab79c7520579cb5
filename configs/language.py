"""Language species classifier: DeepSeek-V3 species embedding (L = 7168) -> 128 -> 128 -> C.

Note: in DeepEarth data the language embedding is one vector per species, so it identifies the label and its
accuracy says nothing about generalisation; it is a pipeline and speed baseline.

    python -m deepearth_jax.train --config configs/language.py --workdir checkpoints/language
    python -m deepearth_jax.train --config configs/language.py:tiny --workdir /tmp/w
"""

from __future__ import annotations

from configs import common


def get_config(arg: str | None = None):
    arg = common.parse_arg(arg, tiny=False)
    c = common.base_config()
    c.mode = "language"
    c.model.name = "language_classifier"
    c.model.hidden = (128, 128)
    c.model.dropout = 0.2
    c.batch_size = 32
    c.num_epochs = 10
    c.demo.language_dim = 7168  # the real DeepSeek-V3 width: the step benchmark measures this model
    if arg.tiny:
        common.tiny(c)
    c.lock()
    return c
