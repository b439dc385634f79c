"""The T5 encoder in Flax (its importer: sa_jax.checkpoints.t5; with a tokenizer: sa_jax.encoders).

Mirrors Hugging Face's `T5EncoderModel`: token embedding (not scaled), `num_layers` pre-norm
blocks of self-attention and feed-forward, RMS norm without mean subtraction or bias (float32
statistics), a final RMS norm. Attention logits are not scaled by 1/sqrt(d); instead every layer
adds a learned bias per head looked up from a bucketed relative position (bidirectional: half of
the buckets for keys to the right; within each half, exact buckets for short distances and
logarithmic ones up to `relative_attention_max_distance`). Only the first block owns the bias
table; later blocks reuse its output. The feed-forward is ReLU (original T5, as `t5-base` used by
Stable Audio Open) or gated (`gated-gelu`, tanh-approximate GELU, for T5 v1.1 and FLAN-T5).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.errors import ConfigError
from sa_jax.nn.attention import attention
from sa_jax.tree import flat_shapes

Dtype = Any

_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
}


@dataclass(frozen=True)
class T5Config:
    """Encoder shape. Defaults are `t5-base` (the text encoder of Stable Audio Open)."""

    vocab_size: int = 32128
    d_model: int = 768
    d_kv: int = 64
    d_ff: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    gated: bool = False                                   # wi_0/wi_1 (v1.1, FLAN) or wi (original)
    activation: Literal["relu", "gelu_new", "gelu_pytorch_tanh", "gelu", "silu"] = "relu"

    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"T5 config: {name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_hf(cls, data: dict) -> "T5Config":
        """From a Hugging Face T5 `config.json` dict."""
        proj = data.get("feed_forward_proj", "relu")
        parts = proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ConfigError(f"T5 config: feed_forward_proj {proj!r} is not 'ACT' or 'gated-ACT'")
        act = parts[-1]
        if proj == "gated-gelu":
            act = "gelu_new"  # transformers maps this name to the tanh approximation
        if act not in _ACTIVATIONS:
            raise ConfigError(f"T5 config: activation {act!r} is not supported; choose one of {sorted(_ACTIVATIONS)}")
        return cls(
            vocab_size=data.get("vocab_size", 32128), d_model=data.get("d_model", 512),
            d_kv=data.get("d_kv", 64), d_ff=data.get("d_ff", 2048),
            num_layers=data.get("num_layers", 6), num_heads=data.get("num_heads", 8),
            relative_attention_num_buckets=data.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=data.get("relative_attention_max_distance", 128),
            layer_norm_epsilon=float(data.get("layer_norm_epsilon", 1e-6)),
            gated=len(parts) == 2, activation=act)


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """(q_len, k_len) int32 bucket of each key offset relative to each query (bidirectional)."""
    rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    dist = np.abs(rel)
    exact = half // 2
    # log-spaced buckets for distances >= exact, saturating at the last bucket of the half;
    # float32 arithmetic as the reference, so boundary distances land in the same bucket
    ratio = np.maximum(dist, 1).astype(np.float32) / np.float32(exact)
    scaled = np.log(ratio) / np.float32(math.log(max_distance / exact)) * np.float32(half - exact)
    far = np.minimum(exact + scaled.astype(np.int64), half - 1)
    return (buckets + np.where(dist < exact, dist, far)).astype(np.int32)


class RMSNorm(nn.Module):
    eps: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (scale * x32).astype(self.dtype)


def _dense(features: int, name: str, dtype: Dtype) -> nn.Dense:
    return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(0.05), name=name)


class T5SelfAttention(nn.Module):
    config: T5Config
    has_bias_table: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, position_bias):
        c = self.config
        b, n, _ = x.shape
        inner = c.num_heads * c.d_kv
        q, k, v = (_dense(inner, name, self.dtype)(x).reshape(b, n, c.num_heads, c.d_kv) for name in "qkv")
        if self.has_bias_table:
            table = self.param("relative_attention_bias", nn.initializers.normal(0.05),
                               (c.relative_attention_num_buckets, c.num_heads), jnp.float32)
            buckets = relative_position_buckets(n, n, c.relative_attention_num_buckets,
                                                c.relative_attention_max_distance)
            position_bias = jnp.transpose(table[buckets], (2, 0, 1))[None]   # (1, heads, n, n)
        # T5 does not scale the logits by 1/sqrt(d_kv).
        out = attention(q, k, v, bias=position_bias, mask=mask, scale=1.0).reshape(b, n, inner)
        return _dense(c.d_model, "o", self.dtype)(out), position_bias


class T5FeedForward(nn.Module):
    config: T5Config
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        act = _ACTIVATIONS[c.activation]
        if c.gated:
            h = act(_dense(c.d_ff, "wi_0", self.dtype)(x)) * _dense(c.d_ff, "wi_1", self.dtype)(x)
        else:
            h = act(_dense(c.d_ff, "wi", self.dtype)(x))
        return _dense(c.d_model, "wo", self.dtype)(h)


class T5Encoder(nn.Module):
    """last_hidden_state = T5Encoder(input_ids (batch, len) int, attention_mask (batch, len))."""

    config: T5Config
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        c = self.config
        emb = self.param("shared", nn.initializers.normal(1.0), (c.vocab_size, c.d_model), jnp.float32)
        h = jnp.take(emb, input_ids, axis=0).astype(self.dtype)
        mask = None
        if attention_mask is not None:
            mask = attention_mask.astype(bool)[:, None, None, :]   # (batch, 1, 1, keys)
        bias = None
        for i in range(c.num_layers):
            attn_norm = RMSNorm(c.layer_norm_epsilon, self.dtype, name=f"block_{i}_attn_norm")
            out, bias = T5SelfAttention(c, i == 0, self.dtype, name=f"block_{i}_attn")(attn_norm(h), mask, bias)
            h = h + out
            ff_norm = RMSNorm(c.layer_norm_epsilon, self.dtype, name=f"block_{i}_ff_norm")
            h = h + T5FeedForward(c, self.dtype, name=f"block_{i}_ff")(ff_norm(h))
        return RMSNorm(c.layer_norm_epsilon, jnp.float32, name="final_norm")(h)


def param_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    """Flat `a/b -> shape` of the encoder's parameters (no compute)."""
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    tree = jax.eval_shape(lambda k, i: T5Encoder(config).init(k, i)["params"], jax.random.key(0), ids)
    return flat_shapes(tree)


def replace(config: T5Config, **changes) -> T5Config:
    return dataclasses.replace(config, **changes)
