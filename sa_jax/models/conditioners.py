"""Stable Audio Open conditioning: timing numbers, text tokens, and their assembly for the DiT.

As stable-audio-tools' `NumberConditioner` / `T5Conditioner` / `ConditionedDiffusionModelWrapper`
(and diffusers' `StableAudioProjectionModel` + the pipeline's assembly):

* a number conditioner clamps its float to [min_val, max_val], rescales it to [0, 1], and embeds
  it with learned Fourier features: [x, sin(2 pi x w), cos(2 pi x w)] (1 + 2 * 128 features)
  -> Linear -> one token (batch, 1, cond_dim);
* the text tokens (T5, padding positions zeroed) optionally go through a linear projection when
  the encoder width differs from cond_dim (SAO: 768 = 768, no projection);
* cross-attention tokens = concatenation over the sequence of the `cross_attn_ids` conditioners
  (SAO: prompt, seconds_start, seconds_total -> 128 + 1 + 1 tokens);
* global conditioning = concatenation over channels of the `global_ids` conditioners
  (SAO: seconds_start, seconds_total -> 1536).
* classifier-free guidance dropout (training only; sa_jax.training.model.cfg_drop / predict): each batch
  item's whole cross-attention tensor becomes zeros with probability p; the global conditioning is never
  dropped.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax.errors import ConfigError
from sa_jax.tree import flat_shapes

Dtype = Any

NUMBER_IDS = ("seconds_start", "seconds_total")
ALL_IDS = ("prompt",) + NUMBER_IDS
INPAINT_IDS = ("inpaint_mask", "inpaint_masked_input")  # set by the sampler, not computed from prompts


@dataclass(frozen=True)
class NumberConditionerConfig:
    min_val: float = 0.0
    max_val: float = 512.0
    fourier_dim: int = 256      # 2 x learned frequencies; the Linear sees fourier_dim + 1 inputs

    def validate(self) -> None:
        if not self.max_val > self.min_val:
            raise ConfigError(f"number conditioner: max_val {self.max_val} must exceed min_val {self.min_val}")
        if self.fourier_dim <= 0 or self.fourier_dim % 2:
            raise ConfigError(f"number conditioner: fourier_dim must be positive and even, got {self.fourier_dim}")


@dataclass(frozen=True)
class ConditioningConfig:
    """The conditioning of a Stable Audio Open model. Defaults are SAO 1.0's."""

    cond_dim: int = 768
    text_dim: int = 768                 # width of the text encoder's output
    text_projection: bool = False       # a Linear(text_dim -> cond_dim) with bias on the text tokens
    max_length: int = 128               # text tokens
    seconds_start: NumberConditionerConfig = field(default_factory=NumberConditionerConfig)
    seconds_total: NumberConditionerConfig = field(default_factory=NumberConditionerConfig)
    cross_attn_ids: tuple[str, ...] = ("prompt", "seconds_start", "seconds_total")
    global_ids: tuple[str, ...] = ("seconds_start", "seconds_total")
    # Inputs concatenated to the noisy latents as channels: stable-audio-tools' inpainting-trained
    # (`diffusion_cond_inpaint`) models take ("inpaint_mask", "inpaint_masked_input"); () for the others.
    input_concat_ids: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.text_dim != self.cond_dim and not self.text_projection:
            raise ConfigError(f"conditioning: text_dim {self.text_dim} differs from cond_dim {self.cond_dim}; "
                              "set text_projection: true")
        for name, ids, allowed in (("cross_attn_ids", self.cross_attn_ids, ALL_IDS),
                                   ("global_ids", self.global_ids, NUMBER_IDS),
                                   ("input_concat_ids", self.input_concat_ids, INPAINT_IDS)):
            bad = [i for i in ids if i not in allowed]
            if bad:
                raise ConfigError(f"conditioning: {name} has unknown id(s) {bad}; allowed: {list(allowed)}")
        if len(set(self.input_concat_ids)) != len(self.input_concat_ids):
            raise ConfigError(f"conditioning: input_concat_ids repeats an id: {list(self.input_concat_ids)}")
        if not self.cross_attn_ids:
            raise ConfigError("conditioning: cross_attn_ids must not be empty")
        if self.max_length <= 0:
            raise ConfigError(f"conditioning: max_length must be positive, got {self.max_length}")

    @property
    def cross_attn_tokens(self) -> int:
        return sum(self.max_length if i == "prompt" else 1 for i in self.cross_attn_ids)

    @property
    def global_dim(self) -> int:
        return self.cond_dim * len(self.global_ids)

    def replace(self, **changes) -> "ConditioningConfig":
        return dataclasses.replace(self, **changes)


