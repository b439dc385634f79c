"""A BERT/RoBERTa-family text encoder in Flax, and loading it (weights, config, tokenizer) from a
local Hugging Face folder.

The encoder follows the original BERT layout that RoBERTa and CLAP's text tower share: token,
position and token-type embeddings summed and layer-normed, then `num_layers` post-norm blocks
(self-attention -> dense -> residual -> LayerNorm, GELU feed-forward -> residual -> LayerNorm),
and an optional pooler (tanh dense layer on the first token). The two families differ only in
how positions are numbered: BERT counts 0, 1, 2, ...; RoBERTa (and CLAP's text tower) starts at
`pad_token_id + 1` and gives padding tokens the padding position, so a row's positions do not
depend on how much padding follows it.

`TextEncoder.__call__` returns every hidden state (the embedding output first, then each
layer's output), so a conditioner can take layer -2 as Stable Audio 1.0 does with CLAP.

transformers is used only for tokenizers and to read `config.json`; the math is ours.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.config import ConfigError

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


# --------------------------------------------------------------------------------------------
# Tokenising prompts

def load_tokenizer(folder: str | Path):
    """The Hugging Face tokenizer saved in `folder` (local files only). Raises FileNotFoundError
    naming the folder and the files a tokenizer needs when they are not there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} does not exist or is not a directory")
    have_fast = (folder / "tokenizer.json").is_file()
    have_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    have_wordpiece = (folder / "vocab.txt").is_file()
    if not (have_fast or have_bpe or have_wordpiece):
        raise FileNotFoundError(
            f"no tokenizer in {folder}: need tokenizer.json, or vocab.json + merges.txt (RoBERTa/CLAP), "
            f"or vocab.txt (BERT); the folder holds {sorted(p.name for p in folder.iterdir()) or 'nothing'}")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # transformers raises many types; say where and what
        raise FileNotFoundError(f"could not load a tokenizer from {folder} ({type(e).__name__}: {e})") from None


def tokenize(tokenizer, prompts: Sequence[str] | str, max_length: int, pad_to_max: bool = True,
             what: str = "text encoder") -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask bool), both (batch, max_length) int32/bool. Prompts longer than
    `max_length` tokens are truncated, with a warning that names them and says by how much."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("the prompt list is empty; give at least one prompt")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings, got {bad[:3]}")
    lengths = [len(ids) for ids in tokenizer(prompts, truncation=False)["input_ids"]]
    long = [(i, n) for i, n in enumerate(lengths) if n > max_length]
    if long:
        desc = "; ".join(f"prompt {i} ({prompts[i][:40]!r}...) has {n} tokens" for i, n in long[:5])
        warnings.warn(f"{len(long)} prompt(s) longer than the {what}'s {max_length} tokens were truncated to "
                      f"{max_length} tokens (the rest is ignored): {desc}", UserWarning, stacklevel=3)
    enc = tokenizer(prompts, truncation=True, max_length=max_length,
                    padding="max_length" if pad_to_max else "longest", return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(bool)


# --------------------------------------------------------------------------------------------
# A text encoder loaded from a local folder

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_bert_config(folder: str | Path) -> BertConfig:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json")
    with open(path) as f:
        data = json.load(f)
    if data.get("model_type") == "clap":
        data = {"model_type": "clap_text_model", **data.get("text_config", {})}
    return BertConfig.from_hf(data)


class TextEncoder:
    """A BERT/RoBERTa-family encoder with its tokenizer.

    `encoder(prompts)` -> (hidden_states, mask): `hidden_states[layer]` is (batch, max_length,
    hidden) float32 for layer in -(num_layers+1)..num_layers (0 is the embedding output, -1 the
    last layer, -2 the penultimate); `mask` is (batch, max_length) bool, True at real tokens.
    """

    def __init__(self, config: BertConfig, params: dict, tokenizer, max_length: int | None = None,
                 dtype: Dtype = jnp.float32, what: str = "text encoder"):
        config.validate()
        self.config, self.params, self.tokenizer, self.what = config, params, tokenizer, what
        self.max_length = config.max_tokens if max_length is None else int(max_length)
        if not 0 < self.max_length <= config.max_tokens:
            raise ValueError(f"max_length {self.max_length} must be in 1..{config.max_tokens} "
                             "(the encoder's position table)")
        self.module = BertEncoder(config, dtype)
        self._apply = jax.jit(lambda p, i, m: self.module.apply({"params": p}, i, m))

    @classmethod
    def load(cls, folder: str | Path, max_length: int | None = None, dtype: Dtype = jnp.float32,
             tokenizer_folder: str | Path | None = None) -> "TextEncoder":
        """From a Hugging Face BertModel/RobertaModel folder (config.json + model.safetensors or
        pytorch_model.bin + tokenizer files; the tokenizer may live in `tokenizer_folder`)."""
        from sa_jax.checkpoints.clap import bert_prefix, import_bert, with_pooler
        from sa_jax.checkpoints.io import read_state_dict

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"text encoder folder {folder} does not exist or is not a directory")
        missing = []
        if not (folder / "config.json").is_file():
            missing.append("config.json")
        weights = next((folder / f for f in _WEIGHT_FILES if (folder / f).is_file()), None)
        if weights is None:
            missing.append(f"weights: one of {', '.join(_WEIGHT_FILES)}")
        if missing:
            raise FileNotFoundError(f"{folder} is not a complete text encoder folder; missing: {'; '.join(missing)}")
        config = read_bert_config(folder)
        tokenizer = load_tokenizer(tokenizer_folder or folder)
        state = read_state_dict(weights)
        config = with_pooler(config, state, bert_prefix(state))
        params = import_bert(state, config, source=str(weights))
        return cls(config, params, tokenizer, max_length, dtype)

    def tokenize(self, prompts: Sequence[str] | str) -> tuple[np.ndarray, np.ndarray]:
        if self.tokenizer is None:
            raise ValueError(f"this {self.what} has no tokenizer; load it with a tokenizer folder")
        return tokenize(self.tokenizer, prompts, self.max_length, what=self.what)

    def __call__(self, prompts: Sequence[str] | str):
        ids, mask = self.tokenize(prompts)
        states, _ = self._apply(self.params, jnp.asarray(ids), jnp.asarray(mask))
        return states, jnp.asarray(mask)
