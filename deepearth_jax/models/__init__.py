"""Models by name: `create_model(config.model, input_dims=..., num_classes=..., rngs=...)`.

| name                | inputs (batch keys)        | output            | model_config fields                 |
|---------------------|----------------------------|-------------------|-------------------------------------|
| language_classifier | language                   | logits (B, C)     | hidden, dropout                     |
| vision_classifier   | vision or vision_pooled    | logits (B, C)     | hidden, dropout                     |
| attentive_probe     | vision (or vision_pooled)  | logits (B, C)     | hidden, dropout, num_heads,         |
|                     |                            |                   | num_queries, mlp_ratio (4.0),       |
|                     |                            |                   | fused_attention (False)             |
| mae                 | language + vision(_pooled) | dict (see mae.py) | hidden, dropout, shared_dim,        |
|                     | (+ location, time)         |                   | mask_ratio, space_time, encoder     |
| geo_prior           | location, time             | logits (B, C)     | hidden (one width), blocks, dropout,|
|                     |                            |                   | encoder (Earth4DConfig fields),     |
|                     |                            |                   | memory (Earth4DConfig fields, or    |
|                     |                            |                   | absent), site_memory (True),        |
|                     |                            |                   | memory_dropout                      |
| vision_geo          | vision_pooled, location,   | logits (B, C)     | hidden, geo_blocks, head, dropout,  |
|                     | time                       |                   | encoder                             |

The geo models (and the MAE with `space_time`) also need `input_dims["earth4d_normalizer"]`: the region
box fitted on the training rows.

A model is registered by one builder in BUILDERS below; which task trains it is the config's `task`.
Imports nothing of the project beyond this package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from deepearth_jax.models.config_error import ModelConfigError

from .classifiers import AttentiveProbeClassifier, LanguageClassifier, VisionClassifier
from .geo_prior import GeoPrior
from .mae import MultimodalMaskedAutoencoder, SpaceTimeToken
from .precision import set_compute_dtype
from .vision_geo import VisionGeoClassifier

__all__ = ["BUILDERS", "create_model"]


def _dim(input_dims: Mapping[str, int], key: str, name: str) -> int:
    if key not in input_dims or int(input_dims[key]) < 1:
        raise ModelConfigError(
            f"model {name} needs input_dims[{key!r}] (a positive width), got {dict(input_dims)}"
        )
    return int(input_dims[key])


def _classes(num_classes: int, name: str) -> int:
    if num_classes < 1:
        raise ModelConfigError(f"model {name} needs num_classes >= 1, got {num_classes}")
    return num_classes


def _mlp_fields(m: Any) -> dict:
    return {
        "hidden": tuple(int(h) for h in m.get("hidden", (128, 128))),
        "dropout": float(m.get("dropout", 0.0)),
    }


def _language_classifier(m: Any, dims: Mapping[str, int], num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
    name = "language_classifier"
    return LanguageClassifier(
        _dim(dims, "language", name), _classes(num_classes, name), **_mlp_fields(m), rngs=rngs
    )


def _vision_classifier(m: Any, dims: Mapping[str, int], num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
    name = "vision_classifier"
    return VisionClassifier(
        _dim(dims, "vision", name), _classes(num_classes, name), **_mlp_fields(m), rngs=rngs
    )


def _attentive_probe(m: Any, dims: Mapping[str, int], num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
    name = "attentive_probe"
    return AttentiveProbeClassifier(
        _dim(dims, "vision", name),
        _classes(num_classes, name),
        **_mlp_fields(m),
        num_heads=int(m.get("num_heads", 16)),
        num_queries=int(m.get("num_queries", 1)),
        mlp_ratio=float(m.get("mlp_ratio", 4.0)),
        fused_attention=bool(m.get("fused_attention", False)),
        rngs=rngs,
    )


def _mae(m: Any, dims: Mapping[str, int], num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
    """num_classes is not used: the MAE predicts no classes."""
    fields = _mlp_fields(m)
    shared_dim = int(m.get("shared_dim", 512))
    model = MultimodalMaskedAutoencoder(
        _dim(dims, "vision", "mae"),
        _dim(dims, "language", "mae"),
        shared_dim=shared_dim,
        hidden=fields["hidden"],
        mask_ratio=float(m.get("mask_ratio", 0.5)),
        dropout=fields["dropout"],
        rngs=rngs,
    )
    if bool(m.get("space_time", False)):
        model.space_time = SpaceTimeToken(
            _normalizer(dims, "mae (space_time)"), _encoder(m), shared_dim, rngs=rngs
        )
    return model


def _normalizer(dims: Mapping[str, Any], name: str) -> dict:
    if "earth4d_normalizer" not in dims:
        raise ModelConfigError(
            f"model {name} needs input_dims['earth4d_normalizer'] (a mode that reads place and date)"
        )
    return dict(dims["earth4d_normalizer"])


def _encoder(m: Any) -> dict | None:
    encoder = m.get("encoder", None)
    if encoder is None:
        return None
    return encoder.to_dict() if hasattr(encoder, "to_dict") else dict(encoder)


def _memory(m: Any) -> dict | None:
    """The site memory's Earth4D sizes (`model.memory`), or None when absent or `model.site_memory` is off."""
    memory = m.get("memory", None)
    if memory is None or not bool(m.get("site_memory", True)):
        return None
    return memory.to_dict() if hasattr(memory, "to_dict") else dict(memory)


