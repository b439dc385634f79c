"""The paper's evaluation metrics in JAX, after Stability-AI's stable-audio-metrics:
FD_openl3 (`fd_openl3`, `OpenL3`), KL_passt (`kl_passt`, `PaSST`), the CLAP score (`clap_score`),
a Fréchet distance on any embedding (`frechet_distance`, `fd_clap` for the CLAP audio embedding),
and reference statistics files (`save_stats`, `load_stats`).

Names resolve lazily so that `import sa_jax.metrics` does not import JAX.
"""

_WHERE = {
    "frechet_distance": "frechet", "embedding_statistics": "frechet", "RunningStats": "frechet",
    "save_stats": "frechet", "load_stats": "frechet",
    "OpenL3": "openl3", "fd_openl3": "openl3",
    "PaSST": "passt", "kl_passt": "passt",
    "clap_score": "clap", "fd_clap": "clap", "read_captions": "clap",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"sa_jax.metrics.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'sa_jax.metrics' has no attribute {name!r}")
