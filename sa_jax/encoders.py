"""Text encoders and CLAP loaded from local folders with their tokenizers, ready to use.

- `T5TextEncoder`: prompts -> (T5 embeddings, mask), Stable Audio Open's text conditioning.
- `TextEncoder`: a BERT/RoBERTa-family encoder -> every hidden state (CLAP's text tower alone is
  one: `load_clap_text_encoder`, Stable Audio 1.0's text conditioning, takes layer -2).
- `Clap`: both CLAP towers with the tokenizer: text/audio embeddings and the CLAP score.
- `tokenize`: prompts -> (ids, mask) padded to a length, warning about truncated prompts.

The Flax modules and their configs live in sa_jax.models (t5, bert, clap); the weights come through
the importers in sa_jax.checkpoints (t5, bert, clap) and the tokenizers through
sa_jax.checkpoints.tokenizer. Nothing is downloaded: every path is local.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.checkpoints.bert import check_bert_folder, load_bert
from sa_jax.checkpoints.clap import load_clap_text, load_hf_clap, load_laion_clap
from sa_jax.checkpoints.t5 import check_t5_folder, load_t5
from sa_jax.checkpoints.tokenizer import load_tokenizer
from sa_jax.models.bert import BertConfig, BertEncoder
from sa_jax.models.clap import ClapConfig, ClapModel, audio_features
from sa_jax.models.t5 import T5Config, T5Encoder

Dtype = Any


# --------------------------------------------------------------------------------------------
# Tokenising prompts

def prompt_list(prompts: Sequence[str] | str) -> list[str]:
    """`prompts` as a non-empty list of strings (one string is a list of one); ValueError/TypeError
    otherwise."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("the prompt list is empty; give at least one prompt")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings, got {bad[:3]}")
    return prompts


