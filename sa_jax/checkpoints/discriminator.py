"""Importing multi-scale STFT discriminator weights from a stable-audio-tools state dict
(`EncodecDiscriminator`, or its inner `MultiScaleSTFTDiscriminator`, or a whole training wrapper
with the discriminator under `discriminator.`).

A table of rows (sa_jax.checkpoints.table) maps each conv's tensors to ours; weight-normed 2-D convs
are (out, in, kh, kw) `weight_v` + (out, 1, 1, 1) `weight_g` in torch, (kh, kw, in, out) + (out,) here.
Every unmatched key, missing weight and shape mismatch is reported in one CheckpointError.
"""

from __future__ import annotations

import jax
import numpy as np

from sa_jax.checkpoints.table import Row, conv2d, convert, expand, flat
from sa_jax.errors import CheckpointError
from sa_jax.models.discriminator import DiscriminatorConfig, init_params
from sa_jax.nn.spectral import hann_window
from sa_jax.tree import flat_shapes

_PARAMETRIZED = {"parametrizations.weight.original0": "weight_g",
                 "parametrizations.weight.original1": "weight_v"}
# Where the MultiScaleSTFTDiscriminator may sit in a file.
PREFIXES = ("discriminator.discriminators.", "discriminators.", "")
# Every conv of scale {i}: `convs.{j}` and `conv_post`, weight-normed.
_CONV: list[Row] = [("{src}.weight_v", "{dst}/weight_v", conv2d), ("{src}.weight_g", "{dst}/weight_g", flat),
                    ("{src}.bias", "{dst}/bias", None)]


def rows(config: DiscriminatorConfig) -> list[Row]:
    convs = [(k.format(src="discriminators.{i}.convs.{j}.conv"), p.format(dst="disc_{i}/conv_{j}"), fn)
             for k, p, fn in _CONV]
    post = [(k.format(src="discriminators.{i}.conv_post.conv"), p.format(dst="disc_{i}/conv_post"), fn)
            for k, p, fn in _CONV]
    return expand(convs + post, i=range(len(config.n_ffts)), j=range(len(config.dilations) + 2))


def _prefix(state: dict) -> str:
    for p in PREFIXES:
        if any(k.startswith(p + "discriminators.0.") for k in state):
            return p
    raise CheckpointError("no multi-scale STFT discriminator weights found: expected keys starting with one of "
                          f"{[p + 'discriminators.0.' for p in PREFIXES]}")


def _is_hann(win: int):
    def check(w):
        if w.shape != (win,) or not np.allclose(w, hann_window(win), atol=1e-6):
            return f"not the periodic Hann window of win_length {win}"
        return None
    return check


def from_torch(state: dict, config: DiscriminatorConfig, source: str = "state dict") -> dict:
    """Our discriminator params from a torch state dict (tensors or arrays)."""
    prefix = _prefix(state)
    flat_in = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        for long, short in _PARAMETRIZED.items():
            if key.endswith("." + long):
                key = key[: -len(long)] + short
        flat_in[prefix + key] = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value,
                                           np.float32)
    want = flat_shapes(jax.eval_shape(lambda k: init_params(config, k), jax.random.key(0)))
    # torchaudio's Spectrogram keeps its window as a buffer: not a parameter here, but it must be
    # the Hann window of the configured length.
    checks = [(f"discriminators.{i}.spec_transform.window", _is_hann(win)) for i, win in enumerate(config.win_lengths)]
    return convert(flat_in, rows(config), want, f"the discriminator config ({len(config.n_ffts)} scales, "
                   f"{config.filters} filters)", source, prefix, checks)
