"""Layers shared by the models (convolutions, activations, attention) and the dtype names configs use."""

import jax.numpy as jnp

from sa_jax.errors import ConfigError

# Compute dtypes a config or a loader may name; parameters stay float32.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
    """The jnp dtype called `name`, or a ConfigError listing the allowed names."""
    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r} is not supported; choose one of {sorted(DTYPES)}")
    return DTYPES[name]
