"""Data: audio folders, TFDS and pre-encoded latents -> Grain pipeline -> training batches.

    from sa_jax.data import DataConfig, DataPipeline
    pipe = DataPipeline(DataConfig(path="corpus/", window=2**18, batch_size=4))
    batch = next(pipe.iterator())

Modules: audio_io (probe, partial decode), metadata (manifests, sidecars, prompts), sources (folder
index + skip report), pipeline (grain), latents (encode_dataset, latent crops), tfds_builder,
synth (synthetic corpus).
"""

from sa_jax.data.config import DataConfig
from sa_jax.data.pipeline import DataPipeline, crop_timing
from sa_jax.data.sources import SkipReport, scan_folder
from sa_jax.errors import NoUsableData

__all__ = ["DataConfig", "DataPipeline", "NoUsableData", "SkipReport", "crop_timing", "scan_folder",
           "encode_dataset"]


def __getattr__(name):
    if name == "encode_dataset":
        from sa_jax.data.latents import encode_dataset

        return encode_dataset
    raise AttributeError(f"module 'sa_jax.data' has no attribute {name!r}")
