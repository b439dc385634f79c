"""A BERT/RoBERTa-family text encoder in Flax (its importer: sa_jax.checkpoints.clap; with a
tokenizer: sa_jax.encoders.TextEncoder).

The encoder follows the original BERT layout that RoBERTa and CLAP's text tower share: token,
position and token-type embeddings summed and layer-normed, then `num_layers` post-norm blocks
(self-attention -> dense -> residual -> LayerNorm, GELU feed-forward -> residual -> LayerNorm),
and an optional pooler (tanh dense layer on the first token). The two families differ only in
how positions are numbered: BERT counts 0, 1, 2, ...; RoBERTa (and CLAP's text tower) starts at
`pad_token_id + 1` and gives padding tokens the padding position, so a row's positions do not
depend on how much padding follows it.

`BertEncoder` returns every hidden state (the embedding output first, then each layer's output),
so a conditioner can take layer -2 as Stable Audio 1.0 does with CLAP.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_jax.errors import ConfigError

Dtype = Any

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
}


@dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT-family encoder. Defaults are `roberta-base` (CLAP's text tower)."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    pad_token_id: int = 1
    positions: Literal["roberta", "absolute"] = "roberta"   # how position ids are numbered
    pooler: bool = True
    dropout: float = 0.0          # hidden-state dropout in training (deterministic=False); 0.1 in BERT/RoBERTa

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"text encoder config: {name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"text encoder config: hidden_size {self.hidden_size} is not a multiple of "
                              f"num_heads {self.num_heads}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ConfigError(f"text encoder config: hidden_act {self.hidden_act!r} is not supported; "
                              f"choose one of {sorted(_ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"text encoder config: dropout {self.dropout} must be in [0, 1)")
        if self.positions not in ("roberta", "absolute"):
            raise ConfigError(f"text encoder config: positions {self.positions!r} is not 'roberta' or 'absolute'")

    @property
    def max_tokens(self) -> int:
        """The longest input the position table allows."""
        return self.max_position_embeddings - (self.pad_token_id + 1 if self.positions == "roberta" else 0)

    @classmethod
    def from_hf(cls, data: dict) -> "BertConfig":
        """From a Hugging Face `config.json` dict of a BERT, RoBERTa or CLAP text model."""
        model_type = data.get("model_type", "bert")
        if model_type not in ("bert", "roberta", "clap_text_model", "xlm-roberta", "camembert"):
            raise ConfigError(f"model_type {model_type!r} is not a BERT/RoBERTa-family text encoder")
        roberta = model_type != "bert"
        if data.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"position_embedding_type {data['position_embedding_type']!r} is not supported "
                              "(only 'absolute')")
        pad = data.get("pad_token_id")
        config = cls(
            vocab_size=data.get("vocab_size", 50265 if roberta else 30522),
            hidden_size=data.get("hidden_size", 768),
            num_layers=data.get("num_hidden_layers", 12),
            num_heads=data.get("num_attention_heads", 12),
            intermediate_size=data.get("intermediate_size", 3072),
            max_position_embeddings=data.get("max_position_embeddings", 514 if roberta else 512),
            type_vocab_size=data.get("type_vocab_size", 1 if roberta else 2),
            layer_norm_eps=float(data.get("layer_norm_eps", 1e-12)),
            hidden_act=data.get("hidden_act", "gelu"),
            pad_token_id=(1 if roberta else 0) if pad is None else int(pad),
            positions="roberta" if roberta else "absolute",
            dropout=float(data.get("hidden_dropout_prob", 0.1)),
        )
        config.validate()
        return config

    @classmethod
    def from_dict(cls, data: dict) -> "BertConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"text encoder config: unknown keys {sorted(unknown)}; valid keys are {sorted(names)}")
        config = cls(**data)
        config.validate()
        return config


def position_ids(input_ids: jax.Array, config: BertConfig) -> jax.Array:
    """Position ids for `input_ids` (batch, len): 0..len-1 for BERT; for RoBERTa pad+1, pad+2, ...
    over non-padding tokens and `pad_token_id` at padding tokens."""
    if config.positions == "absolute":
        return jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
    real = (input_ids != config.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real, axis=1) * real + config.pad_token_id


def _layer_norm(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, param_dtype=jnp.float32, name=name)


def _dense(features: int, dtype: Dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(0.02), name=name)


class BertLayer(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, mask, deterministic: bool = True):
        c = self.config
        drop = nn.Dropout(c.dropout)
        b, n, _ = h.shape
        head_dim = c.hidden_size // c.num_heads
        q, k, v = (_dense(c.hidden_size, self.dtype, f"attention_{name}")(h).reshape(b, n, c.num_heads, head_dim)
                   for name in ("query", "key", "value"))
        att = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask)
        att = drop(_dense(c.hidden_size, self.dtype, "attention_out")(att.reshape(b, n, c.hidden_size)), deterministic)
        h = _layer_norm(c.layer_norm_eps, self.dtype, "attention_norm")(h + att)
        ff = _ACTIVATIONS[c.hidden_act](_dense(c.intermediate_size, self.dtype, "intermediate")(h))
        ff = drop(_dense(c.hidden_size, self.dtype, "output")(ff), deterministic)
        return _layer_norm(c.layer_norm_eps, self.dtype, "output_norm")(h + ff)


class BertEncoder(nn.Module):
    """(hidden_states, pooled) = BertEncoder(input_ids, attention_mask, token_type_ids).

    `hidden_states` is a tuple of num_layers + 1 arrays (batch, len, hidden): the embedding
    output, then every layer's output (as transformers' `output_hidden_states=True`); `pooled`
    is tanh(dense(last[:, 0])) or None when the config has no pooler. Outputs are float32.
    `deterministic=False` applies the config's hidden dropout (needs a 'dropout' rng); attention
    probabilities are not dropped (the fused attention kernel has no dropout).
    """

    config: BertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, deterministic: bool = True):
        c = self.config
        init = nn.initializers.normal(0.02)
        word = self.param("word_embeddings", init, (c.vocab_size, c.hidden_size), jnp.float32)
        pos = self.param("position_embeddings", init, (c.max_position_embeddings, c.hidden_size), jnp.float32)
        types = self.param("token_type_embeddings", init, (c.type_vocab_size, c.hidden_size), jnp.float32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros(input_ids.shape, jnp.int32)
        h = (jnp.take(word, input_ids, axis=0) + jnp.take(types, token_type_ids, axis=0)
             + jnp.take(pos, position_ids(input_ids, c), axis=0))
        h = _layer_norm(c.layer_norm_eps, self.dtype, "embeddings_norm")(h.astype(self.dtype))
        h = nn.Dropout(c.dropout)(h, deterministic)
        mask = None
        if attention_mask is not None:
            mask = attention_mask.astype(bool)[:, None, None, :]   # (batch, heads=1, queries=1, keys)
        states = [h]
        for i in range(c.num_layers):
            h = BertLayer(c, self.dtype, name=f"layer_{i}")(h, mask, deterministic)
            states.append(h)
        pooled = None
        if c.pooler:
            pooled = jnp.tanh(_dense(c.hidden_size, self.dtype, "pooler")(h[:, 0])).astype(jnp.float32)
        return tuple(s.astype(jnp.float32) for s in states), pooled
