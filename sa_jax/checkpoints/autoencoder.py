"""Importing autoencoder weights from stable-audio-tools and diffusers files.

Each format is a table of rows (sa_jax.checkpoints.table), built from the config: for every layer of
our model the module prefix it has in the foreign file and the kind of layer, whose tensors are
renamed and transposed by the kind's rows. Everything that does not line up (keys the model has no
place for, weights the file lacks, wrong shapes) is collected and raised as one CheckpointError.
"""

from __future__ import annotations

import math
from typing import Iterator

import jax
import numpy as np

from sa_jax.checkpoints import table
from sa_jax.checkpoints.table import Kind, Row, conv1d, conv1d_t, flat, layer, strip
from sa_jax.errors import CheckpointError
from sa_jax.models.autoencoder import (
    AudioAutoencoder,
    AutoencoderConfig,
    OobleckDecoderConfig,
    OobleckEncoderConfig,
    config_from_dict,
)
from sa_jax.tree import flat_shapes

# (foreign module prefix, our module path, layer kind)
Layer = tuple[str, str, str]

# How each layer kind's tensors are named in PyTorch and turned into ours.
# Conv weights are (out, in, k) in torch, (k, in, out) here; transposed convs are (in, out, k).
_WN = [("weight_v", "{dst}/weight_v", conv1d), ("weight_g", "{dst}/weight_g", flat)]
_BIAS = [("bias", "{dst}/bias", None)]
_KINDS: dict[str, Kind] = {
    "wnconv": _WN + _BIAS,
    "wnconv_nobias": _WN,
    "wnconvT": [("weight_v", "{dst}/weight_v", conv1d_t), ("weight_g", "{dst}/weight_g", flat)] + _BIAS,
    "conv": [("weight", "{dst}/kernel", conv1d)] + _BIAS,
    "snake": [("alpha", "{dst}/alpha", flat)],
    "snake_beta": [("alpha", "{dst}/alpha", flat), ("beta", "{dst}/beta", flat)],
    "elu": [],
}

# torch's newer weight-norm parametrisation stores the same tensors under other names.
_PARAMETRIZED = {"parametrizations.weight.original0": "weight_g",
                 "parametrizations.weight.original1": "weight_v"}


def _act_kind(spec) -> str:
    if spec.type == "dac":
        return "snake"
    return "snake_beta" if spec.config.use_snake else "elu"


def _residual(src: str, dst: str, act: str, names: tuple[str, str, str, str]) -> Iterator[Layer]:
    a1, c1, a2, c2 = names
    yield f"{src}.{a1}", f"{dst}/act1", act
    yield f"{src}.{c1}", f"{dst}/conv1", "wnconv"
    yield f"{src}.{a2}", f"{dst}/act2", act
    yield f"{src}.{c2}", f"{dst}/conv2", "wnconv"


def sat_layers(config: AutoencoderConfig) -> Iterator[Layer]:
    """Layer table of a stable-audio-tools AudioAutoencoder (keys without the outer prefix)."""
    enc, dec = config.encoder, config.decoder
    act_e, act_d = _act_kind(enc), _act_kind(dec)
    seq = ("0", "1", "2", "3")
    if enc.type == "oobleck":
        n = len(enc.config.strides)
        root = "encoder.layers"
        yield f"{root}.0", "encoder/conv_in", "wnconv"
        for i in range(n):
            for j in range(3):
                yield from _residual(f"{root}.{i + 1}.layers.{j}.layers", f"encoder/block{i}/res{j}", act_e, seq)
            yield f"{root}.{i + 1}.layers.3", f"encoder/block{i}/act", act_e
            yield f"{root}.{i + 1}.layers.4", f"encoder/block{i}/down", "wnconv"
        yield f"{root}.{n + 1}", "encoder/act_out", act_e
        yield f"{root}.{n + 2}", "encoder/conv_out", "wnconv"
    else:
        n = len(enc.config.strides)
        root = "encoder.encoder.block"
        yield f"{root}.0", "encoder/conv_in", "wnconv"
        for i in range(n):
            for j in range(3):
                yield from _residual(f"{root}.{i + 1}.block.{j}.block", f"encoder/block{i}/res{j}", act_e, seq)
            yield f"{root}.{i + 1}.block.3", f"encoder/block{i}/act", act_e
            yield f"{root}.{i + 1}.block.4", f"encoder/block{i}/down", "wnconv"
        yield f"{root}.{n + 1}", "encoder/act_out", act_e
        yield f"{root}.{n + 2}", "encoder/conv_out", "wnconv"
        if enc.config.latent_dim is not None:
            yield "encoder.proj_out", "encoder/proj_out", "conv"
    if dec.type == "oobleck":
        n = len(dec.config.strides)
        root = "decoder.layers"
        inner = "layers"
        last_conv = "wnconv_nobias"
    else:
        n = len(dec.config.rates)
        root = "decoder.decoder.model"
        inner = "block"
        last_conv = "wnconv"
    yield f"{root}.0", "decoder/conv_in", "wnconv"
    for i in range(n):
        yield f"{root}.{i + 1}.{inner}.0", f"decoder/block{i}/act", act_d
        yield f"{root}.{i + 1}.{inner}.1", f"decoder/block{i}/up", "wnconvT"
        for j in range(3):
            yield from _residual(f"{root}.{i + 1}.{inner}.{j + 2}.{inner}", f"decoder/block{i}/res{j}", act_d, seq)
    yield f"{root}.{n + 1}", "decoder/act_out", act_d
    yield f"{root}.{n + 2}", "decoder/conv_out", last_conv


