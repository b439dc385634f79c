"""Diffusion training: config schema, sharded train step with EMA, the loop with Orbax checkpoints.

    from sa_jax.config import load
    from sa_jax.training import TrainConfig, train
    state = train(load(TrainConfig, "configs/train_dit_tiny.yaml", ["data.path=latents/"]))
"""

from sa_jax.training.config import TrainConfig
from sa_jax.training.loop import TrainingError, export_inference, train

__all__ = ["TrainConfig", "train", "export_inference", "TrainingError"]
