"""The multi-scale STFT discriminator of the VAE's adversarial loss (EnCodec's MS-STFT
discriminator, stable-audio-tools' `EncodecDiscriminator`), in Flax Linen.

One sub-discriminator per STFT resolution. Each takes the complex spectrogram of every audio channel
(Hann window, no centring, scaled by 1 / sqrt(sum window^2), as torchaudio's `normalized=True`),
stacks real parts then imaginary parts as image channels, and runs weight-normalised 2-D convs over
(frames, frequency): a (3, 9) conv, one (3, 9) conv per time dilation (1, 2, 4), a (3, 3) conv, each
followed by LeakyReLU(0.2) and kept as a feature map, then a (3, 3) conv to the logits.

    disc = MultiScaleSTFTDiscriminator(DiscriminatorConfig(in_channels=2))
    logits, features = disc.apply({"params": p}, audio)   # audio (batch, time, channels)
    # logits[i]: (batch, frames_i, freq_i, 1); features[i]: list of (batch, frames_i, freq_i, filters)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.errors import ConfigError
from sa_jax.nn.spectral import hann_window, stft

REFERENCE_FFTS = (2048, 1024, 512, 256, 128)   # stable-audio-tools' SA 1.0 VAE recipe


@dataclass(frozen=True)
class DiscriminatorConfig:
    """stable-audio-tools' `loss_configs.discriminator.config` for `type: encodec` (the
    DiscriminatorSTFT constructor's defaults otherwise); `in_channels` is the audio's channels."""

    filters: int = 32
    n_ffts: tuple[int, ...] = REFERENCE_FFTS
    hop_lengths: tuple[int, ...] = tuple(n // 4 for n in REFERENCE_FFTS)
    win_lengths: tuple[int, ...] = REFERENCE_FFTS
    in_channels: int = 2
    out_channels: int = 1
    max_filters: int = 1024
    filters_scale: int = 1
    kernel_size: tuple[int, int] = (3, 9)
    dilations: tuple[int, ...] = (1, 2, 4)
    stride: tuple[int, int] = (1, 1)
    normalized: bool = True
    negative_slope: float = 0.2
    normalize_losses: bool = False   # feature matching divided by mean |real feature| + 1e-3

    def validate(self) -> None:
        n = len(self.n_ffts)
        if n == 0 or len(self.hop_lengths) != n or len(self.win_lengths) != n:
            raise ConfigError(f"discriminator: n_ffts {list(self.n_ffts)}, hop_lengths {list(self.hop_lengths)} "
                              f"and win_lengths {list(self.win_lengths)} must be non-empty and of equal length")
        for f, h, w in zip(self.n_ffts, self.hop_lengths, self.win_lengths):
            if f <= 0 or h <= 0 or w <= 0 or w > f:
                raise ConfigError(f"discriminator: each scale needs positive sizes and win_length <= n_fft; "
                                  f"got n_fft {f}, hop {h}, win {w}")
        if self.filters <= 0 or self.in_channels <= 0 or self.out_channels <= 0:
            raise ConfigError("discriminator: filters, in_channels and out_channels must be positive")
        if self.filters_scale != 1:
            # The reference builds its first conv with `filters` outputs but the next with
            # filters_scale * filters inputs, so only 1 gives a discriminator that runs.
            raise ConfigError(f"discriminator: filters_scale must be 1 (as in the reference), got {self.filters_scale}")
        if len(self.kernel_size) != 2 or len(self.stride) != 2:
            raise ConfigError("discriminator: kernel_size and stride are (time, frequency) pairs")

    def min_samples(self) -> int:
        """The shortest audio every scale can take (one STFT frame of the largest n_fft)."""
        return max(self.n_ffts)


class WNConv2d(nn.Module):
    """Weight-normalised 2-D conv over (batch, H, W, C) with PyTorch padding; parameters
    `weight_v` (kh, kw, in, out), `weight_g` (out,) and `bias` (out,), as torch's weight_norm(dim=0)."""

    features: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = (*self.kernel_size, x.shape[-1], self.features)
        init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=(0, 1, 2), out_axis=-1)
        v = self.param("weight_v", init, shape)
        g = self.param("weight_g", lambda _k, s: jnp.sqrt(jnp.sum(v * v, axis=(0, 1, 2))), (self.features,))
        v32 = v.astype(jnp.float32)
        kernel = v32 * (g.astype(jnp.float32) / jnp.sqrt(jnp.sum(v32 * v32, axis=(0, 1, 2), keepdims=True)))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel.astype(self.dtype), window_strides=self.stride,
            padding=[(p, p) for p in self.padding], rhs_dilation=self.dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(self.dtype)


