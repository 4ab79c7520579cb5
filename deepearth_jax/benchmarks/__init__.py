"""One module per benchmark of `python -m deepearth_jax.benchmark`."""