def tokenize(tokenizer, prompts: Sequence[str] | str, max_length: int, pad_to_max: bool = True,
             what: str = "text encoder") -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask bool), both (batch, max_length) int32/bool. Prompts longer than
    `max_length` tokens are truncated, with a warning that names them and says by how much."""
    prompts = prompt_list(prompts)
    # verbose=False: transformers would warn of indexing errors here; the warning below says what happens
    lengths = [len(ids) for ids in tokenizer(prompts, truncation=False, verbose=False)["input_ids"]]
    long = [(i, n) for i, n in enumerate(lengths) if n > max_length]
    if long:
        desc = "; ".join(f"prompt {i} ({prompts[i][:40]!r}...) has {n} tokens" for i, n in long[:5])
        warnings.warn(f"{len(long)} prompt(s) longer than the {what}'s {max_length} tokens were truncated to "
                      f"{max_length} tokens (the rest is ignored): {desc}", UserWarning, stacklevel=3)
    enc = tokenizer(prompts, truncation=True, max_length=max_length,
                    padding="max_length" if pad_to_max else "longest", return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(bool)


# --------------------------------------------------------------------------------------------
# T5 (Stable Audio Open)

class T5TextEncoder:
    """Prompts -> (embeddings (batch, max_length, d_model) float32, mask (batch, max_length) bool).

    Tokenises with padding to `max_length` and truncation, runs the Flax encoder, and zeroes the
    embeddings at padding positions, as stable-audio-tools' T5Conditioner does.
    """

    def __init__(self, config: T5Config, params: dict, tokenizer, max_length: int = 128,
                 dtype: Dtype = jnp.float32):
        self.config, self.params, self.tokenizer = config, params, tokenizer
        self.max_length = max_length
        self.module = T5Encoder(config, dtype)
        self._apply = jax.jit(self._embed)

    def _embed(self, params, ids, mask):
        h = self.module.apply({"params": params}, ids, mask)
        return h * mask[..., None].astype(h.dtype)

    @classmethod
    def load(cls, folder: str | Path, tokenizer_folder: str | Path | None = None, max_length: int = 128,
             dtype: Dtype = jnp.float32) -> "T5TextEncoder":
        folder, tok = check_t5_folder(folder, tokenizer_folder)
        config, params = load_t5(folder)
        return cls(config, params, load_tokenizer(tok), max_length, dtype)

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        prompts = prompt_list(prompts)
        enc = self.tokenizer(prompts, truncation=True, max_length=self.max_length, padding="max_length",
                             return_tensors="np")
        return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(bool)

    def __call__(self, prompts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
        ids, mask = self.tokenize(prompts)
        return self._apply(self.params, jnp.asarray(ids), jnp.asarray(mask)), jnp.asarray(mask)


# --------------------------------------------------------------------------------------------
# BERT / RoBERTa (CLAP's text tower)

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
        check_bert_folder(folder)          # names missing files before the tokenizer is looked at
        tokenizer = load_tokenizer(tokenizer_folder or folder)
        config, params = load_bert(folder)
        return cls(config, params, tokenizer, max_length, dtype)

    def tokenize(self, prompts: Sequence[str] | str) -> tuple[np.ndarray, np.ndarray]:
        if self.tokenizer is None:
            raise ValueError(f"this {self.what} has no tokenizer; load it with a tokenizer folder")
        return tokenize(self.tokenizer, prompts, self.max_length, what=self.what)

    def __call__(self, prompts: Sequence[str] | str):
        ids, mask = self.tokenize(prompts)
        states, _ = self._apply(self.params, jnp.asarray(ids), jnp.asarray(mask))
        return states, jnp.asarray(mask)


# --------------------------------------------------------------------------------------------
# A loaded CLAP: tokenizer + both towers, for conditioning and the CLAP score

class Clap:
    """CLAP with its tokenizer, ready to embed prompts and audio.

    - `text_features(prompts, layer=-2)` -> (hidden (batch, 77, hidden) float32, mask (batch, 77) bool):
      the text tower's hidden states at `layer` (-2, the penultimate, is what Stable Audio 1.0
      conditions on), prompts padded/truncated to `max_length` (77) tokens, a warning for longer ones.
    - `text_embedding(prompts)` / `audio_embedding(waveforms)` -> (batch, projection_dim), L2-normalised.
    - `score(prompts, waveforms)` -> cosine similarity of matching pairs (the CLAP score).
    """

    def __init__(self, config: ClapConfig, variables: dict, tokenizer=None, max_length: int | None = None,
                 dtype: Dtype = jnp.float32):
        config.validate()
        self.config, self.variables, self.tokenizer = config, variables, tokenizer
        if max_length is None:       # LAION's 77, or all a smaller text tower holds (the small recipe's: 32)
            max_length = min(77, config.text.max_tokens)
        if not 0 < max_length <= config.text.max_tokens:
            raise ValueError(f"max_length {max_length} must be in 1..{config.text.max_tokens}")
        self.max_length = max_length
        self.model = ClapModel(config, dtype)

        def call(method):
            return jax.jit(lambda v, *a: self.model.apply(v, *a, method=method))

        self._hidden = call(ClapModel.text_hidden_states)
        self._text = call(ClapModel.get_text_embedding)
        self._audio = call(ClapModel.get_audio_embedding)

    @classmethod
    def load(cls, path, tokenizer_folder=None, config: ClapConfig | None = None, max_length: int | None = None,
             dtype: Dtype = jnp.float32, **laion_overrides) -> "Clap":
        """From a transformers ClapModel folder (its tokenizer files may sit beside the weights) or
        a LAION-CLAP checkpoint file (`.pt`/`.safetensors`; give `tokenizer_folder`, a local copy of
        `roberta-base`'s tokenizer). Without a tokenizer only the audio side and token-id inputs work."""
        path = Path(path)
        if path.is_dir():
            config, variables = load_hf_clap(path)
            if tokenizer_folder is None and any((path / n).is_file() for n in ("tokenizer.json", "vocab.json")):
                tokenizer_folder = path
        elif path.is_file():
            config, variables = load_laion_clap(path, config, **laion_overrides)
        else:
            raise FileNotFoundError(f"CLAP weights {path} do not exist (give a transformers ClapModel folder or a "
                                    "LAION-CLAP .pt file)")
        tokenizer = load_tokenizer(tokenizer_folder) if tokenizer_folder is not None else None
        return cls(config, variables, tokenizer, max_length, dtype)

    def text_encoder(self):
        """The text tower alone as a `TextEncoder` (same weights and tokenizer)."""
        return TextEncoder(self.config.text, self.variables["params"]["text_model"], self.tokenizer,
                           self.max_length, self.model.dtype, what="CLAP text encoder")

    def tokenize(self, prompts: Sequence[str] | str) -> tuple[np.ndarray, np.ndarray]:
        if self.tokenizer is None:
            raise ValueError("this CLAP was loaded without a tokenizer; pass tokenizer_folder= to Clap.load")
        return tokenize(self.tokenizer, prompts, self.max_length, what="CLAP text encoder")

    def text_features(self, prompts: Sequence[str] | str, layer: int = -2) -> tuple[jax.Array, jax.Array]:
        n = self.config.text.num_layers
        if not -(n + 1) <= layer <= n:
            raise ValueError(f"layer {layer} is not in -{n + 1}..{n} (the text tower has {n} layers)")
        ids, mask = self.tokenize(prompts)
        return self._hidden(self.variables, ids, mask)[layer], jnp.asarray(mask)

    def text_embedding(self, prompts: Sequence[str] | str) -> jax.Array:
        ids, mask = self.tokenize(prompts)
        return self._text(self.variables, ids, mask)

    def audio_embedding(self, waveforms, sample_rate: int | None = None, seed: int = 0) -> jax.Array:
        feats, longer = audio_features(waveforms, self.config, seed=seed, sample_rate=sample_rate)
        return self._audio(self.variables, feats, longer)

    def score(self, prompts: Sequence[str], waveforms, sample_rate: int | None = None) -> np.ndarray:
        t = np.asarray(self.text_embedding(prompts))
        a = np.asarray(self.audio_embedding(waveforms, sample_rate))
        if len(t) != len(a):
            raise ValueError(f"{len(t)} prompts but {len(a)} clips; the CLAP score pairs them one to one")
        return np.sum(t * a, axis=-1)


def load_clap_text_encoder(path, tokenizer_folder, max_length: int = 77, dtype: Dtype = jnp.float32,
                           text_heads: int | None = None):
    """CLAP's text tower alone with its tokenizer, as Stable Audio 1.0's CLAP conditioner uses it:
    `encoder(prompts)` -> (hidden states, mask); take `[-2]` for the penultimate layer. `path` is a
    transformers ClapModel folder or a LAION-CLAP `.pt`; `tokenizer_folder` a local RoBERTa
    tokenizer (for a folder that holds its tokenizer, pass the folder itself)."""
    config, params = load_clap_text(path, text_heads)
    return TextEncoder(config, params, load_tokenizer(tokenizer_folder), max_length, dtype, what="CLAP text encoder")
