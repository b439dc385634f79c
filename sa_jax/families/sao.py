"""Stable Audio Open for `StableAudio`: T5 prompt tokens and two Fourier-feature timing numbers
condition a DiT.

As stable-audio-tools' DiT wrapper with Stable Audio Open's config: conditioning is
{"cross_attn": (batch, tokens, cond_dim), "global": (batch, global_dim)}; CFG's unconditional branch
gets the whole cross-attention tensor zeroed (or a negative prompt's tensor) and the same global
vector; guidance is not rescaled.

Weights: an sa-jax checkpoint (`from_checkpoint`), a diffusers `StableAudioPipeline` folder
(`load_diffusers`), or a stable-audio-tools release (`load_sat`: model_config.json + weights, with
the T5 from its own Hugging Face folder, as the reference downloads it by name).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from sa_jax.config import from_dict, read_json, to_dict
from sa_jax.errors import CheckpointError, ConfigError
from sa_jax.families import TOKENIZER_DIR, Family, Loaded, SamplingDefaults, sat_autoencoder
from sa_jax.nn import DTYPES


class SAOFamily(Family):
    """Stable Audio Open: T5 prompt tokens and two Fourier-feature timing numbers condition a DiT.

    Conditioning is {"cross_attn": (batch, tokens, cond_dim), "global": (batch, global_dim)}. The
    unconditional branch of CFG gets the whole cross-attention tensor zeroed (or a negative
    prompt's tensor) and the same global vector, as stable-audio-tools' DiT does.
    """

    name = "sao"
    title = "an SAO model"
    sections = ("dit", "conditioning", "t5")
    objective = "v"
    trainable_attributes = {"conditioner": "cond_params", "denoiser": "dit_params"}
    cfg_rescale = 0.0  # the DiT wrapper's scale_phi: guidance is not rescaled
    defaults = SamplingDefaults()  # the model card's

    def __init__(self, dit_config, dit_params, cond_config, cond_params, text_encoder, dtype: str = "float32"):
        if text_encoder.config.d_model != cond_config.text_dim:
            raise CheckpointError(f"the T5 encoder is {text_encoder.config.d_model} wide but the conditioners "
                                  f"expect text_dim {cond_config.text_dim}: the T5 folder is not this model's")
        if cond_config.cond_dim != dit_config.cond_token_dim or cond_config.global_dim != dit_config.global_cond_dim:
            raise CheckpointError("the conditioners and the DiT disagree on widths "
                                  f"(cond {cond_config.cond_dim} vs {dit_config.cond_token_dim}, "
                                  f"global {cond_config.global_dim} vs {dit_config.global_cond_dim})")
        concat = sum(1 if i == "inpaint_mask" else dit_config.io_channels for i in cond_config.input_concat_ids)
        if concat != dit_config.input_concat_dim:
            raise CheckpointError(f"the DiT takes {dit_config.input_concat_dim} input-concat channels but the "
                                  f"conditioning's input_concat_ids {list(cond_config.input_concat_ids)} give {concat}")
        self.dit_config, self.cond_config = dit_config, cond_config
        self.dit_params = jax.tree_util.tree_map(jnp.asarray, dit_params)
        self.cond_params = jax.tree_util.tree_map(jnp.asarray, cond_params)
        self.text_encoder = text_encoder
        text_encoder.max_length = cond_config.max_length
        self._network = sao_network(dit_config, dtype)
        self._conditioner = _sao_conditioner(cond_config)

    @property
    def latent_channels(self) -> int:
        return self.dit_config.io_channels

    @property
    def has_inpaint_inputs(self) -> bool:
        """Whether the network takes stable-audio-tools' inpainting inputs (a `diffusion_cond_inpaint`
        checkpoint): `inpaint_mask` and `inpaint_masked_input` concatenated to the noisy latents."""
        return bool(self.cond_config.input_concat_ids)

    def inpaint_inputs(self, known_latents, mask) -> dict:
        """The inputs of an inpainting-trained model, as the reference's `generate_diffusion_cond_inpaint`
        builds them, to merge into both CFG branches' conditioning: {"input_concat": (batch,
        input_concat_dim, frames)}, the `inpaint_mask` (1 where the latents are known and kept, 0 where
        they are generated) and `inpaint_masked_input` (known_latents * mask) channels in the order of the
        checkpoint's input_concat_ids. known_latents: (batch, latent channels, frames); mask: anything
        broadcasting to it, the same for every channel (RePaint's mask of `sa_jax.diffusion.sample`).
        A model without these inputs raises ConfigError."""
        if not self.has_inpaint_inputs:
            return super().inpaint_inputs(known_latents, mask)   # raises
        known = jnp.asarray(known_latents, jnp.float32)
        if known.ndim != 3 or known.shape[1] != self.latent_channels:
            raise ValueError(f"known_latents must be (batch, {self.latent_channels}, frames), got {known.shape}")
        try:
            mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), known.shape)[:, :1, :]
        except ValueError:
            raise ValueError(f"mask of shape {jnp.shape(mask)} does not broadcast to the known latents' "
                             f"{known.shape}") from None
        parts = {"inpaint_mask": mask, "inpaint_masked_input": known * mask}
        return {"input_concat": jnp.concatenate([parts[i] for i in self.cond_config.input_concat_ids], axis=1)}

    def condition(self, prompts: list[str], seconds_start: float, seconds_total: float) -> dict:
        """The conditioning. An inpainting-trained model without `inpaint_inputs` merged in gets an
        all-zero mask and input (nothing known; see `network`), as the reference's
        `generate_diffusion_cond_inpaint` without a mask."""
        text, mask = self.text_encoder(prompts)
        b = len(prompts)
        cross, glob = self._conditioner(self.cond_params, text, mask, jnp.full((b,), seconds_start, jnp.float32),
                                        jnp.full((b,), seconds_total, jnp.float32))
        return {"cross_attn": cross, "global": glob}

    def unconditional(self, cond: dict, negative: dict | None = None) -> dict:
        cross = jnp.zeros_like(cond["cross_attn"]) if negative is None else negative["cross_attn"]
        return {"cross_attn": cross, "global": cond["global"]}

    def network(self) -> Partial:
        """`network(x, t, cond) -> v` with the parameters as pytree leaves (jit arguments)."""
        return Partial(self._network, self.dit_params)

    # --- checkpoint I/O ------------------------------------------------------------------------
    def config_sections(self) -> dict:
        return {"dit": to_dict(self.dit_config), "conditioning": to_dict(self.cond_config),
                "t5": to_dict(self.text_encoder.config)}

    def params(self) -> dict:
        return {"dit": self.dit_params, "conditioner": self.cond_params, "t5": self.text_encoder.params}

    @classmethod
    def from_checkpoint(cls, config: dict, params: dict, folder: Path, dtype: str) -> "SAOFamily":
        from sa_jax.checkpoints.tokenizer import load_tokenizer
        from sa_jax.encoders import T5TextEncoder
        from sa_jax.models.conditioners import ConditioningConfig
        from sa_jax.models.dit import DiTConfig
        from sa_jax.models.t5 import T5Config

        cls.check_sections(config, folder)
        dit = from_dict(DiTConfig, config["dit"], "dit")
        cond = from_dict(ConditioningConfig, config["conditioning"], "conditioning")
        t5 = from_dict(T5Config, config["t5"], "t5")
        tok = folder / TOKENIZER_DIR
        have = [f.name for f in tok.iterdir()] if tok.is_dir() else []
        if not any(n in have for n in ("tokenizer.json", "spiece.model")) or "tokenizer_config.json" not in have:
            raise FileNotFoundError(f"{folder} is missing its T5 tokenizer: expected tokenizer_config.json and "
                                    f"tokenizer.json or spiece.model in {tok}")
        encoder = T5TextEncoder(t5, params["t5"], load_tokenizer(tok), cond.max_length)
        return cls(dit, params["dit"], cond, params["conditioner"], encoder, dtype)


# One function object per (config, dtype), shared by every model loaded with that shape, so the
# jitted sampling loop and conditioner compile once per shape rather than once per load.
@functools.lru_cache(maxsize=None)
def sao_network(dit_config, dtype: str):
    from sa_jax.models.dit import make_denoiser

    dit = make_denoiser(dit_config, DTYPES[dtype])
    concat = dit_config.input_concat_dim

    def network(params, x, t, cond):
        extra = cond.get("input_concat")
        if concat and extra is None:  # an inpainting model with nothing known: zero mask and input
            extra = jnp.zeros((x.shape[0], concat, x.shape[2]), jnp.float32)
        return dit(params, x, t, cond["cross_attn"], cond["global"], extra)

    return network


@functools.lru_cache(maxsize=None)
def _sao_conditioner(cond_config):
    from sa_jax.models.conditioners import make_conditioner

    return jax.jit(make_conditioner(cond_config))


# --------------------------------------------------------------------------------------------
# Foreign formats


def load_diffusers(path: Path, dtype: str) -> Loaded:
    """A diffusers `StableAudioPipeline` folder (transformer/, projection_model/, text_encoder/,
    tokenizer/, vae/; scheduler/ is read only for sigma_min / sigma_max)."""
    from sa_jax.autoencoder import Autoencoder
    from sa_jax.checkpoints import sao
    from sa_jax.encoders import T5TextEncoder

    loaded = sao.load_diffusers_pipeline(path)
    (dit_cfg, dit_params), (cond_cfg, cond_params) = loaded["dit"], loaded["conditioning"]
    encoder = T5TextEncoder(*loaded["t5"], loaded["tokenizer"], cond_cfg.max_length)
    family = SAOFamily(dit_cfg, dit_params, cond_cfg, cond_params, encoder, dtype)
    autoencoder = Autoencoder.load(path, dtype=dtype)
    frames = int(read_json(path / "transformer" / "config.json").get("sample_size", 1024))
    defaults = SAOFamily.defaults
    scheduler = path / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():  # the noise range the pipeline was shipped with
        s = read_json(scheduler)
        defaults = from_dict(SamplingDefaults, {"sigma_min": s.get("sigma_min", defaults.sigma_min),
                                                "sigma_max": s.get("sigma_max", defaults.sigma_max)})
    return Loaded(family, autoencoder, frames * autoencoder.downsampling_ratio, defaults)


def load_sat(path: Path, model_config: dict, t5: str | Path | None, dtype: str) -> Loaded:
    """A stable-audio-tools Stable Audio Open folder (`model_config` read from its model_config.json)
    with its T5 from `t5` (a local Hugging Face T5 folder) or from a `t5/` folder inside it."""
    from sa_jax.autoencoder import find_sat_weights
    from sa_jax.checkpoints import sao
    from sa_jax.checkpoints.io import read_state_dict
    from sa_jax.encoders import T5TextEncoder

    dit_cfg, cond_cfg, t5_name = sao.sat_model_configs(model_config)
    if t5 is None:
        if not (path / "t5").is_dir():
            raise FileNotFoundError(
                f"{path} is a stable-audio-tools checkpoint, whose T5 text encoder ({t5_name}) is not stored in "
                f"its weights: pass t5=PATH (--t5 PATH) to a local Hugging Face {t5_name} folder (config.json, "
                f"model.safetensors, tokenizer.json or spiece.model, tokenizer_config.json), or put one at "
                f"{path / 't5'}")
        t5 = path / "t5"
    encoder = T5TextEncoder.load(t5, max_length=cond_cfg.max_length)  # names missing files first
    weights = find_sat_weights(path)
    state = sao.unwrap_training_state(read_state_dict(weights))     # one read for the DiT and the VAE
    out = sao.import_sat_checkpoint(state, dit_cfg, cond_cfg, source=str(weights))
    autoencoder = sat_autoencoder(model_config, state, weights, dtype)
    del state
    family = SAOFamily(dit_cfg, out["dit"], cond_cfg, out["conditioners"], encoder, dtype)
    if "sample_size" not in model_config:
        raise ConfigError(f"{path / 'model_config.json'} has no sample_size (the generation window in samples)")
    return Loaded(family, autoencoder, int(model_config["sample_size"]), SAOFamily.defaults)
