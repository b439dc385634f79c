"""sa-jax: Stable Audio in JAX/Flax."""

__version__ = "0.1.0"

__all__ = ["Autoencoder", "Clap", "StableAudio"]


def __getattr__(name):  # lazy, so `import sa_jax` does not import JAX
    if name == "Autoencoder":
        from sa_jax.autoencoder import Autoencoder

        return Autoencoder
    if name == "Clap":
        from sa_jax.encoders import Clap

        return Clap
    if name == "StableAudio":
        from sa_jax.pipeline import StableAudio

        return StableAudio
    raise AttributeError(f"module 'sa_jax' has no attribute {name!r}")
