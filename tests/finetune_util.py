"""Tiny whole models of both families (random weights, a real text encoder and autoencoder) saved as
sa-jax checkpoints, for the fine-tuning tests: what `init.from` starts from."""

from pathlib import Path

import jax
import numpy as np
from training_util import TINY_VAE

from sa_jax.config import load
from sa_jax.training import TrainConfig
from sa_jax.training import model as tm

ROOT = Path(__file__).resolve().parents[1]
# TINY_VAE with the 8 latent channels of the tiny run configs (32x, 44.1 kHz)
VAE8 = {**TINY_VAE, "latent_dim": 8,
        "encoder": {**TINY_VAE["encoder"], "config": {**TINY_VAE["encoder"]["config"], "latent_dim": 16}},
        "decoder": {**TINY_VAE["decoder"], "config": {**TINY_VAE["decoder"]["config"], "latent_dim": 8}}}
FRAMES = 32   # the window: the tiny run configs' data.latent_window


def random_like(shapes, seed: int):
    """Random host values for a tree of ShapeDtypeStructs (no init to compile): fan-in scaled weights,
    1-D parameters near 0 (biases) or 1 (scales, gains)."""
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        if len(s.shape) > 1:
            return rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape).astype(s.dtype)
        near_one = any(k in name for k in ("scale", "gamma", "alpha", "beta", "'g'"))
        return (near_one + rng.normal(0, 0.1, s.shape)).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def tiny_params(config: str, seed: int):
    """(model config, random {"conditioner", "denoiser"} host arrays) of a packaged tiny run config."""
    cfg = load(TrainConfig, ROOT / "configs" / config)
    return cfg.model, random_like(jax.eval_shape(lambda: tm.init_params(cfg.model, jax.random.key(0))), seed)


def tiny_vae():
    from sa_jax.autoencoder import Autoencoder
    from sa_jax.models.autoencoder import AudioAutoencoder, config_from_dict

    config = config_from_dict(VAE8)
    x = jax.ShapeDtypeStruct((1, config.downsampling_ratio, config.io_channels), np.float32)
    shapes = jax.eval_shape(lambda x: AudioAutoencoder(config).init(jax.random.key(0), x, jax.random.key(0)), x)
    return Autoencoder(config, random_like(shapes["params"], 7))


def tiny_sao_model(folder, seed: int = 0) -> Path:
    """A Stable-Audio-Open-family model of configs/train_dit_tiny.yaml's shape with a tiny T5 and VAE."""
    from test_t5 import _tokenizer

    from sa_jax import StableAudio
    from sa_jax.encoders import T5TextEncoder
    from sa_jax.families.sao import SAOFamily
    from sa_jax.models.t5 import T5Config, T5Encoder

    model, params = tiny_params("train_dit_tiny.yaml", seed)
    tok = _tokenizer()
    t5 = T5Config(vocab_size=len(tok), d_model=model.conditioning.text_dim, d_kv=8, d_ff=48, num_layers=1,
                  num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=12)
    ids = np.zeros((1, 4), np.int32)
    t5_params = random_like(jax.eval_shape(lambda: T5Encoder(t5).init(jax.random.key(0), ids, ids > -1))["params"],
                            100 + seed)
    encoder = T5TextEncoder(t5, t5_params, tok, model.conditioning.max_length)
    family = SAOFamily(model.dit, params["denoiser"], model.conditioning, params["conditioner"], encoder)
    ae = tiny_vae()
    return StableAudio(family, ae, FRAMES * ae.downsampling_ratio).save(folder)


def tiny_sa1_model(folder, clap_dir, seed: int = 0) -> Path:
    """A paper-family model of configs/train_unet_tiny.yaml's shape with the tiny CLAP text tower at `clap_dir`
    (tests/test_clap_api.clap_folder) and a tiny VAE."""
    from sa_jax import StableAudio
    from sa_jax.encoders import load_clap_text_encoder
    from sa_jax.families.sa1 import SA1Family

    model, params = tiny_params("train_unet_tiny.yaml", seed)
    text = load_clap_text_encoder(clap_dir, clap_dir, max_length=model.text_tokens)
    family = SA1Family(model.unet, params["denoiser"], params["conditioner"], text, -2, (model.timing, model.timing))
    ae = tiny_vae()
    return StableAudio(family, ae, FRAMES * ae.downsampling_ratio).save(folder)
