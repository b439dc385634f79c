"""The Stable Audio Open diffusion transformer (DiT) in Flax Linen.

Follows stable-audio-tools' `DiffusionTransformer` with a `ContinuousTransformer` inside
(`models/dit.py`, `models/transformer.py`), in the configuration Stable Audio Open uses, which is
also diffusers' `StableAudioDiTModel`:

* the diffusion time t in [0, 1] goes through learned Fourier features ([cos, sin] of 2 pi t w)
  and an MLP (Linear, SiLU, Linear) to the model width;
* cross-attention tokens go through a bias-free MLP (`to_cond_embed`), the global conditioning
  vector through another (`to_global_embed`); the timestep embedding is added to the projected
  global vector, which is prepended to the sequence as one token;
* the latents pass a zero-initialised 1x1 convolution with a residual, a linear projection to the
  model width, `depth` pre-norm blocks, a linear projection back, the prepended token is dropped,
  and a second residual 1x1 convolution follows;
* each block: bias-free LayerNorm -> self-attention (fused qkv, rotary embedding on the first
  `rotary_dim` features of each head, positions counting the prepended token) -> residual;
  LayerNorm -> cross-attention with grouped key/value heads, no mask, no rotary -> residual;
  LayerNorm -> SwiGLU feed-forward with biases -> residual.

Inside, activations are (batch, time, channels); the public call takes and returns the
reference's (batch, channels, frames). Parameters are float32; `dtype` sets the compute dtype of
the matrix products and attention, while the residual stream, norms' statistics, Fourier features
and rotary angles stay float32 (as PyTorch autocast leaves them in the reference).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax.errors import ConfigError
from sa_jax.nn.attention import apply_rotary, attention, constrain_batch, layer_norm, remat_block, rotary_cos_sin
from sa_jax.tree import flat_shapes

Dtype = Any


@dataclass(frozen=True)
class DiTConfig:
    """Shape of a DiT. Defaults are Stable Audio Open 1.0's."""

    io_channels: int = 64          # latent channels in and out
    embed_dim: int = 1536          # model width
    depth: int = 24                # transformer blocks
    num_heads: int = 24            # query heads; head_dim = embed_dim / num_heads
    cond_token_dim: int = 768      # width of the cross-attention tokens fed in
    cond_embed_dim: int | None = None   # width after `to_cond_embed`; None: cond_token_dim
    num_kv_heads: int | None = None     # cross-attention key/value heads; None: cond_embed_dim / head_dim
    global_cond_dim: int = 1536    # width of the global conditioning vector fed in
    timestep_features_dim: int = 256
    ff_mult: int = 4               # SwiGLU inner width = ff_mult * embed_dim
    rotary_dim: int | None = None  # rotated features per head; None: max(head_dim // 2, 32) as the reference
    rotary_base: float = 10000.0
    norm_eps: float = 1e-5
    input_concat_dim: int = 0      # extra input channels concatenated to x (inpainting models' mask + masked input)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def context_dim(self) -> int:
        return self.cond_token_dim if self.cond_embed_dim is None else self.cond_embed_dim

    @property
    def kv_heads(self) -> int:
        return self.context_dim // self.head_dim if self.num_kv_heads is None else self.num_kv_heads

    @property
    def rotary_features(self) -> int:
        return max(self.head_dim // 2, 32) if self.rotary_dim is None else self.rotary_dim

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        problems = []
        for name in ("io_channels", "embed_dim", "depth", "num_heads", "cond_token_dim",
                     "global_cond_dim", "timestep_features_dim", "ff_mult"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads > 0 and self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if self.timestep_features_dim % 2:
            problems.append(f"timestep_features_dim must be even, got {self.timestep_features_dim}")
        if self.input_concat_dim < 0:
            problems.append(f"input_concat_dim must be >= 0, got {self.input_concat_dim}")
        if not problems:
            hd, kv = self.head_dim, self.kv_heads
            if self.num_kv_heads is None and self.context_dim % hd:
                problems.append(f"the cross-attention context width {self.context_dim} is not a multiple "
                                f"of the head dimension {hd}; set num_kv_heads")
            if kv <= 0 or self.num_heads % kv:
                problems.append(f"{self.num_heads} query heads cannot be grouped over {kv} key/value heads")
            rot = self.rotary_features
            if rot % 2 or rot > hd or rot <= 0:
                problems.append(f"rotary dimension {rot} must be even, positive and at most the head "
                                f"dimension {hd}")
        if problems:
            raise ConfigError("DiT config: " + "; ".join(problems))

    def replace(self, **changes) -> "DiTConfig":
        return dataclasses.replace(self, **changes)


def _dense(features: int, name: str, dtype: Dtype, bias: bool = False, zero: bool = False) -> nn.Dense:
    # Kernel (in, out). Non-zero init matches PyTorch's Linear bound 1/sqrt(fan_in).
    init = nn.initializers.zeros if zero else nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    return nn.Dense(features, use_bias=bias, kernel_init=init, dtype=dtype, param_dtype=jnp.float32, name=name)


class MLP(nn.Module):
    """Linear -> SiLU -> Linear, as the reference's conditioning projections."""

    hidden: int
    out: int
    bias: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _dense(self.hidden, "in_proj", self.dtype, self.bias)(x)
        return _dense(self.out, "out_proj", self.dtype, self.bias)(nn.silu(x))


class FourierFeatures(nn.Module):
    """[cos(2 pi t w), sin(2 pi t w)] with learned frequencies w ~ N(0, 1); float32 throughout."""

    features: int

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        w = self.param("kernel", nn.initializers.normal(1.0), (self.features // 2,), jnp.float32)
        f = 2 * math.pi * t.astype(jnp.float32)[:, None] * w[None, :]
        return jnp.concatenate([jnp.cos(f), jnp.sin(f)], axis=-1)


class SelfAttention(nn.Module):
    config: DiTConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, cos, sin):
        c = self.config
        b, n, _ = x.shape
        qkv = _dense(3 * c.embed_dim, "qkv", self.dtype)(x).reshape(b, n, 3, c.num_heads, c.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = attention(q, k, v).reshape(b, n, c.embed_dim)
        return _dense(c.embed_dim, "out", self.dtype, zero=True)(out)


class CrossAttention(nn.Module):
    config: DiTConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        c = self.config
        b, n, _ = x.shape
        m = context.shape[1]
        q = _dense(c.embed_dim, "q", self.dtype)(x).reshape(b, n, c.num_heads, c.head_dim)
        kv = _dense(2 * c.kv_heads * c.head_dim, "kv", self.dtype)(context)
        kv = kv.reshape(b, m, 2, c.kv_heads, c.head_dim)
        out = attention(q, kv[:, :, 0], kv[:, :, 1]).reshape(b, n, c.embed_dim)
        return _dense(c.embed_dim, "out", self.dtype, zero=True)(out)


class SwiGLU(nn.Module):
    config: DiTConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        inner = c.ff_mult * c.embed_dim
        h = _dense(2 * inner, "proj_in", self.dtype, bias=True)(x)
        h, gate = jnp.split(h, 2, axis=-1)
        return _dense(c.embed_dim, "proj_out", self.dtype, bias=True, zero=True)(h * nn.silu(gate))


class DiTBlock(nn.Module):
    config: DiTConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context, cos, sin):
        c = self.config
        x = constrain_batch(x)   # keeps a remat recomputation split over the batch (see constrain_batch)
        x = x + SelfAttention(c, self.dtype, name="self_attn")(
            layer_norm(c.norm_eps, self.dtype, "pre_norm")(x), cos, sin)
        x = x + CrossAttention(c, self.dtype, name="cross_attn")(
            layer_norm(c.norm_eps, self.dtype, "cross_attn_norm")(x), context)
        x = x + SwiGLU(c, self.dtype, name="ff")(layer_norm(c.norm_eps, self.dtype, "ff_norm")(x))
        return x


class DiT(nn.Module):
    """The denoiser: v = DiT(x, t, cross_attn_cond, global_cond).

    x: (batch, io_channels, frames) noisy latents; t: (batch,) or scalar diffusion time in [0, 1];
    cross_attn_cond: (batch, tokens, cond_token_dim); global_cond: (batch, global_cond_dim).
    Returns (batch, io_channels, frames) float32. `remat` ("none" / "block" / "attention", see
    sa_jax.nn.attention.REMAT_POLICIES; True / False read as block / none) recomputes each block's
    activations in the backward pass (training memory); it changes neither the parameters nor the output.
    """

    config: DiTConfig
    dtype: Dtype = jnp.float32
    remat: bool | str = False

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, cross_attn_cond: jax.Array,
                 global_cond: jax.Array, input_concat: jax.Array | None = None) -> jax.Array:
        c = self.config
        dt = self.dtype
        b = x.shape[0]
        if x.ndim != 3 or x.shape[1] != c.io_channels:
            raise ValueError(f"x must be (batch, {c.io_channels}, frames), got {x.shape}")
        if cross_attn_cond.ndim != 3 or cross_attn_cond.shape[0] != b or cross_attn_cond.shape[2] != c.cond_token_dim:
            raise ValueError(f"cross_attn_cond must be ({b}, tokens, {c.cond_token_dim}), got {cross_attn_cond.shape}")
        if global_cond.shape != (b, c.global_cond_dim):
            raise ValueError(f"global_cond must be ({b}, {c.global_cond_dim}), got {global_cond.shape}")
        if (input_concat is None) != (c.input_concat_dim == 0) or (
                input_concat is not None and input_concat.shape != (b, c.input_concat_dim, x.shape[2])):
            got = None if input_concat is None else input_concat.shape
            raise ValueError(f"input_concat must be ({b}, {c.input_concat_dim}, {x.shape[2]}) when input_concat_dim "
                             f"is {c.input_concat_dim} > 0 and absent otherwise; got {got}")
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))

        context = MLP(c.context_dim, c.context_dim, False, dt, name="to_cond_embed")(cross_attn_cond.astype(dt))
        global_embed = MLP(c.embed_dim, c.embed_dim, False, dt, name="to_global_embed")(global_cond.astype(dt))
        t_feat = FourierFeatures(c.timestep_features_dim, name="timestep_features")(t)
        t_embed = MLP(c.embed_dim, c.embed_dim, True, dt, name="to_timestep_embed")(t_feat.astype(dt))
        prepend = (global_embed + t_embed)[:, None, :]

        f32 = jnp.float32
        if input_concat is not None:
            x = jnp.concatenate([x.astype(f32), input_concat.astype(f32)], axis=1)
        h = jnp.swapaxes(x, 1, 2).astype(f32)                      # (b, frames, io + input_concat_dim)
        h = h + _dense(h.shape[-1], "preprocess_conv", dt, zero=True)(h).astype(f32)
        h = _dense(c.embed_dim, "project_in", dt)(h).astype(f32)
        h = jnp.concatenate([prepend.astype(f32), h], axis=1)     # the global token comes first
        cos, sin = rotary_cos_sin(h.shape[1], c.rotary_features, c.rotary_base)
        block = remat_block(DiTBlock, self.remat)
        for i in range(c.depth):
            h = block(c, dt, name=f"layers_{i}")(h, context, cos, sin)
        h = _dense(c.io_channels, "project_out", dt)(h)[:, 1:].astype(f32)
        h = h + _dense(c.io_channels, "postprocess_conv", dt, zero=True)(h).astype(f32)
        return jnp.swapaxes(h, 1, 2)


