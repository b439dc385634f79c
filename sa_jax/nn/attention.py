"""Attention building blocks shared by the DiT and the text encoders.

Layout convention: activations are (batch, sequence, features); per-head tensors are
(batch, sequence, heads, head_dim), the layout `jax.nn.dot_product_attention` takes, so XLA may
pick a fused (cuDNN flash) kernel on GPU. Grouped-query attention needs no key/value repetition:
`jax.nn.dot_product_attention` groups query head `n` with key/value head `n // (heads // kv_heads)`,
which is what PyTorch's `repeat_interleave` over the head axis produces in the references.
On the CPU, long unmasked attention runs one (batch, key/value head) at a time (`by_head_applies`).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

Dtype = Any


def rotary_cos_sin(length: int, dim: int, base: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables, each (length, dim) float32, for rotary embeddings over positions 0..length-1.

    `dim` is the number of rotated features per head. Frequencies are base^(-2i/dim) for
    i < dim/2, and the table repeats them in two halves ([f0..f(n-1), f0..f(n-1)]), matching the
    half-split rotation of `apply_rotary` (GPT-NeoX layout, as stable-audio-tools and diffusers'
    Stable Audio use). The tables are computed here in float32, as the references do, and enter a jitted
    program as constants: computed inside it, XLA:CPU fused cos and sin into every layer's rotation and
    recomputed them for each batch item and head (a tenth of a SAO-shaped DiT step).
    """
    if dim % 2:
        raise ValueError(f"rotary dimension must be even, got {dim}")
    inv_freq = (1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))).astype(np.float32)
    angles = np.arange(length, dtype=np.float32)[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


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


# Rematerialisation policies a training config may name (`model.remat`): "none" keeps every activation for
# the backward pass, "block" recomputes each block from its input, "attention" recomputes each block too but
# keeps the attention outputs (tagged ATTENTION_OUT below), so the costliest part is not computed twice.
REMAT_POLICIES = ("none", "block", "attention")
ATTENTION_OUT = "attention_out"


def remat_mode(remat: bool | str) -> str:
    """A remat setting as one of REMAT_POLICIES (True / False, older configs' values, read as block / none)."""
    if remat is True or remat is False:
        return "block" if remat else "none"
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat {remat!r} is not known; choose one of {list(REMAT_POLICIES)}")
    return remat


def remat_block(block, remat: bool | str):
    """The Flax module class `block` wrapped for rematerialisation policy `remat` (see REMAT_POLICIES)."""
    mode = remat_mode(remat)
    if mode == "none":
        return block
    if mode == "block":
        return nn.remat(block)
    return nn.remat(block, policy=jax.checkpoint_policies.save_only_these_names(ATTENTION_OUT))


# The batch sharding a sharded train step keeps its blocks' activations in (None outside one). Without it, GSPMD
# may pick another layout inside a rematerialised block's recomputation: the TPU compiler planned for v5p
# recomputed whole attention and dense layers for the global batch on every chip (2.5x the FLOPs of the step
# without remat, 3x its time estimate), where constraining each block's input keeps the recompute split.
_BATCH_SHARDING: contextvars.ContextVar = contextvars.ContextVar("batch_sharding", default=None)


@contextlib.contextmanager
def batch_sharded_activations(sharding):
    """While a step is traced: `constrain_batch` puts activations in `sharding` (a NamedSharding that splits
    the leading axis over the mesh's batch axes)."""
    token = _BATCH_SHARDING.set(sharding)
    try:
        yield
    finally:
        _BATCH_SHARDING.reset(token)


def constrain_batch(x: jax.Array) -> jax.Array:
    """`x` (batch, ...) split over the batch axes inside `batch_sharded_activations`; unchanged elsewhere."""
    sharding = _BATCH_SHARDING.get()
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def attention_output(x: jax.Array) -> jax.Array:
    """Tag an attention output so the "attention" remat policy keeps it (a no-op otherwise)."""
    return checkpoint_name(x, ATTENTION_OUT)


def flash_applies(q: jax.Array, bias=None, mask=None) -> bool:
    """Whether cuDNN flash attention is worth trying: a GPU backend, bfloat16/float16 inputs (cuDNN has no
    float32 kernel), no bias or mask (the DiT's and U-Net's attention; T5's position bias stays on XLA), and
    a head dimension cuDNN takes (a multiple of 8, at most 128). Elsewhere XLA's attention runs (on the
    CPU, for long inputs, one head at a time: `by_head_applies`)."""
    return (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16) and bias is None
            and mask is None and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128)


