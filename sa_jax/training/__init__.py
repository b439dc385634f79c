"""Training: one engine (sa_jax.training.engine) and its tasks: diffusion (this package's `train`),
`vae`, `clap` and `quiet` (the recipe's decoder fine-tune).

    from sa_jax.config import load
    from sa_jax.training import TrainConfig, train
    result = train(load(TrainConfig, "configs/train_dit_tiny.yaml", ["data.path=latents/"]))
    result.state, result.step, result.preempted, result.export_path
"""

from sa_jax.errors import TrainingError
from sa_jax.training.config import TrainConfig
from sa_jax.training.diffusion import export_inference, train
from sa_jax.training.engine import RunResult

__all__ = ["TrainConfig", "train", "export_inference", "TrainingError", "RunResult"]