class NumberEmbedder(nn.Module):
    """x in [0, 1] (batch,) -> (batch, features): Linear([x, sin(2 pi x w), cos(2 pi x w)])."""

    features: int
    fourier_dim: int = 256

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param("weights", nn.initializers.normal(1.0), (self.fourier_dim // 2,), jnp.float32)
        x = x.astype(jnp.float32)[:, None]
        f = x * w[None, :] * 2 * math.pi
        h = jnp.concatenate([x, jnp.sin(f), jnp.cos(f)], axis=-1)
        return nn.Dense(self.features, param_dtype=jnp.float32, name="proj",
                        kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"))(h)


class NumberConditioner(nn.Module):
    """Floats (batch,) -> one token each (batch, 1, features)."""

    features: int
    config: NumberConditionerConfig = NumberConditionerConfig()

    @nn.compact
    def __call__(self, values: jax.Array) -> jax.Array:
        c = self.config
        v = jnp.clip(jnp.asarray(values, jnp.float32), c.min_val, c.max_val)
        v = (v - c.min_val) / (c.max_val - c.min_val)
        return NumberEmbedder(self.features, c.fourier_dim, name="embedder")(v)[:, None, :]


class SAOConditioner(nn.Module):
    """(text embeddings, text mask, seconds_start, seconds_total) -> (cross_attn_cond, global_cond).

    text_embeds: (batch, max_length, text_dim) from the text encoder; text_mask: (batch, max_length),
    True at real tokens (padding positions are zeroed here, after the optional projection, as the
    reference does); seconds_*: (batch,) floats.
    Returns cross_attn_cond (batch, cross_attn_tokens, cond_dim) and global_cond (batch, global_dim).
    """

    config: ConditioningConfig = ConditioningConfig()

    @nn.compact
    def __call__(self, text_embeds: jax.Array, text_mask: jax.Array, seconds_start: jax.Array,
                 seconds_total: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = self.config
        b = text_embeds.shape[0]
        text = text_embeds.astype(jnp.float32)
        if c.text_projection:
            text = nn.Dense(c.cond_dim, param_dtype=jnp.float32, name="prompt_proj")(text)
        text = text * jnp.asarray(text_mask)[..., None].astype(text.dtype)
        tokens = {"prompt": text}
        for name, values in (("seconds_start", seconds_start), ("seconds_total", seconds_total)):
            values = jnp.broadcast_to(jnp.asarray(values, jnp.float32), (b,))
            tokens[name] = NumberConditioner(c.cond_dim, getattr(c, name), name=name)(values)
        cross = jnp.concatenate([tokens[i] for i in c.cross_attn_ids], axis=1)
        if c.global_ids:
            glob = jnp.concatenate([tokens[i][:, 0] for i in c.global_ids], axis=-1)
        else:
            glob = jnp.zeros((b, 0), jnp.float32)
        return cross, glob


def init_params(config: ConditioningConfig, key: jax.Array) -> dict:
    z = jnp.zeros((1,))
    text = jnp.zeros((1, config.max_length, config.text_dim))
    mask = jnp.ones((1, config.max_length), bool)
    return jax.jit(lambda k: SAOConditioner(config).init(k, text, mask, z, z)["params"])(key)


def param_shapes(config: ConditioningConfig) -> dict[str, tuple[int, ...]]:
    tree = jax.eval_shape(lambda k: init_params(config, k), jax.random.key(0))
    return flat_shapes(tree)


def make_conditioner(config: ConditioningConfig):
    """`apply(params, text_embeds, text_mask, seconds_start, seconds_total) -> (cross_attn_cond,
    global_cond)`, a pure function of the SAO conditioner."""
    model = SAOConditioner(config)

    def apply(params, text_embeds, text_mask, seconds_start, seconds_total):
        return model.apply({"params": params}, text_embeds, text_mask, seconds_start, seconds_total)

    return apply
