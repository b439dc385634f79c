"""The paper's denoiser: stable-audio-tools' `UNetCFG1d` (`models/adp.py`) as Flax modules.

A 1-D U-Net over latents: resnet blocks (GroupNorm, SiLU, conv) modulated by a FiLM scale/shift
from the time mapping, strided-conv downsampling by the level factors, transformer blocks
(self-attention, cross-attention to the conditioning tokens, feed-forward) per level and in the
bottleneck, skip connections scaled by 2^-0.5, and a learned "null" embedding that replaces the
conditioning tokens for classifier-free guidance. Channels-last inside, (batch, time, channels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax.config import from_dict
from sa_jax.errors import ConfigError
from sa_jax.nn.attention import attention, constrain_batch, remat_block
from sa_jax.nn.layers import Conv1d, ConvTranspose1d

# ---------------------------------------------------------------------------------------------
# Config: the keys of stable-audio-tools' `adp_cfg_1d` diffusion config, with its defaults.


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 64
    channels: int = 256
    multipliers: tuple[int, ...] = (4, 4, 4, 5, 5)
    factors: tuple[int, ...] = (1, 2, 2, 4)
    num_blocks: tuple[int, ...] = (2, 2, 2, 2)
    attentions: tuple[int, ...] = (1, 3, 3, 3, 3)
    context_embedding_features: int = 768
    context_embedding_max_length: int = 79
    attention_heads: int | None = None
    attention_features: int | None = None
    attention_multiplier: int | None = None
    patch_size: int = 1
    resnet_groups: int = 8
    use_context_time: bool = True
    kernel_multiplier_downsample: int = 2
    use_nearest_upsample: bool = False
    use_skip_scale: bool = True
    out_channels: int | None = None
    context_features: int | None = None  # global conditioning summed into the time mapping
    context_features_multiplier: int = 4
    use_xattn_time: bool = False
    use_stft: bool = False
    context_channels: tuple[int, ...] | None = None

    def validate(self):
        levels = len(self.multipliers) - 1
        if len(self.factors) != levels or len(self.num_blocks) != levels or len(self.attentions) < levels:
            raise ConfigError(f"unet: with {len(self.multipliers)} multipliers there must be {levels} factors "
                              f"and num_blocks and at least {levels} attentions; got factors {self.factors}, "
                              f"num_blocks {self.num_blocks}, attentions {self.attentions}")
        if any(self.attentions) and self.attention_heads is None and self.attention_features is None:
            raise ConfigError("unet: transformer blocks need attention_heads or attention_features")
        if any(self.attentions) and self.attention_multiplier is None:
            raise ConfigError("unet: transformer blocks need attention_multiplier")
        if self.use_stft or self.context_channels:
            raise ConfigError("unet: use_stft and context_channels (input concatenation) are not supported by sa-jax")
        if self.kernel_multiplier_downsample % 2:
            raise ConfigError("unet: kernel_multiplier_downsample must be even, "
                              f"got {self.kernel_multiplier_downsample}")
        if not self.use_context_time and self.context_features is None:
            raise ConfigError("unet: without use_context_time or context_features there is no time mapping")

    @property
    def mapping_features(self) -> int:
        return self.channels * self.context_features_multiplier

    @property
    def downsampling(self) -> int:
        """Latent frames must be a multiple of this (all level factors times the patch size)."""
        return math.prod(self.factors) * self.patch_size

    @property
    def context_length(self) -> int:
        """How many conditioning tokens the null embedding covers (one more with use_xattn_time)."""
        return self.context_embedding_max_length + int(self.use_xattn_time)


def config_from_dict(data: dict) -> UNetConfig:
    return from_dict(UNetConfig, data, "unet")


# ---------------------------------------------------------------------------------------------
# Layers with adp.py's conventions


# The U-Net's convolutions run as matrix products where the program is lowered for the CPU (see
# sa_jax.nn.layers.conv1d_as_matmul: XLA:CPU's convolutions, and above all their kernel gradients, made up
# most of a training step's convolution time); GPU and TPU programs keep XLA's convolutions.
CPU_MATMUL_CONVS = True


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)  # torch.nn.GELU() is the exact erf form


class PaddedConv(nn.Module):
    """adp.py's Conv1d: pads so the output has ceil(L / stride) frames (extra on the right)."""

    features: int
    kernel_size: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        length = x.shape[1]
        total = self.kernel_size - self.stride
        frames = math.ceil((length - self.kernel_size + total) / self.stride + 1)
        extra = (frames - 1) * self.stride + (self.kernel_size - total) - length
        right = total // 2
        return Conv1d(self.features, self.kernel_size, stride=self.stride, padding=(total - right, right + extra),
                      weight_norm=False, dtype=self.dtype, cpu_matmul=CPU_MATMUL_CONVS, name="conv")(x)


