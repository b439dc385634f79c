"""Attention building blocks shared by the DiT and the text encoders.

Layout convention: activations are (batch, sequence, features); per-head tensors are
(batch, sequence, heads, head_dim), the layout `jax.nn.dot_product_attention` takes, so XLA may
pick a fused (cuDNN flash) kernel on GPU. Grouped-query attention needs no key/value repetition:
`jax.nn.dot_product_attention` groups query head `n` with key/value head `n // (heads // kv_heads)`,
which is what PyTorch's `repeat_interleave` over the head axis produces in the references.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def rotary_cos_sin(length: int, dim: int, base: float = 10000.0) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables, each (length, dim), for rotary embeddings over positions 0..length-1.

    `dim` is the number of rotated features per head. Frequencies are base^(-2i/dim) for
    i < dim/2, and the table repeats them in two halves ([f0..f(n-1), f0..f(n-1)]), matching the
    half-split rotation of `apply_rotary` (GPT-NeoX layout, as stable-audio-tools and diffusers'
    Stable Audio use).
    """
    if dim % 2:
        raise ValueError(f"rotary dimension must be even, got {dim}")
    inv_freq = 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    angles = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate the first `cos.shape[-1]` features of every head of `x` (batch, seq, heads, head_dim).

    The rotated part is split into two halves (a, b) and becomes (a cos - b sin, b cos + a sin);
    the remaining features pass through unchanged (partial rotary). Computed in float32 and cast
    back to the input dtype.
    """
    rot = cos.shape[-1]
    if rot > x.shape[-1]:
        raise ValueError(f"rotary dimension {rot} exceeds the head dimension {x.shape[-1]}")
    dtype = x.dtype
    x = x.astype(jnp.float32)
    head, tail = x[..., :rot], x[..., rot:]
    a, b = jnp.split(head, 2, axis=-1)
    turned = jnp.concatenate([-b, a], axis=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    head = head * c + turned * s
    return jnp.concatenate([head, tail], axis=-1).astype(dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, bias: jax.Array | None = None,
              mask: jax.Array | None = None, scale: float | None = None) -> jax.Array:
    """Scaled dot-product attention over (batch, seq, heads, head_dim) tensors.

    `k`/`v` may have fewer heads than `q` (grouped-query attention). `bias` is added to the logits
    (broadcastable to (batch, heads, q_len, kv_len)); `mask` is boolean, True where attention is
    allowed. `scale` defaults to 1/sqrt(head_dim).
    """
    dtype = q.dtype
    k, v = k.astype(dtype), v.astype(dtype)
    if bias is not None:
        bias = bias.astype(dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale)


def layer_norm(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
    """Bias-free LayerNorm (learned scale only), statistics in float32 whatever `dtype` is."""
    return nn.LayerNorm(epsilon=eps, use_bias=False, use_scale=True, use_fast_variance=False,
                        dtype=dtype, param_dtype=jnp.float32, name=name)