def init_params(config: DiTConfig, key: jax.Array, frames: int = 8, tokens: int = 4) -> dict:
    """Fresh float32 parameters for `config`."""
    x = jnp.zeros((1, config.io_channels, frames), jnp.float32)
    cond = jnp.zeros((1, tokens, config.cond_token_dim), jnp.float32)
    g = jnp.zeros((1, config.global_cond_dim), jnp.float32)
    extra = jnp.zeros((1, config.input_concat_dim, frames), jnp.float32) if config.input_concat_dim else None
    init = jax.jit(lambda k: DiT(config).init(k, x, jnp.zeros((1,)), cond, g, extra)["params"])
    return init(key)


def param_shapes(config: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Flat `a/b/c -> shape` of the parameters of a DiT with `config` (no compute)."""
    tree = jax.eval_shape(lambda k: init_params(config, k), jax.random.key(0))
    return flat_shapes(tree)


def make_denoiser(config: DiTConfig, dtype: Dtype = jnp.float32, remat: bool | str = False):
    """`apply(params, x, t, cross_attn_cond, global_cond, input_concat=None) -> v`, a pure function
    of the DiT (x and v (batch, io_channels, frames); float32 params; `dtype` the compute dtype)."""
    model = DiT(config, dtype, remat)

    def apply(params, x, t, cross_attn_cond, global_cond, input_concat=None):
        return model.apply({"params": params}, x, t, cross_attn_cond, global_cond, input_concat)

    return apply
