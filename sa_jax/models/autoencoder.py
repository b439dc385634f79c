"""The Stable Audio autoencoders as Flax modules: Oobleck (Stable Audio Open, 2048x) and the
DAC-style VAE (Stable Audio 1.0, 1024x), with the VAE bottleneck.

The config schema mirrors stable-audio-tools' `model_config.json` (an `encoder` and a `decoder`
entry, each `{type, config}`, plus `bottleneck`, `latent_dim`, `downsampling_ratio`,
`io_channels`), with the reference constructors' defaults, so that its files load as they are.
Modules take and return channels-last audio, (batch, time, channels).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax.config import from_dict
from sa_jax.errors import ConfigError
from sa_jax.nn.layers import ACTIVATIONS, Conv1d, ConvTranspose1d

# ---------------------------------------------------------------------------------------------
# Config schema (defaults are the stable-audio-tools constructors' defaults)


@dataclass(frozen=True)
class OobleckEncoderConfig:
    in_channels: int = 2
    channels: int = 128
    latent_dim: int = 32
    c_mults: tuple[int, ...] = (1, 2, 4, 8)
    strides: tuple[int, ...] = (2, 4, 8, 8)
    use_snake: bool = False
    antialias_activation: bool = False

    def validate(self):
        if len(self.c_mults) != len(self.strides):
            raise ConfigError(f"oobleck encoder: c_mults {self.c_mults} and strides {self.strides} "
                              "must have the same length")
        if self.antialias_activation:
            raise ConfigError("oobleck encoder: antialias_activation=true is not supported by sa-jax")


@dataclass(frozen=True)
class OobleckDecoderConfig:
    out_channels: int = 2
    channels: int = 128
    latent_dim: int = 32
    c_mults: tuple[int, ...] = (1, 2, 4, 8)
    strides: tuple[int, ...] = (2, 4, 8, 8)
    use_snake: bool = False
    antialias_activation: bool = False
    use_nearest_upsample: bool = False
    final_tanh: bool = True

    def validate(self):
        if len(self.c_mults) != len(self.strides):
            raise ConfigError(f"oobleck decoder: c_mults {self.c_mults} and strides {self.strides} "
                              "must have the same length")
        if self.antialias_activation or self.use_nearest_upsample:
            raise ConfigError("oobleck decoder: antialias_activation and use_nearest_upsample are not "
                              "supported by sa-jax; both must be false")


@dataclass(frozen=True)
class DACEncoderConfig:
    in_channels: int = 1
    latent_dim: int | None = None  # None: no 1x1 projection after the DAC encoder
    d_model: int = 64
    strides: tuple[int, ...] = (2, 4, 8, 8)


@dataclass(frozen=True)
class DACDecoderConfig:
    latent_dim: int = 64
    out_channels: int = 1
    channels: int = 1536
    rates: tuple[int, ...] = (8, 8, 4, 2)


_ENCODERS = {"oobleck": OobleckEncoderConfig, "dac": DACEncoderConfig}
_DECODERS = {"oobleck": OobleckDecoderConfig, "dac": DACDecoderConfig}


@dataclass(frozen=True)
class EncoderSpec:
    type: Literal["oobleck", "dac"] = "oobleck"
    config: Any = field(default_factory=dict)
    requires_grad: bool = True  # training flag of the reference; kept so its files load

    def __post_init__(self):
        object.__setattr__(self, "config", from_dict(_ENCODERS[self.type], self.config, "encoder.config"))


@dataclass(frozen=True)
class DecoderSpec:
    type: Literal["oobleck", "dac"] = "oobleck"
    config: Any = field(default_factory=dict)
    requires_grad: bool = True
    soft_clip: bool = False

    def __post_init__(self):
        object.__setattr__(self, "config", from_dict(_DECODERS[self.type], self.config, "decoder.config"))
        if self.soft_clip:
            raise ConfigError("decoder.soft_clip=true is not supported by sa-jax")


@dataclass(frozen=True)
class BottleneckSpec:
    type: Literal["vae"] = "vae"
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AutoencoderConfig:
    encoder: EncoderSpec
    decoder: DecoderSpec
    latent_dim: int = 64
    downsampling_ratio: int = 2048
    io_channels: int = 2
    sample_rate: int = 44100
    bottleneck: BottleneckSpec = BottleneckSpec()
    # A latent scale factor (stable-audio-tools' pretransform `scale`); 1.0 for both released VAEs.
    scale: float = 1.0
    in_channels: int | None = None  # reference fields for autoencoders with their own pretransform
    out_channels: int | None = None

    def validate(self):
        enc, dec = self.encoder.config, self.decoder.config
        strides = enc.strides
        if math.prod(strides) != self.downsampling_ratio:
            raise ConfigError(f"autoencoder: encoder strides {strides} multiply to {math.prod(strides)}, "
                              f"but downsampling_ratio is {self.downsampling_ratio}")
        dec_rates = dec.strides if isinstance(dec, OobleckDecoderConfig) else dec.rates
        if math.prod(dec_rates) != self.downsampling_ratio:
            raise ConfigError(f"autoencoder: decoder upsampling {dec_rates} multiplies to "
                              f"{math.prod(dec_rates)}, but downsampling_ratio is {self.downsampling_ratio}")
        if encoder_out_channels(enc) != 2 * self.latent_dim:
            raise ConfigError(f"autoencoder: a VAE encoder must emit 2 x latent_dim = {2 * self.latent_dim} "
                              f"channels (mean and scale), this one emits {encoder_out_channels(enc)}")
        if dec.latent_dim != self.latent_dim:
            raise ConfigError(f"autoencoder: decoder latent_dim {dec.latent_dim} != latent_dim {self.latent_dim}")
        if enc.in_channels != self.io_channels or dec.out_channels != self.io_channels:
            raise ConfigError(f"autoencoder: encoder in_channels {enc.in_channels} and decoder out_channels "
                              f"{dec.out_channels} must equal io_channels {self.io_channels}")
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) not in (None, self.io_channels):
                raise ConfigError(f"autoencoder: {name}={getattr(self, name)} differs from io_channels "
                                  f"{self.io_channels}; nested pretransforms are not supported by sa-jax")
        if self.sample_rate <= 0:
            raise ConfigError(f"autoencoder: sample_rate must be positive, got {self.sample_rate}")


def encoder_out_channels(enc) -> int:
    if isinstance(enc, OobleckEncoderConfig):
        return enc.latent_dim
    return enc.latent_dim if enc.latent_dim is not None else enc.d_model * 2 ** len(enc.strides)


# ---------------------------------------------------------------------------------------------
# Modules


class ResidualUnit(nn.Module):
    """act, conv(k7, dilation d), act, conv(k1), plus the input."""

    channels: int
    dilation: int
    activation: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        y = act(name="act1")(x)
        y = Conv1d(self.channels, 7, dilation=self.dilation, padding=3 * self.dilation,
                   dtype=self.dtype, name="conv1")(y)
        y = act(name="act2")(y)
        y = Conv1d(self.channels, 1, dtype=self.dtype, name="conv2")(y)
        return x + y


def _residual_stack(x, channels, activation, dtype):
    for i, dilation in enumerate((1, 3, 9)):
        x = ResidualUnit(channels, dilation, activation, dtype, name=f"res{i}")(x)
    return x


class EncoderBlock(nn.Module):
    """Three residual units at the input width, then act and a strided conv (kernel 2s)."""

    in_channels: int
    out_channels: int
    stride: int
    activation: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _residual_stack(x, self.in_channels, self.activation, self.dtype)
        x = ACTIVATIONS[self.activation](name="act")(x)
        return Conv1d(self.out_channels, 2 * self.stride, stride=self.stride,
                      padding=math.ceil(self.stride / 2), dtype=self.dtype, name="down")(x)


class DecoderBlock(nn.Module):
    """act, a transposed conv (kernel 2s, stride s), then three residual units."""

    out_channels: int
    stride: int
    activation: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = ACTIVATIONS[self.activation](name="act")(x)
        x = ConvTranspose1d(self.out_channels, 2 * self.stride, stride=self.stride,
                            padding=math.ceil(self.stride / 2), dtype=self.dtype, name="up")(x)
        return _residual_stack(x, self.out_channels, self.activation, self.dtype)


class Encoder(nn.Module):
    """Audio (B, T, C) -> pre-bottleneck features (B, T / ratio, 2 x latent_dim)."""

    spec: EncoderSpec
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.spec.config
        if self.spec.type == "oobleck":
            act = "snake_beta" if c.use_snake else "elu"
            widths = [c.channels * m for m in (1, *c.c_mults)]
            out_features = c.latent_dim
        else:  # DAC: the width doubles at each block
            act = "snake"
            widths = [c.d_model * 2 ** i for i in range(len(c.strides) + 1)]
            out_features = widths[-1]
        x = Conv1d(widths[0], 7, padding=3, dtype=self.dtype, name="conv_in")(x)
        for i, stride in enumerate(c.strides):
            x = EncoderBlock(widths[i], widths[i + 1], stride, act, self.dtype, name=f"block{i}")(x)
        x = ACTIVATIONS[act](name="act_out")(x)
        x = Conv1d(out_features, 3, padding=1, dtype=self.dtype, name="conv_out")(x)
        if self.spec.type == "dac" and c.latent_dim is not None:
            # stable-audio-tools' DAC wrapper adds a plain (not weight-normed) 1x1 projection.
            x = Conv1d(c.latent_dim, 1, weight_norm=False, dtype=self.dtype, name="proj_out")(x)
        return x


class Decoder(nn.Module):
    """Latents (B, frames, latent_dim) -> audio (B, frames x ratio, C)."""

    spec: DecoderSpec
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        c = self.spec.config
        if self.spec.type == "oobleck":
            act = "snake_beta" if c.use_snake else "elu"
            widths = [c.channels * m for m in (1, *c.c_mults)][::-1]
            strides = c.strides[::-1]
            final_bias, final_tanh = False, c.final_tanh
        else:  # DAC: the width halves at each block; the reference always ends in tanh
            act = "snake"
            widths = [c.channels // 2 ** i for i in range(len(c.rates) + 1)]
            strides = c.rates
            final_bias, final_tanh = True, True
        x = Conv1d(widths[0], 7, padding=3, dtype=self.dtype, name="conv_in")(z)
        for i, stride in enumerate(strides):
            x = DecoderBlock(widths[i + 1], stride, act, self.dtype, name=f"block{i}")(x)
        x = ACTIVATIONS[act](name="act_out")(x)
        x = Conv1d(c.out_channels, 7, padding=3, use_bias=final_bias, dtype=self.dtype, name="conv_out")(x)
        return jnp.tanh(x) if final_tanh else x


def vae_stats(h: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Split encoder features (..., 2D) into the posterior mean and std = softplus(scale) + 1e-4."""
    mean, scale = jnp.split(h.astype(jnp.float32), 2, axis=-1)
    return mean, jax.nn.softplus(scale) + 1e-4