def _width(m: Any, default: int) -> int:
    hidden = m.get("hidden", default)
    return int(hidden[0]) if isinstance(hidden, (list, tuple)) else int(hidden)


def _geo_prior(m: Any, dims: Mapping[str, Any], num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
    return GeoPrior(
        _classes(num_classes, "geo_prior"),
        normalizer=_normalizer(dims, "geo_prior"),
        encoder=_encoder(m),
        hidden=_width(m, 256),
        blocks=int(m.get("blocks", 2)),
        dropout=float(m.get("dropout", 0.0)),
        memory=_memory(m),
        memory_dropout=float(m.get("memory_dropout", 0.0)),
        rngs=rngs,
    )


def _vision_geo(m: Any, dims: Mapping[str, Any], num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
    name = "vision_geo"
    return VisionGeoClassifier(
        _dim(dims, "vision", name),
        _classes(num_classes, name),
        normalizer=_normalizer(dims, name),
        encoder=_encoder(m),
        hidden=_width(m, 256),
        geo_blocks=int(m.get("geo_blocks", 2)),
        head=tuple(int(h) for h in m.get("head", (256,))),
        dropout=float(m.get("dropout", 0.0)),
        rngs=rngs,
    )


# name -> builder(model_config, input_dims, num_classes, rngs)
BUILDERS: dict[str, Callable[..., nnx.Module]] = {
    "language_classifier": _language_classifier,
    "vision_classifier": _vision_classifier,
    "attentive_probe": _attentive_probe,
    "mae": _mae,
    "geo_prior": _geo_prior,
    "vision_geo": _vision_geo,
}


def create_model(
    model_config: Any,
    *,
    input_dims: Mapping[str, int],
    num_classes: int,
    rngs: nnx.Rngs,
    dtype: str = "float32",
) -> nnx.Module:
    """Builds the model `model_config.name` (a ConfigDict or mapping with the fields of the table above).

    input_dims: {"language": L, "vision": D} (D is the token / pooled feature width); only the ones the model
    reads are needed. num_classes: C (ignored by the MAE). dtype: the compute dtype of matmuls and
    activations (float32 | bfloat16; parameters stay float32, see precision.py). Unknown names raise
    ValueError with the known ones.
    """
    name = model_config["name"]
    if name not in BUILDERS:
        raise ModelConfigError(f"unknown model {name!r}; known: {', '.join(BUILDERS)}")
    return set_compute_dtype(BUILDERS[name](model_config, input_dims, num_classes, rngs), dtype)
