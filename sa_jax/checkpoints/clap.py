"""Importing CLAP weights: transformers `ClapModel` folders and LAION-CLAP `.pt` checkpoints (their text
towers through the BERT/RoBERTa importer, sa_jax.checkpoints.bert).

Each format is a table of rows (sa_jax.checkpoints.table), built from the config: for every layer
of our model the module prefix it has in the foreign file and the kind of layer, whose rows rename
and transpose its tensors. Buffers that carry no learned state (position-id tables, relative-position
indices, shift masks, BatchNorm step counters) and LAION modules that play no part in the
embeddings (the torchlibrosa front-end, the AudioSet classifier head, the `*_transform` MLPs)
are listed explicitly and skipped. Everything else that does not line up (keys the model has no
place for, weights the file lacks, wrong shapes) is collected and raised as one CheckpointError.

Variables come back as `{"params": ..., "batch_stats": ...}` for CLAP (BatchNorm running
statistics live in `batch_stats`) and as a plain params tree for a text tower alone.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from sa_jax.checkpoints.bert import BUFFERS, bert_rows, import_bert, read_bert_config, with_pooler
from sa_jax.checkpoints.io import HF_WEIGHTS, hf_weight_file, read_state_dict
from sa_jax.checkpoints.table import Row, convert, strip, torch_layer
from sa_jax.config import read_json
from sa_jax.errors import CheckpointError
from sa_jax.models.bert import BertConfig
from sa_jax.models.clap import ClapAudioFeatures, ClapConfig, HTSATConfig, variable_shapes

# --------------------------------------------------------------------------------------------
# Tables

def _aff_rows(src: str, dst: str) -> Iterator[Row]:
    for branch, idx in (("local", ("0", "1", "3", "4")), ("global", ("1", "2", "4", "5"))):
        for i, ours, kind in zip(idx, ("conv1", "bn1", "conv2", "bn2"), ("conv", "bn", "conv", "bn")):
            yield from torch_layer(f"{src}.{branch}_att.{i}", f"{dst}/{branch}/{ours}", kind)


def hf_audio_rows(config: HTSATConfig, src: str = "audio_model.audio_encoder.",
                     dst: str = "audio_model") -> Iterator[Row]:
    """transformers' ClapAudioModel encoder."""
    yield from torch_layer(f"{src}batch_norm", f"{dst}/bn0", "bn")
    yield from torch_layer(f"{src}patch_embed.proj", f"{dst}/patch_embed/proj", "conv")
    if config.patch_norm:
        yield from torch_layer(f"{src}patch_embed.norm", f"{dst}/patch_embed/norm", "ln")
    if config.enable_fusion:
        yield from torch_layer(f"{src}patch_embed.mel_conv2d", f"{dst}/patch_embed/mel_conv2d", "conv")
        yield from _aff_rows(f"{src}patch_embed.fusion_model", f"{dst}/patch_embed/fusion")
    for i, depth in enumerate(config.depths):
        for j in range(depth):
            s, d = f"{src}layers.{i}.blocks.{j}", f"{dst}/stage_{i}_block_{j}"
            yield from torch_layer(f"{s}.layernorm_before", f"{d}/norm1", "ln")
            yield from torch_layer(f"{s}.attention.self.relative_position_bias_table",
                             f"{d}/relative_position_bias_table", "tensor")
            dense = "dense" if config.qkv_bias else "dense_nobias"
            for q in ("query", "key", "value"):
                yield from torch_layer(f"{s}.attention.self.{q}", f"{d}/{q}", dense)
            yield from torch_layer(f"{s}.attention.output.dense", f"{d}/proj", "dense")
            yield from torch_layer(f"{s}.layernorm_after", f"{d}/norm2", "ln")
            yield from torch_layer(f"{s}.intermediate.dense", f"{d}/fc1", "dense")
            yield from torch_layer(f"{s}.output.dense", f"{d}/fc2", "dense")
        if i < len(config.depths) - 1:
            yield from torch_layer(f"{src}layers.{i}.downsample.norm", f"{dst}/stage_{i}_merge/norm", "ln")
            yield from torch_layer(f"{src}layers.{i}.downsample.reduction", f"{dst}/stage_{i}_merge/reduction",
                             "dense_nobias")
    yield from torch_layer(f"{src}norm", f"{dst}/norm", "ln")


