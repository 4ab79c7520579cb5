"""Models by name: `create_model(config.model, input_dims=..., num_classes=..., rngs=...)`.

| name                | inputs (batch keys)        | output            | model_config fields                 |
|---------------------|----------------------------|-------------------|-------------------------------------|
| language_classifier | language                   | logits (B, C)     | hidden, dropout                     |
| vision_classifier   | vision or vision_pooled    | logits (B, C)     | hidden, dropout                     |
| attentive_probe     | vision (or vision_pooled)  | logits (B, C)     | hidden, dropout, num_heads,         |
|                     |                            |                   | num_queries, mlp_ratio (4.0)        |
| mae                 | language + vision(_pooled) | dict (see mae.py) | hidden, dropout, shared_dim,        |
|                     |                            |                   | mask_ratio                          |

Imports nothing of the project beyond this package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import nnx

from .classifiers import AttentiveProbeClassifier, LanguageClassifier, VisionClassifier
from .mae import MultimodalMaskedAutoencoder

CLASSIFIERS = ("language_classifier", "vision_classifier", "attentive_probe")
MODEL_NAMES = (*CLASSIFIERS, "mae")

__all__ = [
    "AttentiveProbeClassifier",
    "CLASSIFIERS",
    "LanguageClassifier",
    "MODEL_NAMES",
    "MultimodalMaskedAutoencoder",
    "VisionClassifier",
    "create_model",
    "is_classifier",
]


def is_classifier(name: str) -> bool:
    """Whether the model of this name returns logits (B, C) (else a dict of losses and latents)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return name in CLASSIFIERS


def _dim(input_dims: Mapping[str, int], key: str, name: str) -> int:
    if key not in input_dims or int(input_dims[key]) < 1:
        raise ValueError(f"model {name} needs input_dims[{key!r}] (a positive width), got {dict(input_dims)}")
    return int(input_dims[key])


def create_model(
    model_config: Any, *, input_dims: Mapping[str, int], num_classes: int, rngs: nnx.Rngs
) -> nnx.Module:
    """Builds the model `model_config.name` (a ConfigDict or mapping with the fields of the table above).

    input_dims: {"language": L, "vision": D} (D is the token / pooled feature width); only the ones the model
    reads are needed. num_classes: C (ignored by the MAE). Unknown names raise ValueError with the known ones.
    """
    name = model_config["name"]
    is_classifier(name)
    hidden = tuple(int(h) for h in model_config.get("hidden", (128, 128)))
    dropout = float(model_config.get("dropout", 0.0))
    if name in CLASSIFIERS and num_classes < 1:
        raise ValueError(f"model {name} needs num_classes >= 1, got {num_classes}")
    if name == "language_classifier":
        return LanguageClassifier(
            _dim(input_dims, "language", name), num_classes, hidden=hidden, dropout=dropout, rngs=rngs
        )
    if name == "vision_classifier":
        return VisionClassifier(
            _dim(input_dims, "vision", name), num_classes, hidden=hidden, dropout=dropout, rngs=rngs
        )
    if name == "attentive_probe":
        return AttentiveProbeClassifier(
            _dim(input_dims, "vision", name),
            num_classes,
            hidden=hidden,
            dropout=dropout,
            num_heads=int(model_config.get("num_heads", 16)),
            num_queries=int(model_config.get("num_queries", 1)),
            mlp_ratio=float(model_config.get("mlp_ratio", 4.0)),
            rngs=rngs,
        )
    return MultimodalMaskedAutoencoder(
        _dim(input_dims, "vision", name),
        _dim(input_dims, "language", name),
        shared_dim=int(model_config.get("shared_dim", 512)),
        hidden=hidden,
        mask_ratio=float(model_config.get("mask_ratio", 0.5)),
        dropout=dropout,
        rngs=rngs,
    )