def _padding(kernel: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    return ((kernel[0] - 1) * dilation[0] // 2, (kernel[1] - 1) * dilation[1] // 2)


def spectrogram(audio: jax.Array, n_fft: int, hop: int, win_length: int, normalized: bool = True) -> jax.Array:
    """(batch, time, channels) -> (batch, frames, n_fft // 2 + 1, 2 * channels): real parts of every
    channel's STFT, then imaginary parts (torchaudio Spectrogram(power=None, center=False))."""
    b, t, c = audio.shape
    if t < n_fft:
        raise ValueError(f"discriminator: audio of {t} samples is shorter than the STFT size {n_fft}")
    signals = jnp.swapaxes(audio.astype(jnp.float32), 1, 2).reshape(b * c, t)
    s = stft(signals, n_fft, hop, win_length, center=False)            # (b * c, F, frames)
    if normalized:
        s = s / float(np.sqrt(np.sum(hann_window(win_length).astype(np.float64) ** 2)))
    s = s.reshape(b, c, *s.shape[1:])
    z = jnp.concatenate([jnp.real(s), jnp.imag(s)], axis=1)           # (b, 2c, F, frames)
    return jnp.transpose(z, (0, 3, 2, 1))                               # (b, frames, F, 2c)


class STFTDiscriminator(nn.Module):
    """One resolution: (logits (batch, frames, freq, out), [feature maps])."""

    config: DiscriminatorConfig
    n_fft: int
    hop: int
    win_length: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, audio):
        c = self.config
        z = spectrogram(audio, self.n_fft, self.hop, self.win_length, c.normalized).astype(self.dtype)
        act = lambda h: nn.leaky_relu(h, c.negative_slope)
        k, k_sq = tuple(c.kernel_size), (c.kernel_size[0], c.kernel_size[0])
        features = []
        z = act(WNConv2d(c.filters, k, padding=_padding(k), dtype=self.dtype, name="conv_0")(z))
        features.append(z)
        for i, d in enumerate(c.dilations):
            out = min(c.filters_scale ** (i + 1) * c.filters, c.max_filters)
            z = act(WNConv2d(out, k, tuple(c.stride), (d, 1), _padding(k, (d, 1)), self.dtype, name=f"conv_{i + 1}")(z))
            features.append(z)
        out = min(c.filters_scale ** (len(c.dilations) + 1) * c.filters, c.max_filters)
        z = act(WNConv2d(out, k_sq, padding=_padding(k_sq), dtype=self.dtype, name=f"conv_{len(c.dilations) + 1}")(z))
        features.append(z)
        logits = WNConv2d(c.out_channels, k_sq, padding=_padding(k_sq), dtype=self.dtype, name="conv_post")(z)
        return logits.astype(jnp.float32), [f.astype(jnp.float32) for f in features]


class MultiScaleSTFTDiscriminator(nn.Module):
    """All resolutions: ([logits per scale], [[feature maps] per scale]). Audio (batch, time, channels)."""

    config: DiscriminatorConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, audio):
        c = self.config
        if audio.ndim != 3 or audio.shape[-1] != c.in_channels:
            raise ValueError(f"discriminator: expected audio (batch, time, {c.in_channels}), got {audio.shape}")
        logits, features = [], []
        for i, (n, h, w) in enumerate(zip(c.n_ffts, c.hop_lengths, c.win_lengths)):
            lg, ft = STFTDiscriminator(c, n, h, w, self.dtype, name=f"disc_{i}")(audio)
            logits.append(lg)
            features.append(ft)
        return logits, features


def init_params(config: DiscriminatorConfig, key, samples: int | None = None) -> dict:
    """Random discriminator parameters (shapes do not depend on the audio length)."""
    n = samples or config.min_samples()
    x = jnp.zeros((1, n, config.in_channels), jnp.float32)
    return MultiScaleSTFTDiscriminator(config).init(key, x)["params"]
