"""The PyTorch reference models: the original DeepEarth classifiers (DATA.md section 4) and our MAE.

Used by the step benchmark (`--compare-torch`) and the parity tests; torch is imported inside the functions,
so importing this module needs no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepearth_jax.errors import ConfigError

TORCH_REFERENCES = ("language_classifier", "vision_classifier", "mae")


def _torch_mlp(in_features: int, hidden, out_features: int, dropout: float):
    from torch import nn

    layers, width = [], in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_features))


def _torch_mae(config: Any, input_dims: dict[str, Any]):
    """The MAE of `deepearth_jax.models.mae` in PyTorch (same layers, masks and losses), for timing."""
    import torch
    from torch import nn

    m = config.model
    shared, hidden, dropout = int(m.shared_dim), tuple(m.hidden), float(m.dropout)
    vision_dim, language_dim, ratio = input_dims["vision"], input_dims["language"], float(m.mask_ratio)

    def encoder(n):
        return nn.Sequential(nn.Linear(n, shared), nn.LayerNorm(shared), nn.ReLU())

    def masked_mse(recon, target, masked):
        weight = torch.where(masked.any(-1, keepdim=True), masked, torch.ones_like(masked)).float()
        return (weight * (recon - target) ** 2).sum(-1) / weight.sum(-1)

    def cosine_distance(a, b):
        return 1 - nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-6)

    class MAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_encoder, self.language_encoder = encoder(vision_dim), encoder(language_dim)
            self.vision_decoder = _torch_mlp(shared, hidden, vision_dim, dropout)
            self.language_decoder = _torch_mlp(shared, hidden, language_dim, dropout)
            self.vision_to_language = _torch_mlp(shared, hidden, shared, dropout)
            self.language_to_vision = _torch_mlp(shared, hidden, shared, dropout)

        def forward(self, batch: dict) -> torch.Tensor:
            if "vision_pooled" in batch:
                vision = batch["vision_pooled"]
            else:
                vision = batch["vision"].float().mean((1, 2, 3))
            language = batch["language"]
            vm, lm = torch.rand_like(vision) < ratio, torch.rand_like(language) < ratio
            zv = self.vision_encoder(vision.masked_fill(vm, 0))
            zl = self.language_encoder(language.masked_fill(lm, 0))
            with torch.no_grad():
                tv, tl = self.vision_encoder(vision), self.language_encoder(language)
            loss = masked_mse(self.vision_decoder(zv), vision, vm)
            loss = loss + masked_mse(self.language_decoder(zl), language, lm)
            loss = loss + cosine_distance(self.vision_to_language(zv), tl)
            loss = loss + cosine_distance(self.language_to_vision(zl), tv)
            return loss.mean()

    return MAE()


def torch_reference_model(config: Any, input_dims: dict[str, Any], num_classes: int):
    """The PyTorch reference for `config.model`: the original's classifiers (DATA.md section 4), or the MAE
    (whose forward returns its mean loss)."""
    import torch
    from torch import nn

    name = config.model.name
    if name not in TORCH_REFERENCES:
        raise ConfigError(f"no PyTorch reference for model {name!r} (have: {', '.join(TORCH_REFERENCES)})")
    if name == "mae":
        if config.model.get("space_time", False):
            raise ConfigError(
                "the PyTorch reference MAE has no space-time token: compare configs/mae.py:space_time=false"
            )
        return _torch_mae(config, input_dims)
    in_features = input_dims["language" if name == "language_classifier" else "vision"]

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _torch_mlp(in_features, config.model.hidden, num_classes, float(config.model.dropout))

        def forward(self, batch: dict) -> torch.Tensor:
            if name == "language_classifier":
                x = batch["language"]
            elif "vision_pooled" in batch:
                x = batch["vision_pooled"]
            else:
                x = batch["vision"].float().mean(dim=(1, 2, 3))
            return self.net(x)

    return Reference()


def torch_optimizer(config: Any, params):
    """torch.optim.Adam / AdamW with the config's lr and weight decay (constant schedule, no clipping)."""
    import torch

    opt = config.optimizer
    eps = float(opt.get("eps", 1e-8))
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=opt.lr, eps=eps, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(params, lr=opt.lr, eps=eps, weight_decay=opt.weight_decay)


def copy_weights_to_torch(jax_model, torch_model) -> None:
    """Copies the JAX classifier's Linear layers into the reference in order (kernel (in, out) = weight.T)."""
    import torch

    mlp = jax_model.mlp
    jax_layers = [*mlp.hidden, mlp.head]
    torch_layers = [m for m in torch_model.modules() if isinstance(m, torch.nn.Linear)]
    if len(jax_layers) != len(torch_layers):
        raise ValueError(f"{len(jax_layers)} JAX layers but {len(torch_layers)} PyTorch layers")
    with torch.no_grad():
        for ours, theirs in zip(jax_layers, torch_layers, strict=True):
            theirs.weight.copy_(torch.from_numpy(np.asarray(ours.kernel[...]).T.copy()))
            theirs.bias.copy_(torch.from_numpy(np.asarray(ours.bias[...]).copy()))