# XLA:CPU runs attention whole: the logits of every batch item and head, (b, heads, t, s) float32, are written
# and read back by each pass of the softmax; at 1025 tokens that is 50 MB for batch 2 x 6 heads, far past the
# caches. One (batch, key/value head) at a time its logits (4 MB) stay in cache: the attention of a SAO-shaped
# DiT ran 4-8x faster (bench/bench_cpu_dit.py). Below this many logits in all the loop gains nothing.
BY_HEAD_MIN_LOGITS = 1 << 20


def by_head_applies(q: jax.Array, k: jax.Array, bias=None, mask=None) -> bool:
    """Whether `attention` offers the CPU the by-head loop: no bias or mask (the DiT's and the U-Net's
    attention), consistent shapes, and at least BY_HEAD_MIN_LOGITS logits in all. The loop is then used
    where the program is lowered for the CPU (not by the GPU or a TPU plan compiled on this machine)."""
    if bias is not None or mask is not None or q.ndim != 4 or k.ndim != 4:
        return False
    b, t, n, d = q.shape
    if k.shape[0] != b or k.shape[3] != d or n % k.shape[2]:
        return False   # jax.nn.dot_product_attention names the problem
    return b * n * t * k.shape[1] >= BY_HEAD_MIN_LOGITS


def attention_by_head(q: jax.Array, k: jax.Array, v: jax.Array, scale: float | None = None) -> jax.Array:
    """`jax.nn.dot_product_attention(q, k, v, scale=scale)` (no bias or mask) computed one (batch, key/value
    head) at a time. The query heads that share a key/value head are stacked along the query axis, so
    each iteration is two plain matrix products and a softmax. Same arithmetic as XLA's: logits in float32
    (also for half-precision inputs), scaled, a float32 softmax cast to v's dtype, then the product with v."""
    b, t, n, d = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    group = n // kv_heads
    scale = d ** -0.5 if scale is None else scale
    qs = q.reshape(b, t, kv_heads, group, d).transpose(0, 2, 3, 1, 4).reshape(b * kv_heads, group * t, d)
    ks, vs = (x.transpose(0, 2, 1, 3).reshape(b * kv_heads, s, x.shape[3]) for x in (k, v))

    def one_head(qkv):
        qh, kh, vh = qkv
        logits = jnp.einsum("td,sd->ts", qh, kh, preferred_element_type=jnp.float32)
        logits = logits * jnp.asarray(scale, jnp.float32)
        probs = jax.nn.softmax(logits, axis=-1).astype(vh.dtype)
        return jnp.einsum("ts,sd->td", probs, vh)

    out = jax.lax.map(one_head, (qs, ks, vs))
    return out.reshape(b, kv_heads, group, t, -1).transpose(0, 3, 1, 2, 4).reshape(b, t, n, -1)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, bias: jax.Array | None = None,
              mask: jax.Array | None = None, scale: float | None = None) -> jax.Array:
    """Scaled dot-product attention over (batch, seq, heads, head_dim) tensors.

    `k`/`v` may have fewer heads than `q` (grouped-query attention). `bias` is added to the logits
    (broadcastable to (batch, heads, q_len, kv_len)); `mask` is boolean, True where attention is
    allowed. `scale` defaults to 1/sqrt(head_dim). On a GPU in half precision this is cuDNN's flash
    attention where `flash_applies` (a shape cuDNN refuses when traced falls back to XLA's); a program
    lowered for the CPU loops over heads where `by_head_applies`.
    """
    dtype = q.dtype
    k, v = k.astype(dtype), v.astype(dtype)
    if bias is not None:
        bias = bias.astype(dtype)
    if flash_applies(q, bias, mask):
        try:
            return attention_output(jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn"))
        except (NotImplementedError, ValueError, RuntimeError):   # raised while tracing: this shape is not cuDNN's
            pass
    if by_head_applies(q, k, bias, mask):
        return attention_output(jax.lax.platform_dependent(
            q, k, v, cpu=lambda q, k, v: attention_by_head(q, k, v, scale),
            default=lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=scale)))
    return attention_output(jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale))


def layer_norm(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
    """Bias-free LayerNorm (learned scale only), statistics in float32 whatever `dtype` is."""
    return nn.LayerNorm(epsilon=eps, use_bias=False, use_scale=True, use_fast_variance=False,
                        dtype=dtype, param_dtype=jnp.float32, name=name)