def hf_clap_rows(config: ClapConfig) -> Iterator[Row]:
    """transformers' ClapModel."""
    yield from bert_rows(config.text, "text_model.", "text_model")
    yield from hf_audio_rows(config.audio)
    for tower in ("text", "audio"):
        for k in ("linear1", "linear2"):
            yield from torch_layer(f"{tower}_projection.{k}", f"{tower}_projection/{k}", "dense")
    for k in ("logit_scale_a", "logit_scale_t"):
        yield from torch_layer(k, k, "tensor")


def laion_audio_rows(config: HTSATConfig, src: str = "audio_branch.", dst: str = "audio_model") -> Iterator[Row]:
    """LAION-CLAP's HTSAT_Swin_Transformer (`clap_module/htsat.py`)."""
    yield from torch_layer(f"{src}bn0", f"{dst}/bn0", "bn")
    yield from torch_layer(f"{src}patch_embed.proj", f"{dst}/patch_embed/proj", "conv")
    if config.patch_norm:
        yield from torch_layer(f"{src}patch_embed.norm", f"{dst}/patch_embed/norm", "ln")
    if config.enable_fusion:
        yield from torch_layer(f"{src}patch_embed.mel_conv2d", f"{dst}/patch_embed/mel_conv2d", "conv")
        yield from _aff_rows(f"{src}patch_embed.fusion_model", f"{dst}/patch_embed/fusion")
    for i, depth in enumerate(config.depths):
        for j in range(depth):
            s, d = f"{src}layers.{i}.blocks.{j}", f"{dst}/stage_{i}_block_{j}"
            yield from torch_layer(f"{s}.norm1", f"{d}/norm1", "ln")
            yield from torch_layer(f"{s}.attn.relative_position_bias_table", f"{d}/relative_position_bias_table",
                                   "tensor")
            yield from torch_layer(f"{s}.attn.qkv", d, "qkv" if config.qkv_bias else "qkv_nobias")
            yield from torch_layer(f"{s}.attn.proj", f"{d}/proj", "dense")
            yield from torch_layer(f"{s}.norm2", f"{d}/norm2", "ln")
            yield from torch_layer(f"{s}.mlp.fc1", f"{d}/fc1", "dense")
            yield from torch_layer(f"{s}.mlp.fc2", f"{d}/fc2", "dense")
        if i < len(config.depths) - 1:
            yield from torch_layer(f"{src}layers.{i}.downsample.norm", f"{dst}/stage_{i}_merge/norm", "ln")
            yield from torch_layer(f"{src}layers.{i}.downsample.reduction", f"{dst}/stage_{i}_merge/reduction",
                             "dense_nobias")
    yield from torch_layer(f"{src}norm", f"{dst}/norm", "ln")


def laion_clap_rows(config: ClapConfig) -> Iterator[Row]:
    """LAION-CLAP's `CLAP` module (`clap_module/model.py`) with a RoBERTa/BERT text branch."""
    yield from bert_rows(config.text, "text_branch.", "text_model")
    yield from laion_audio_rows(config.audio)
    for tower in ("text", "audio"):
        for i, k in (("0", "linear1"), ("2", "linear2")):
            yield from torch_layer(f"{tower}_projection.{i}", f"{tower}_projection/{k}", "dense")
    for k in ("logit_scale_a", "logit_scale_t"):
        yield from torch_layer(k, k, "tensor")


# LAION modules that the embeddings never use: torchlibrosa's STFT/mel front-end (the features
# are computed outside the model), the AudioSet tagging head, and the training-only MLPs.
_LAION_UNUSED = (r"audio_branch\.(spectrogram_extractor|logmel_extractor|tscam_conv|head)\..*",
                 r"(text|audio)_transform\..*")


# --------------------------------------------------------------------------------------------
# Conversion

