"""Importing Hugging Face BERT/RoBERTa text encoders (`BertModel`, `RobertaModel`, the text tower of
a transformers `ClapModel` or of a LAION-CLAP checkpoint) into sa_jax.models.bert: a table of rows
(sa_jax.checkpoints.table) built from the config, the config read from `config.json`, and the checks
of a local folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import jax
import numpy as np

from sa_jax.checkpoints.io import hf_weight_file, read_state_dict
from sa_jax.checkpoints.table import Row, convert, strip, torch_layer
from sa_jax.config import read_json
from sa_jax.errors import CheckpointError
from sa_jax.models.bert import BertConfig, BertEncoder
from sa_jax.tree import flat_shapes

# Buffers without learned state (BERT's and, for the CLAP importers, HTSAT's).
BUFFERS = (r"(.*\.)?(position_ids|token_type_ids|num_batches_tracked|relative_position_index|attn_mask)",)


def bert_rows(config: BertConfig, src: str = "", dst: str = "", params: str = "params") -> Iterator[Row]:
    """A Hugging Face BertModel / RobertaModel / ClapTextModel (keys under `src`)."""
    def p(path):
        return f"{dst}/{path}" if dst else path
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        yield from torch_layer(f"{src}embeddings.{name}.weight", p(name), "tensor", params)
    yield from torch_layer(f"{src}embeddings.LayerNorm", p("embeddings_norm"), "ln", params)
    for i in range(config.num_layers):
        s, d = f"{src}encoder.layer.{i}", p(f"layer_{i}")
        for q in ("query", "key", "value"):
            yield from torch_layer(f"{s}.attention.self.{q}", f"{d}/attention_{q}", "dense", params)
        yield from torch_layer(f"{s}.attention.output.dense", f"{d}/attention_out", "dense", params)
        yield from torch_layer(f"{s}.attention.output.LayerNorm", f"{d}/attention_norm", "ln", params)
        yield from torch_layer(f"{s}.intermediate.dense", f"{d}/intermediate", "dense", params)
        yield from torch_layer(f"{s}.output.dense", f"{d}/output", "dense", params)
        yield from torch_layer(f"{s}.output.LayerNorm", f"{d}/output_norm", "ln", params)
    if config.pooler:
        yield from torch_layer(f"{src}pooler.dense", p("pooler"), "dense", params)


def bert_prefix(state: dict[str, np.ndarray]) -> str:
    """The prefix under which a state dict holds a BERT-family encoder ('' for a bare one,
    'bert.', 'roberta.', 'text_model.', 'text_branch.', ...)."""
    hits = sorted(k[: -len("embeddings.word_embeddings.weight")] for k in state
                  if k.endswith("embeddings.word_embeddings.weight"))
    if not hits:
        raise CheckpointError("no BERT/RoBERTa text encoder in this file (no '*embeddings.word_embeddings.weight' key)")
    return hits[0]


def _describe_text(c: BertConfig) -> str:
    return (f"the text encoder config ({c.num_layers} layers, width {c.hidden_size}, vocab {c.vocab_size}, "
            f"{c.positions} positions, pooler {'on' if c.pooler else 'off'})")


def import_bert(state: dict[str, np.ndarray], config: BertConfig, source: str = "state dict",
                prefix: str | None = None) -> dict:
    """Params of `BertEncoder(config)` from a Hugging Face BERT/RoBERTa/CLAP-text state dict.
    Keys outside `prefix` (auto-detected: '', 'bert.', 'roberta.', 'text_model.', ...), such as
    a masked-LM head or the other CLAP tower, are not the encoder's and are left alone."""
    prefix = bert_prefix(state) if prefix is None else prefix
    state = strip(state, prefix)
    ids = jax.ShapeDtypeStruct((1, 4), np.int32)
    tree = jax.eval_shape(lambda k, i: BertEncoder(config).init(k, i)["params"], jax.random.key(0), ids)
    want = flat_shapes(tree)
    where = source + (f" (keys under {prefix!r})" if prefix else "")
    return convert(state, list(bert_rows(config, params="")), want, _describe_text(config), where, ignore=BUFFERS)


def with_pooler(config: BertConfig, state: dict[str, np.ndarray], prefix: str) -> BertConfig:
    """`config` with its pooler switched to whether the file has one."""
    return dataclasses.replace(config, pooler=f"{prefix}pooler.dense.weight" in state)


# --------------------------------------------------------------------------------------------
# A local Hugging Face folder

def read_bert_config(folder: str | Path) -> BertConfig:
    """The BertConfig of a Hugging Face BertModel/RobertaModel/ClapModel folder's config.json."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json")
    data = read_json(path)
    if data.get("model_type") == "clap":
        data = {"model_type": "clap_text_model", **data.get("text_config", {})}
    return BertConfig.from_hf(data)


def check_bert_folder(folder: str | Path) -> Path:
    """The weight file of a Hugging Face BertModel/RobertaModel folder; FileNotFoundError naming
    everything that is missing."""
    return hf_weight_file(Path(folder), "text encoder", "a complete text encoder folder")


def load_bert(folder: str | Path) -> tuple[BertConfig, dict]:
    """(config, params) of a Hugging Face BertModel/RobertaModel folder (config.json +
    model.safetensors or pytorch_model.bin); the pooler is on when the file has one."""
    weights = check_bert_folder(folder)
    state = read_state_dict(weights)
    config = with_pooler(read_bert_config(folder), state, bert_prefix(state))
    return config, import_bert(state, config, source=str(weights))
