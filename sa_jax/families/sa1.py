"""Stable Audio 1.0, the paper's model family, for `StableAudio`: CLAP text tokens and integer
timing embeddings condition the 1-D U-Net.

As stable-audio-tools' `UNetCFG1DWrapper` with the paper's config: the cross-attention context
is [77 CLAP tokens from the penultimate text layer, seconds_start, seconds_total] with the CLAP
attention mask extended by ones; CFG's unconditional branch replaces the whole context with the
U-Net's learned null embedding (a negative prompt replaces it where the negative prompt has
tokens) and keeps the conditional mask; the guided output is rescaled with phi = 0.4.

Weights: a stable-audio-tools checkpoint with the paper's `model_config.json` (`model.model.*`
the U-Net, `conditioner.conditioners.seconds_*` the timing tables, `pretransform.model.*` the
VAE) plus the CLAP model from its own file, as the reference loads it (`clap_ckpt_path`): a LAION
`.pt` with a local RoBERTa tokenizer folder, or a transformers `ClapModel` folder.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from sa_jax.config import from_dict, to_dict
from sa_jax.errors import CheckpointError, ConfigError
from sa_jax.families import TOKENIZER_DIR, Family, Loaded, SamplingDefaults, sat_autoencoder
from sa_jax.models.sa1_conditioning import IntConditionerConfig, SA1Conditioner
from sa_jax.models.unet import UNet1d, UNetConfig, null_embedding
from sa_jax.nn import DTYPES

CLAP_TOKENS = 77

# The paper: DPM-Solver++ with 100 steps and CFG 6 (stable-audio-tools' demo range is 3-9).
SAMPLING_DEFAULTS = {"sampler": "dpmpp-3m-sde", "steps": 100, "cfg_scale": 6.0, "sigma_min": 0.3,
                     "sigma_max": 500.0, "rho": 1.0}


class SA1Family(Family):
    """Conditioning is {"embedding": (batch, 79, cond_dim), "mask": (batch, 79) bool}."""

    name = "sa1"
    title = "a Stable Audio 1.0 model"
    sections = ("unet", "clap_text", "timing")
    objective = "v"
    trainable_attributes = {"conditioner": "timing_params", "denoiser": "unet_params"}
    cfg_rescale = 0.4  # UNetCFG1d's scale_phi, applied whenever the reference guides
    defaults = SamplingDefaults(**SAMPLING_DEFAULTS)
    timing_range = (0, 512)

    def __init__(self, unet_config: UNetConfig, unet_params, timing_params, text_encoder,
                 text_layer: int = -2, timing: tuple[IntConditionerConfig, IntConditionerConfig] | None = None,
                 dtype: str = "float32"):
        width = text_encoder.config.hidden_size
        if width != unet_config.context_embedding_features:
            raise CheckpointError(f"the CLAP text tower is {width} wide but the U-Net attends to "
                                  f"{unet_config.context_embedding_features}-d tokens")
        if text_encoder.max_length + 2 > unet_config.context_length:
            raise CheckpointError(f"{text_encoder.max_length} text tokens + 2 timing tokens exceed the U-Net's "
                                  f"context of {unet_config.context_length}")
        self.unet_config = unet_config
        self.unet_params = jax.tree_util.tree_map(jnp.asarray, unet_params)
        self.timing_params = jax.tree_util.tree_map(jnp.asarray, timing_params)
        self.text_encoder, self.text_layer = text_encoder, text_layer
        self.timing = timing or (IntConditionerConfig(), IntConditionerConfig())
        self.timing_range = (self.timing[1].min_val, self.timing[1].max_val)
        self._network = sa1_network(unet_config, dtype)
        self._conditioner = _sa1_conditioner(width, *self.timing)

    @property
    def latent_channels(self) -> int:
        return self.unet_config.in_channels

    def condition(self, prompts: list[str], seconds_start: float, seconds_total: float) -> dict:
        lo, hi = self.timing_range
        for name, value in (("seconds_start", seconds_start), ("seconds_total", seconds_total)):
            if not lo <= value <= hi:
                raise ValueError(f"{name} = {value:g} is outside this model's timing embeddings ({lo}..{hi} s)")
        states, mask = self.text_encoder(prompts)
        b = len(prompts)
        embedding, full_mask = self._conditioner(self.timing_params, states[self.text_layer], mask,
                                                 jnp.full((b,), int(seconds_start)), jnp.full((b,), int(seconds_total)))
        return {"embedding": embedding, "mask": full_mask}

    def unconditional(self, cond: dict, negative: dict | None = None) -> dict:
        b, n = cond["embedding"].shape[:2]
        null = null_embedding(self.unet_params, b, n)
        if negative is not None:
            null = jnp.where(negative["mask"][..., None], negative["embedding"], null)
        return {"embedding": null, "mask": cond["mask"]}

    def network(self) -> Partial:
        """`network(x (B, C, T), t, cond) -> v (B, C, T)` with the parameters as pytree leaves."""
        return Partial(self._network, self.unet_params)

    # --- checkpoint I/O ------------------------------------------------------------------------
    def config_sections(self) -> dict:
        return {"unet": to_dict(self.unet_config), "clap_text": to_dict(self.text_encoder.config),
                "text_layer": self.text_layer, "text_tokens": self.text_encoder.max_length,
                "timing": [to_dict(t) for t in self.timing]}

    def params(self) -> dict:
        return {"unet": self.unet_params, "timing": self.timing_params, "clap_text": self.text_encoder.params}

    @classmethod
    def from_checkpoint(cls, config: dict, params: dict, folder: Path, dtype: str) -> "SA1Family":
        from sa_jax.checkpoints.tokenizer import load_tokenizer
        from sa_jax.encoders import TextEncoder
        from sa_jax.models.bert import BertConfig
        from sa_jax.models.unet import config_from_dict

        cls.check_sections(config, folder)
        text = TextEncoder(from_dict(BertConfig, config["clap_text"], "clap_text"), params["clap_text"],
                           load_tokenizer(Path(folder) / TOKENIZER_DIR), config.get("text_tokens", CLAP_TOKENS),
                           what="CLAP text encoder")
        timing = tuple(from_dict(IntConditionerConfig, t, "timing") for t in config["timing"])
        return cls(config_from_dict(config["unet"]), params["unet"], params["timing"], text,
                   config.get("text_layer", -2), timing, dtype)


@functools.lru_cache(maxsize=None)
def sa1_network(unet_config: UNetConfig, dtype: str):
    unet = UNet1d(unet_config, dtype=DTYPES[dtype])

    def network(params, x, t, cond):
        v = unet.apply({"params": params}, jnp.swapaxes(x, 1, 2), t, cond["embedding"], cond["mask"])
        return jnp.swapaxes(v, 1, 2)

    return network


@functools.lru_cache(maxsize=None)
def _sa1_conditioner(width: int, start: IntConditionerConfig, total: IntConditionerConfig):
    module = SA1Conditioner(width, start, total)
    return jax.jit(lambda p, text, mask, s, t: module.apply({"params": p}, text, mask, s, t))


def sat_sections(model_config: dict) -> tuple[UNetConfig, dict, tuple[IntConditionerConfig, IntConditionerConfig]]:
    """(U-Net config, CLAP conditioner settings, timing configs) from a paper-style model_config.json."""
    from sa_jax.models.unet import config_from_dict

    model = model_config["model"]
    diffusion = model.get("diffusion", {})
    if diffusion.get("type") != "adp_cfg_1d":
        raise ConfigError(f"not a Stable Audio 1.0 (adp_cfg_1d) model: diffusion type {diffusion.get('type')!r}")
    unet = config_from_dict(diffusion["config"])
    conditioners = {c["id"]: c for c in model.get("conditioning", {}).get("configs", [])}
    ids = tuple(diffusion.get("cross_attention_cond_ids", ()))
    if ids != ("prompt", "seconds_start", "seconds_total"):
        raise ConfigError(f"cross_attention_cond_ids {list(ids)}: sa-jax's Stable Audio 1.0 family needs "
                          "['prompt', 'seconds_start', 'seconds_total']")
    prompt = conditioners.get("prompt", {})
    if prompt.get("type") != "clap_text" or not prompt.get("config", {}).get("use_text_features", False):
        raise ConfigError("the prompt conditioner must be clap_text with use_text_features: true")
    timing = []
    for name in ("seconds_start", "seconds_total"):
        c = conditioners.get(name, {})
        if c.get("type") != "int":
            raise ConfigError(f"the {name} conditioner must be of type 'int', got {c.get('type')!r}")
        timing.append(from_dict(IntConditionerConfig, {k: v for k, v in c.get("config", {}).items()
                                                       if k in ("min_val", "max_val")}, name))
    return unet, prompt["config"], tuple(timing)


def load_sat(folder: Path, model_config: dict, clap: str | Path | None, clap_tokenizer: str | Path | None,
             dtype: str) -> Loaded:
    """A stable-audio-tools Stable Audio 1.0 folder (`model_config` read from its model_config.json)
    with its CLAP model from `clap` (and `clap_tokenizer` for a LAION .pt)."""
    from sa_jax.autoencoder import find_sat_weights
    from sa_jax.checkpoints import unet as unet_importer
    from sa_jax.checkpoints.io import read_state_dict
    from sa_jax.checkpoints.unet import timing_from_sat
    from sa_jax.encoders import load_clap_text_encoder

    folder = Path(folder)
    unet_config, prompt, timing = sat_sections(model_config)
    clap = clap or prompt.get("clap_ckpt_path")
    if clap is None or not Path(clap).exists():
        raise FileNotFoundError(f"the CLAP model is not in the checkpoint; pass clap= (a LAION .pt or a transformers "
                                f"ClapModel folder); the config names {prompt.get('clap_ckpt_path')!r}")
    if clap_tokenizer is None and Path(clap).is_dir():
        clap_tokenizer = clap
    if clap_tokenizer is None:
        raise FileNotFoundError("a LAION .pt holds no tokenizer: pass clap_tokenizer= (a local roberta-base "
                                "tokenizer folder)")
    weights = find_sat_weights(folder)
    state = read_state_dict(weights)
    unet_params = unet_importer.from_sat(state, unet_config, str(weights), prefix="model.model.")
    timing_params = timing_from_sat(state, unet_config.context_embedding_features)
    autoencoder = sat_autoencoder(model_config, state, weights, dtype)
    text = load_clap_text_encoder(clap, clap_tokenizer, max_length=CLAP_TOKENS)
    family = SA1Family(unet_config, unet_params, timing_params, text, prompt.get("feature_layer_ix", -2),
                       timing, dtype)
    return Loaded(family, autoencoder, int(model_config.get("sample_size", 4194304)), SA1Family.defaults)