def _describe(c: ClapConfig) -> str:
    a = c.audio
    return (f"the CLAP config (text: {c.text.num_layers} layers x {c.text.hidden_size}; audio: HTSAT width "
            f"{a.embed_dim}, depths {list(a.depths)}, fusion {'on' if a.enable_fusion else 'off'}; "
            f"projection {c.projection_dim})")


def import_hf_clap(state: dict[str, np.ndarray], config: ClapConfig, source: str = "state dict") -> dict:
    """`{"params", "batch_stats"}` of `ClapModel(config)` from a transformers ClapModel state dict."""
    return convert(state, list(hf_clap_rows(config)), variable_shapes(config), _describe(config), source,
                   ignore=BUFFERS)


def import_laion_clap(state: dict[str, np.ndarray], config: ClapConfig, source: str = "state dict") -> dict:
    """`{"params", "batch_stats"}` of `ClapModel(config)` from a LAION-CLAP state dict (a DDP
    'module.' prefix is removed first)."""
    state = unwrap_laion(state)
    return convert(state, list(laion_clap_rows(config)), variable_shapes(config), _describe(config), source,
                   ignore=BUFFERS + _LAION_UNUSED)


def unwrap_laion(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if state and all(k.startswith("module.") for k in state):
        return strip(state, "module.")
    return state


# --------------------------------------------------------------------------------------------
# Configs read off a LAION checkpoint (it carries no config file)

def laion_config(state: dict[str, np.ndarray], spec_size: int = 256, text_heads: int | None = None,
                 audio_heads: tuple[int, ...] | None = None) -> ClapConfig:
    """The ClapConfig a LAION-CLAP state dict was trained with, read from its tensor shapes.

    What shapes cannot tell is a default: `spec_size` (256 in every released HTSAT), the text
    tower's head count (hidden / 64, as roberta-base and bert-base) and its positions (RoBERTa
    unless the text branch has 2 token types, i.e. BERT). Audio heads come from the relative-
    position tables."""
    state = unwrap_laion(state)
    need = ["text_branch.embeddings.word_embeddings.weight", "audio_branch.bn0.running_mean",
            "audio_branch.patch_embed.proj.weight", "text_projection.2.weight"]
    lacking = [k for k in need if k not in state]
    if lacking:
        raise CheckpointError(f"not a LAION-CLAP (HTSAT + BERT/RoBERTa) state dict: missing {', '.join(lacking)}")
    text = laion_text_config(state, text_heads)
    blocks: dict[int, int] = {}
    heads: dict[int, int] = {}
    for k, v in state.items():
        m = re.match(r"audio_branch\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table$", k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            blocks[i] = max(blocks.get(i, 0), j + 1)
            heads[i] = v.shape[1]
            if i == 0 and j == 0:
                window = (int(round(v.shape[0] ** 0.5)) + 1) // 2
    n = 1 + max(blocks)
    proj = state["audio_branch.patch_embed.proj.weight"]
    audio = HTSATConfig(
        num_mel_bins=state["audio_branch.bn0.running_mean"].shape[0], spec_size=spec_size,
        patch_size=proj.shape[2], patch_stride=(proj.shape[2], proj.shape[3]), window_size=window,
        embed_dim=proj.shape[0], depths=tuple(blocks[i] for i in range(n)),
        num_heads=audio_heads or tuple(heads[i] for i in range(n)),
        mlp_ratio=state["audio_branch.layers.0.blocks.0.mlp.fc1.weight"].shape[0] / proj.shape[0],
        qkv_bias="audio_branch.layers.0.blocks.0.attn.qkv.bias" in state,
        patch_norm="audio_branch.patch_embed.norm.weight" in state,
        enable_fusion="audio_branch.patch_embed.mel_conv2d.weight" in state)
    config = ClapConfig(text=text, audio=audio, projection_dim=state["text_projection.2.weight"].shape[0])
    config.validate()
    return config


def laion_text_config(state: dict[str, np.ndarray], text_heads: int | None = None) -> BertConfig:
    """The text branch's BertConfig, from the shapes under `text_branch.` (heads: hidden / 64
    unless given; RoBERTa positions and LayerNorm eps 1e-5 unless the branch has 2 token types,
    i.e. BERT)."""
    state = unwrap_laion(state)
    key = "text_branch.embeddings.word_embeddings.weight"
    if key not in state:
        raise CheckpointError(f"not a LAION-CLAP state dict: no {key}")
    word = state[key]
    layers = 1 + max(int(m.group(1)) for k in state
                     if (m := re.match(r"text_branch\.encoder\.layer\.(\d+)\.", k)))
    types = state["text_branch.embeddings.token_type_embeddings.weight"].shape[0]
    roberta = types == 1
    config = BertConfig(
        vocab_size=word.shape[0], hidden_size=word.shape[1], num_layers=layers,
        num_heads=text_heads or word.shape[1] // 64,
        intermediate_size=state["text_branch.encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state["text_branch.embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=types, layer_norm_eps=1e-5 if roberta else 1e-12,
        pad_token_id=1 if roberta else 0, positions="roberta" if roberta else "absolute",
        pooler="text_branch.pooler.dense.weight" in state)
    config.validate()
    return config


# --------------------------------------------------------------------------------------------
# Files and folders

def load_clap_text(path: str | Path, text_heads: int | None = None) -> tuple[BertConfig, dict]:
    """(config, params) of the text tower alone, from a transformers ClapModel folder or a LAION-CLAP
    checkpoint; the audio side of the file is not read (any HTSAT variant or fusion type will do)."""
    path = Path(path)
    if path.is_dir():
        weights = next((path / f for f in HF_WEIGHTS if (path / f).is_file()), None)
        if weights is None or not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a transformers ClapModel folder; need config.json and one "
                                    f"of {', '.join(HF_WEIGHTS)}")
        state = read_state_dict(weights)
        config = with_pooler(read_bert_config(path), state, "text_model.")
        return config, import_bert(state, config, source=str(weights), prefix="text_model.")
    if not path.is_file():
        raise FileNotFoundError(f"CLAP checkpoint {path} does not exist")
    state = unwrap_laion(read_state_dict(path))
    config = laion_text_config(state, text_heads)
    return config, import_bert(state, config, source=str(path), prefix="text_branch.")


def load_hf_clap(folder: str | Path) -> tuple[ClapConfig, dict]:
    """(config, variables) from a transformers ClapModel folder (config.json + model.safetensors
    or pytorch_model.bin)."""
    folder = Path(folder)
    weights = hf_weight_file(folder, "CLAP", "a transformers ClapModel folder")
    config = ClapConfig.from_hf(read_json(folder / "config.json"))
    if (folder / "preprocessor_config.json").is_file():
        config = dataclasses.replace(config, features=read_feature_config(folder / "preprocessor_config.json",
                                                                          config.audio.num_mel_bins))
    return config, import_hf_clap(read_state_dict(weights), config, source=str(weights))


def read_feature_config(path: str | Path, mel_bins: int) -> ClapAudioFeatures:
    """The log-mel settings of a transformers ClapFeatureExtractor `preprocessor_config.json`."""
    data = read_json(path)
    if data.get("feature_size", mel_bins) != mel_bins:
        raise CheckpointError(f"{path}: feature_size {data['feature_size']} differs from the model's "
                              f"{mel_bins} mel bins")
    d = ClapAudioFeatures()
    return ClapAudioFeatures(sample_rate=int(data.get("sampling_rate", d.sample_rate)),
                             n_fft=int(data.get("fft_window_size", d.n_fft)),
                             hop_length=int(data.get("hop_length", d.hop_length)),
                             f_min=float(data.get("frequency_min", d.f_min)),
                             f_max=float(data.get("frequency_max", d.f_max)),
                             max_length_s=float(data.get("max_length_s", d.max_length_s)))


def load_laion_clap(path: str | Path, config: ClapConfig | None = None, **overrides) -> tuple[ClapConfig, dict]:
    """(config, variables) from a LAION-CLAP checkpoint (`.pt`, read with weights_only=True; or
    `.safetensors`). Without `config` it is read off the tensor shapes (`laion_config`)."""
    state = unwrap_laion(read_state_dict(path))
    if config is None:
        config = laion_config(state, **overrides)
    return config, import_laion_clap(state, config, source=str(path))
