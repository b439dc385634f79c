"""Importing Hugging Face T5 encoders (`T5EncoderModel`, or the encoder of a whole seq2seq
`T5ForConditionalGeneration`; T5 v1.0, v1.1/flan gated, UMT5/MT5) into sa_jax.models.t5, and the
checks and config reading of a local T5 folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sa_jax.checkpoints.io import read_weights
from sa_jax.checkpoints.table import Report, Row, convert, convert_into, expand, linear, strip
from sa_jax.config import read_json
from sa_jax.errors import ConfigError
from sa_jax.models.t5 import T5Config, param_shapes

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "model.fp16.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")

_ROWS: list[Row] = [
    ("shared.weight", "shared", None),
    ("encoder.final_layer_norm.weight", "final_norm/scale", None),
    ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "block_0_attn/relative_attention_bias",
     None),
    ("encoder.block.{i}.layer.0.layer_norm.weight", "block_{i}_attn_norm/scale", None),
    *[(f"encoder.block.{{i}}.layer.0.SelfAttention.{n}.weight", f"block_{{i}}_attn/{n}/kernel", linear)
      for n in "qkvo"],
    ("encoder.block.{i}.layer.1.layer_norm.weight", "block_{i}_ff_norm/scale", None),
]


def rows(config: T5Config) -> list[Row]:
    ff = ("wi_0", "wi_1", "wo") if config.gated else ("wi", "wo")
    ff_rows = [(f"encoder.block.{{i}}.layer.1.DenseReluDense.{n}.weight", f"block_{{i}}_ff/{n}/kernel", linear)
               for n in ff]
    return expand(_ROWS + ff_rows, i=range(config.num_layers))


# Keys of a whole seq2seq T5 checkpoint that an encoder has no use for.
IGNORED = (r"decoder\..*", r"lm_head\.weight")


def _encoder_part(state: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    part = strip(state, prefix)
    # The encoder's token embedding is tied to `shared`; files hold either name, or both.
    alias = "encoder.embed_tokens.weight"
    if alias in part:
        if "shared.weight" not in part:
            part["shared.weight"] = part.pop(alias)
        elif np.array_equal(np.asarray(part["shared.weight"]), np.asarray(part[alias])):
            part.pop(alias)
    return part


def convert_t5(report: Report, state: dict[str, np.ndarray], config: T5Config, prefix: str = "") -> dict:
    """The T5 encoder's params from the keys of `state` under `prefix`; problems go to `report`."""
    return convert_into(report, _encoder_part(state, prefix), rows(config), param_shapes(config), ignore=IGNORED)


def import_t5(state: dict[str, np.ndarray], config: T5Config, prefix: str = "",
              source: str = "the T5 state dict") -> dict:
    """T5 encoder parameters from a Hugging Face T5 state dict (encoder-only or whole seq2seq)."""
    return convert(_encoder_part(state, prefix), rows(config), param_shapes(config),
                   f"the T5 encoder ({config.num_layers} layers, width {config.d_model})", source, ignore=IGNORED)


# --------------------------------------------------------------------------------------------
# A local Hugging Face folder

def check_t5_folder(folder: str | Path, tokenizer_folder: str | Path | None = None) -> tuple[Path, Path]:
    """Check that `folder` holds a T5 encoder (config + weights) and a tokenizer (in `folder` or
    `tokenizer_folder`); raise FileNotFoundError naming every missing file and where it was looked for."""
    folder = Path(folder)
    tok = Path(tokenizer_folder) if tokenizer_folder is not None else folder
    if not folder.is_dir():
        raise FileNotFoundError(f"T5 folder {folder} does not exist or is not a directory")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append(f"config.json (in {folder})")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        missing.append(f"weights: one of {', '.join(WEIGHT_FILES)} (in {folder})")
    if not tok.is_dir():
        missing.append(f"tokenizer folder {tok}")
    else:
        if not any((tok / f).is_file() for f in TOKENIZER_FILES):
            missing.append(f"tokenizer: one of {', '.join(TOKENIZER_FILES)} (in {tok})")
        if not (tok / "tokenizer_config.json").is_file() and not (tok / "config.json").is_file():
            missing.append(f"tokenizer_config.json (in {tok})")
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete T5 encoder folder; missing:\n  "
                                + "\n  ".join(missing))
    return folder, tok


def read_t5_config(folder: str | Path) -> T5Config:
    path = Path(folder) / "config.json"
    data = read_json(path)
    model_type = data.get("model_type", "t5")
    if model_type not in ("t5", "umt5", "mt5"):
        raise ConfigError(f"{path}: model_type {model_type!r} is not a T5 model")
    return T5Config.from_hf(data)


def load_t5(folder: str | Path) -> tuple[T5Config, dict]:
    """(config, params) of the T5 encoder in a Hugging Face folder (config.json + weights)."""
    config = read_t5_config(folder)
    return config, import_t5(read_weights(folder, WEIGHT_FILES), config, source=str(folder))