class TransposedUpsample(nn.Module):
    """adp.py's ConvTranspose1d(kernel 2f, stride f) with f frames of padding trimmed: L -> L f."""

    features: int
    factor: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = ConvTranspose1d(self.features, 2 * self.factor, stride=self.factor, weight_norm=False,
                            dtype=self.dtype, cpu_matmul=CPU_MATMUL_CONVS, name="conv")(x)
        right = self.factor // 2
        left = self.factor - right
        return y[:, left:y.shape[1] - right]


class ConvBlock(nn.Module):
    """GroupNorm, optional FiLM (x (1 + scale) + shift), SiLU, conv."""

    features: int
    groups: int
    kernel_size: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, scale_shift=None):
        x = nn.GroupNorm(num_groups=self.groups, epsilon=1e-5, dtype=self.dtype, name="groupnorm")(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return PaddedConv(self.features, self.kernel_size, dtype=self.dtype, name="project")(jax.nn.silu(x))


class ResnetBlock(nn.Module):
    features: int
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mapping=None):
        x = constrain_batch(x)   # keeps a remat recomputation split over the batch (see constrain_batch)
        h = ConvBlock(self.features, self.groups, dtype=self.dtype, name="block1")(x)
        scale_shift = None
        if mapping is not None:
            ss = nn.Dense(2 * self.features, dtype=self.dtype, name="scale_shift")(jax.nn.silu(mapping))
            scale_shift = jnp.split(ss[:, None, :], 2, axis=-1)
        h = ConvBlock(self.features, self.groups, dtype=self.dtype, name="block2")(h, scale_shift)
        if x.shape[-1] != self.features:
            x = PaddedConv(self.features, 1, dtype=self.dtype, name="to_out")(x)
        return h + x


class Attention(nn.Module):
    """Pre-norm attention. Self-attention normalises its input twice, once for queries (`norm`)
    and once for keys/values (`norm_context`), as the reference does. A context mask zeroes the
    masked tokens' keys and values (they still take part in the softmax, with logit 0)."""

    heads: int
    head_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context=None, context_mask=None):
        features = x.shape[-1]
        context = x if context is None else context
        mid = self.heads * self.head_features
        q = nn.Dense(mid, use_bias=False, dtype=self.dtype, name="to_q")(
            nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x))
        kv = nn.Dense(2 * mid, use_bias=False, dtype=self.dtype, name="to_kv")(
            nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm_context")(context))
        k, v = jnp.split(kv, 2, axis=-1)
        if context_mask is not None:
            keep = context_mask[:, :, None].astype(k.dtype)
            k, v = k * keep, v * keep
        split = lambda t: t.reshape(*t.shape[:2], self.heads, self.head_features)
        out = attention(split(q), split(k), split(v), scale=self.head_features ** -0.5)
        return nn.Dense(features, dtype=self.dtype, name="to_out")(out.reshape(*out.shape[:2], mid))


class TransformerBlock(nn.Module):
    heads: int
    head_features: int
    multiplier: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context, context_mask):
        x = constrain_batch(x)   # as ResnetBlock
        x = x + Attention(self.heads, self.head_features, self.dtype, name="attention")(x)
        x = x + Attention(self.heads, self.head_features, self.dtype, name="cross_attention")(
            x, context, context_mask)
        features = x.shape[-1]
        h = _gelu(nn.Dense(features * self.multiplier, dtype=self.dtype, name="ff_in")(x))
        return x + nn.Dense(features, dtype=self.dtype, name="ff_out")(h)


class Transformer(nn.Module):
    """GroupNorm(32) and a 1x1 conv in, transformer blocks, a 1x1 conv out."""

    layers: int
    config: UNetConfig
    dtype: Any = jnp.float32
    remat: bool | str = False

    @nn.compact
    def __call__(self, x, context, context_mask):
        c = self.config
        channels = x.shape[-1]
        head_features = c.attention_features or channels // c.attention_heads
        heads = c.attention_heads or channels // c.attention_features
        x = nn.GroupNorm(num_groups=32, epsilon=1e-6, dtype=self.dtype, name="norm_in")(x)
        x = PaddedConv(channels, 1, dtype=self.dtype, name="proj_in")(x)
        block = remat_block(TransformerBlock, self.remat)
        for i in range(self.layers):
            x = block(heads, head_features, c.attention_multiplier, self.dtype,
                                 name=f"blocks_{i}")(x, context, context_mask)
        return PaddedConv(channels, 1, dtype=self.dtype, name="proj_out")(x)