def diffusers_layers(config: AutoencoderConfig) -> Iterator[Layer]:
    """Layer table of a diffusers AutoencoderOobleck."""
    names = ("snake1", "conv1", "snake2", "conv2")
    n = len(config.encoder.config.strides)
    yield "encoder.conv1", "encoder/conv_in", "wnconv"
    for i in range(n):
        for j in range(3):
            yield from _residual(f"encoder.block.{i}.res_unit{j + 1}", f"encoder/block{i}/res{j}", "snake_beta", names)
        yield f"encoder.block.{i}.snake1", f"encoder/block{i}/act", "snake_beta"
        yield f"encoder.block.{i}.conv1", f"encoder/block{i}/down", "wnconv"
    yield "encoder.snake1", "encoder/act_out", "snake_beta"
    yield "encoder.conv2", "encoder/conv_out", "wnconv"
    yield "decoder.conv1", "decoder/conv_in", "wnconv"
    for i in range(n):
        yield f"decoder.block.{i}.snake1", f"decoder/block{i}/act", "snake_beta"
        yield f"decoder.block.{i}.conv_t1", f"decoder/block{i}/up", "wnconvT"
        for j in range(3):
            yield from _residual(f"decoder.block.{i}.res_unit{j + 1}", f"decoder/block{i}/res{j}", "snake_beta", names)
    yield "decoder.snake1", "decoder/act_out", "snake_beta"
    yield "decoder.conv2", "decoder/conv_out", "wnconv_nobias"


def diffusers_config(cfg: dict) -> AutoencoderConfig:
    """Our config from a diffusers AutoencoderOobleck `config.json`."""
    if cfg.get("_class_name", "AutoencoderOobleck") != "AutoencoderOobleck":
        raise CheckpointError(f"diffusers model class {cfg.get('_class_name')!r} is not an AutoencoderOobleck")
    hidden = cfg.get("encoder_hidden_size", 128)
    ratios = list(cfg.get("downsampling_ratios", [2, 4, 4, 8, 8]))
    mults = list(cfg.get("channel_multiples", [1, 2, 4, 8, 16]))
    latent = cfg.get("decoder_input_channels", 64)
    channels = cfg.get("audio_channels", 2)
    common = {"c_mults": mults, "strides": ratios, "use_snake": True}
    return config_from_dict({
        "encoder": {"type": "oobleck", "config": {"in_channels": channels, "channels": hidden,
                                                  "latent_dim": hidden, **common}},
        "decoder": {"type": "oobleck", "config": {"out_channels": channels,
                                                  "channels": cfg.get("decoder_channels", 128),
                                                  "latent_dim": latent, "final_tanh": False, **common}},
        "latent_dim": latent, "downsampling_ratio": math.prod(ratios), "io_channels": channels,
        "sample_rate": cfg.get("sampling_rate", 44100),
    })


def expected_shapes(config: AutoencoderConfig) -> dict[str, tuple[int, ...]]:
    """Flat `path -> shape` of the parameters our model has for `config` (no compute)."""
    model = AudioAutoencoder(config)
    x = jax.ShapeDtypeStruct((1, config.downsampling_ratio, config.io_channels), np.float32)
    return flat_shapes(jax.eval_shape(lambda a: model.init(jax.random.key(0), a, jax.random.key(0)), x)["params"])


def rows(layers: Iterator[Layer]) -> list[Row]:
    """The import table: every tensor of every layer, by its kind."""
    return [row for src, dst, kind in layers for row in layer(src, dst, _KINDS[kind])]


def convert(state: dict[str, np.ndarray], layers: Iterator[Layer], config: AutoencoderConfig,
            source: str, prefix: str = "") -> dict:
    """Map a foreign state dict through a layer table into our nested params."""
    state = strip(state, prefix)
    for key in list(state):
        for long, short in _PARAMETRIZED.items():
            if key.endswith("." + long):
                state[key[: -len(long)] + short] = state.pop(key)
    return table.convert({prefix + k: v for k, v in state.items()}, rows(layers), expected_shapes(config),
                         f"the autoencoder config ({_describe(config)})", source, prefix)


def _describe(config: AutoencoderConfig) -> str:
    return (f"{config.encoder.type} encoder, {config.decoder.type} decoder, "
            f"latent {config.latent_dim}, {config.downsampling_ratio}x")


# Prefixes under which a stable-audio-tools file may hold its autoencoder: a whole diffusion
# model's pretransform, a training checkpoint's wrapped autoencoder, or a bare autoencoder.
SAT_PREFIXES = ("pretransform.model.", "autoencoder.", "")


def sat_prefix(state: dict) -> str:
    for prefix in SAT_PREFIXES:
        if any(k.startswith(prefix + "encoder.") for k in state):
            return prefix
    raise CheckpointError(
        "no autoencoder weights found: expected keys starting with one of "
        f"{[p + 'encoder.' for p in SAT_PREFIXES]}; the file's keys start with "
        f"{sorted({k.split('.')[0] + '.' for k in state})[:10]}")


def from_sat(state: dict[str, np.ndarray], config: AutoencoderConfig, source: str) -> dict:
    prefix = sat_prefix(state)
    if prefix:  # the autoencoder is one part of a larger file: ignore the other parts
        state = {k: v for k, v in state.items() if k.startswith(prefix)}
    return convert(state, sat_layers(config), config, source, prefix)


def from_diffusers(state: dict[str, np.ndarray], config: AutoencoderConfig, source: str) -> dict:
    if not (isinstance(config.encoder.config, OobleckEncoderConfig)
            and isinstance(config.decoder.config, OobleckDecoderConfig)):
        raise CheckpointError("diffusers only has the Oobleck autoencoder")
    return convert(state, diffusers_layers(config), config, source)
