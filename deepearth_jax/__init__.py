"""deepearth_jax: the JAX/Flax training stack for DeepEarth multimodal biodiversity models."""

__version__ = "0.1.0"