def vae_kl(mean: jax.Array, std: jax.Array) -> jax.Array:
    """KL to N(0, 1) as the reference computes it: (mean^2 + var - log var - 1) summed over the
    latent channels (the last axis here), averaged over batch and time."""
    var = std * std
    return jnp.mean(jnp.sum(mean * mean + var - jnp.log(var) - 1.0, axis=-1))


class AudioAutoencoder(nn.Module):
    """Encoder + VAE bottleneck + decoder. Channels-last throughout."""

    config: AutoencoderConfig
    dtype: Any = jnp.float32

    def setup(self):
        self.encoder = Encoder(self.config.encoder, self.dtype)
        self.decoder = Decoder(self.config.decoder, self.dtype)

    def encode_stats(self, audio):
        return vae_stats(self.encoder(audio))

    def decode(self, z):
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, audio, key):
        """Training forward: (reconstruction, latents, kl)."""
        mean, std = self.encode_stats(audio)
        z = mean + std * jax.random.normal(key, mean.shape, mean.dtype)
        return self.decode(z), z, vae_kl(mean, std)


def config_from_dict(data: dict) -> AutoencoderConfig:
    return from_dict(AutoencoderConfig, data, "autoencoder")


def replace(config: AutoencoderConfig, **changes) -> AutoencoderConfig:
    return dataclasses.replace(config, **changes)
