"""sa-jax: Stable Audio in JAX/Flax."""

__version__ = "0.1.0"

__all__ = ["Autoencoder"]


def __getattr__(name):  # lazy, so `import sa_jax` does not import JAX
    if name == "Autoencoder":
        from sa_jax.autoencoder import Autoencoder

        return Autoencoder
    raise AttributeError(f"module 'sa_jax' has no attribute {name!r}")