def fourier_time(name: str, dim: int, t):
    """adp.py's LearnedPositionalEmbedding: [t, sin(2 pi t w), cos(2 pi t w)] with w ~ N(0, 1)."""
    return _FourierTime(dim, name=name)(t)


class _FourierTime(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, t):
        w = self.param("weights", nn.initializers.normal(1.0), (self.dim // 2,))
        freqs = t[:, None].astype(jnp.float32) * w[None] * 2 * math.pi
        return jnp.concatenate([t[:, None].astype(jnp.float32), jnp.sin(freqs), jnp.cos(freqs)], axis=-1)


# ---------------------------------------------------------------------------------------------
# The U-Net


class UNet1d(nn.Module):
    """`apply(params, x, t, embedding, embedding_mask=None, features=None)`.

    x: (B, T, in_channels) latents, T a multiple of `config.downsampling`; t: (B,) diffusion time
    in [0, 1]; embedding: (B, N, context_embedding_features) conditioning tokens, N at most
    `context_embedding_max_length`; embedding_mask: (B, N), True/1 = keep; features: (B, F)
    global conditioning when `context_features` is set. Returns (B, T, out_channels).

    `remat` recomputes the activations of every resnet block and transformer block in the backward
    pass instead of keeping them (less training memory, more compute); "attention" keeps the
    attention outputs (sa_jax.nn.attention.REMAT_POLICIES; True / False read as block / none); the
    parameters and the output are the same either way.
    """

    config: UNetConfig
    dtype: Any = jnp.float32
    remat: bool | str = False

    @nn.compact
    def __call__(self, x, t, embedding, embedding_mask=None, features=None):
        c = self.config
        # The learned tokens that stand for "no conditioning" (see `null_embedding`).
        self.param("null_embedding", nn.initializers.normal(1.0), (c.context_length, c.context_embedding_features))
        batch = x.shape[0]
        levels = len(c.multipliers) - 1
        widths = [c.channels * m for m in c.multipliers]
        groups = c.resnet_groups
        dt = self.dtype
        resnet = remat_block(ResnetBlock, self.remat)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))

        if c.use_xattn_time:
            tok = _gelu(nn.Dense(c.context_embedding_features, dtype=dt, name="xattn_time_proj")(
                fourier_time("xattn_time_fourier", c.channels, t)))
            embedding = jnp.concatenate([embedding, tok[:, None].astype(embedding.dtype)], axis=1)
            if embedding_mask is not None:
                embedding_mask = jnp.concatenate([embedding_mask, jnp.ones((batch, 1), embedding_mask.dtype)], 1)
        if embedding.shape[1] > c.context_length:
            raise ValueError(f"unet: {embedding.shape[1]} conditioning tokens, at most {c.context_length} allowed")
        context = embedding.astype(dt)

        # Time (and optional global features) -> one mapping vector that drives every FiLM.
        items = []
        if c.use_context_time:
            items.append(_gelu(nn.Dense(c.mapping_features, dtype=dt, name="time_proj")(
                fourier_time("time_fourier", c.channels, t))))
        if c.context_features is not None:
            if features is None:
                raise ValueError("unet: this model takes global conditioning features (context_features)")
            items.append(_gelu(nn.Dense(c.mapping_features, dtype=dt, name="features_proj")(features)))
        mapping = sum(items)
        mapping = _gelu(nn.Dense(c.mapping_features, dtype=dt, name="mapping_0")(mapping))
        mapping = _gelu(nn.Dense(c.mapping_features, dtype=dt, name="mapping_1")(mapping))

        def transformer(h, layers, name):
            return Transformer(layers, c, dt, self.remat, name=name)(h, context, embedding_mask)

        # In: a resnet block (GroupNorm with one group), then fold patches into channels.
        h = resnet(widths[0] // c.patch_size, 1, dt, name="to_in")(x.astype(dt), mapping)
        h = _patch(h, c.patch_size)
        skips = [[h]]
        for i in range(levels):
            k = c.factors[i] * c.kernel_multiplier_downsample + 1
            h = PaddedConv(widths[i + 1], k, stride=c.factors[i], dtype=dt, name=f"downsamples_{i}_down")(h)
            level = []
            for j in range(c.num_blocks[i]):
                h = resnet(widths[i + 1], groups, dt, name=f"downsamples_{i}_blocks_{j}")(h, mapping)
                level.append(h)
            if c.attentions[i]:
                h = transformer(h, c.attentions[i], f"downsamples_{i}_transformer")
                level.append(h)
            skips.append(level)

        h = resnet(widths[-1], groups, dt, name="bottleneck_pre")(h, mapping)
        if c.attentions[levels]:
            h = transformer(h, c.attentions[levels], "bottleneck_transformer")
        h = resnet(widths[-1], groups, dt, name="bottleneck_post")(h, mapping)

        skip_scale = 2 ** -0.5 if c.use_skip_scale else 1.0
        for u, i in enumerate(reversed(range(levels))):  # upsamples are numbered from the bottom
            level = skips.pop()
            for j in range(c.num_blocks[i] + (1 if c.attentions[i] else 0)):
                h = jnp.concatenate([h, level.pop() * skip_scale], axis=-1)
                h = resnet(widths[i + 1], groups, dt, name=f"upsamples_{u}_blocks_{j}")(h, mapping)
            if c.attentions[i]:
                h = transformer(h, c.attentions[i], f"upsamples_{u}_transformer")
            h = self._upsample(h, widths[i], c.factors[i], f"upsamples_{u}")
        h = h + skips.pop()[0]

        h = _unpatch(h, c.patch_size)
        out = resnet(c.out_channels or c.in_channels, 1, dt, name="to_out")(h, mapping)
        return out.astype(jnp.float32)

    def _upsample(self, h, features, factor, prefix):
        dt = self.dtype
        if factor == 1:
            return PaddedConv(features, 3, dtype=dt, name=f"{prefix}_up")(h)
        if self.config.use_nearest_upsample:
            return PaddedConv(features, 3, dtype=dt, name=f"{prefix}_up")(jnp.repeat(h, factor, axis=1))
        return TransposedUpsample(features, factor, dt, name=f"{prefix}_up_transposed")(h)


def _patch(x, p):
    """(B, L p, C) -> (B, L, C p), channel index c p + j (einops "b c (l p) -> b (c p) l")."""
    if p == 1:
        return x
    b, lp, ch = x.shape
    return x.reshape(b, lp // p, p, ch).transpose(0, 1, 3, 2).reshape(b, lp // p, ch * p)


def _unpatch(x, p):
    if p == 1:
        return x
    b, l, cp = x.shape
    return x.reshape(b, l, cp // p, p).transpose(0, 1, 3, 2).reshape(b, l * p, cp // p)


def null_embedding(params, batch: int, length: int) -> jax.Array:
    """UNetCFG1d's unconditional context: the first `length` learned null tokens, per batch item.
    It replaces the conditioning tokens for CFG dropout in training and the uncond branch."""
    table = params["null_embedding"]
    return jnp.broadcast_to(table[:length], (batch, length, table.shape[-1]))


def position_blind_frames(config: UNetConfig, frames: int, seed: int = 0) -> list[int]:
    """The latent frames of a `frames`-long window that a U-Net of this architecture cannot tell apart
    by their position: those whose output equals that of the frame one downsampling period
    (`config.downsampling`) away, for a constant input.

    Convolutions, GroupNorm and attention without positional encodings treat every frame alike; only
    the zero padding at the window's edges tells a frame where it is, and only as far as the edges'
    receptive field reaches. Beyond it, the timing conditioning cannot make the network end a clip at
    a given frame (#22's study, docs/ablations/README.md). With random weights, a frame told apart
    here is told apart by the architecture; a blind frame is blind whatever the weights."""
    if frames % config.downsampling:
        raise ValueError(f"frames must be a multiple of the U-Net's downsampling ({config.downsampling}), got {frames}")
    net = UNet1d(config)
    x = jnp.full((1, frames, config.in_channels), 0.5)
    t = jnp.array([0.5])
    context = jax.random.normal(jax.random.key(seed + 1), (1, config.context_length, config.context_embedding_features))
    params = net.init(jax.random.key(seed), x, t, context)["params"]
    out = jax.device_get(net.apply({"params": params}, x, t, context))[0]      # (frames, channels)
    period = config.downsampling
    scale = float(abs(out).max()) or 1.0
    same = [bool(abs(out[f] - out[f + period]).max() <= 1e-6 * scale) for f in range(frames - period)]
    return [f for f in range(frames)
            if (f + period < frames and same[f]) or (f >= period and same[f - period])]
