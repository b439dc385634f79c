"""Importing multi-scale STFT discriminator weights from a stable-audio-tools state dict
(`EncodecDiscriminator`, or its inner `MultiScaleSTFTDiscriminator`, or a whole training wrapper
with the discriminator under `discriminator.`).

A table maps each of our conv layers to its torch module prefix; weight-normed 2-D convs are
(out, in, kh, kw) `weight_v` + (out, 1, 1, 1) `weight_g` in torch, (kh, kw, in, out) + (out,) here.
Every unmatched key, missing weight and shape mismatch is reported in one CheckpointError.
"""

from __future__ import annotations

from typing import Iterator

import jax
import numpy as np

from sa_jax.checkpoints.io import CheckpointError, mismatch_report
from sa_jax.models.discriminator import DiscriminatorConfig, init_params
from sa_jax.nn.spectral import hann_window
from sa_jax.tree import flat_shapes, unflatten

_TENSORS = {"weight_v": lambda w: w.transpose(2, 3, 1, 0), "weight_g": lambda g: g.reshape(-1), "bias": None}
_PARAMETRIZED = {"parametrizations.weight.original0": "weight_g",
                 "parametrizations.weight.original1": "weight_v"}
# Where the MultiScaleSTFTDiscriminator may sit in a file.
PREFIXES = ("discriminator.discriminators.", "discriminators.", "")


def layers(config: DiscriminatorConfig) -> Iterator[tuple[str, str]]:
    """(torch module prefix, our module path) for every conv."""
    for i in range(len(config.n_ffts)):
        for j in range(len(config.dilations) + 2):
            yield f"discriminators.{i}.convs.{j}.conv", f"disc_{i}/conv_{j}"
        yield f"discriminators.{i}.conv_post.conv", f"disc_{i}/conv_post"


def _prefix(state: dict) -> str:
    for p in PREFIXES:
        if any(k.startswith(p + "discriminators.0.") for k in state):
            return p
    raise CheckpointError("no multi-scale STFT discriminator weights found: expected keys starting with one of "
                          f"{[p + 'discriminators.0.' for p in PREFIXES]}")


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
        flat_in[key] = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, np.float32)
    want = flat_shapes(jax.eval_shape(lambda k: init_params(config, k), jax.random.key(0)))
    out, used, missing, bad = {}, set(), [], []
    for src, dst in layers(config):
        for name, transform in _TENSORS.items():
            key, path = f"{src}.{name}", f"{dst}/{name}"
            if key not in flat_in:
                missing.append(f"{prefix}{key} (for {path})")
                continue
            used.add(key)
            value = transform(flat_in[key]) if transform else flat_in[key]
            if want.get(path) != tuple(value.shape):
                bad.append(f"{prefix}{key}: file {flat_in[key].shape} -> {value.shape}, model {path} needs "
                           f"{want.get(path)}")
            else:
                out[path] = value
    # torchaudio's Spectrogram keeps its window as a buffer: not a parameter here, but it must be
    # the Hann window of the configured length.
    for i, win in enumerate(config.win_lengths):
        key = f"discriminators.{i}.spec_transform.window"
        if key in flat_in:
            used.add(key)
            if flat_in[key].shape != (win,) or not np.allclose(flat_in[key], hann_window(win), atol=1e-6):
                bad.append(f"{prefix}{key}: not the periodic Hann window of win_length {win}")
    unmatched = [prefix + k for k in flat_in if k not in used]
    missing += [f"{p} (no entry in the import table)" for p in set(want) - {f"{d}/{n}" for _, d in layers(config)
                                                                          for n in _TENSORS}]
    if unmatched or missing or bad:
        raise CheckpointError(mismatch_report(f"the discriminator config ({len(config.n_ffts)} scales, "
                                              f"{config.filters} filters)", source, unmatched, missing, bad))
    return unflatten(out)
