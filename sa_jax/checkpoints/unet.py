"""Importing stable-audio-tools `UNetCFG1d` weights (`adp_cfg_1d`) into sa_jax.models.unet.

The reference's module tree maps onto ours by an ordered table of key renames (regex patterns); each
PyTorch `weight` then lands on our `kernel` (transposed to our layout), `scale` (norms) or the null
embedding table, whichever the module has. The renamed keys are rows of the shared import table
(sa_jax.checkpoints.table), which reports every unmatched key, missing weight and shape mismatch.
"""

from __future__ import annotations

import re

import jax
import numpy as np

from sa_jax.checkpoints.table import Row, conv1d, conv1d_t, convert, linear, strip
from sa_jax.models.unet import UNet1d, UNetConfig
from sa_jax.tree import flat_shapes

# (pattern, replacement) applied in order to a reference key (without its outer prefix).
RENAMES = [
    (r"^to_time\.0\.0\.", "time_fourier."),
    (r"^to_time\.0\.1\.", "time_proj."),
    (r"^to_time_embedding\.0\.0\.", "xattn_time_fourier."),
    (r"^to_time_embedding\.0\.1\.", "xattn_time_proj."),
    (r"^to_features\.0\.", "features_proj."),
    (r"^to_mapping\.0\.", "mapping_0."),
    (r"^to_mapping\.2\.", "mapping_1."),
    (r"^fixed_embedding\.embedding\.weight$", "null_embedding"),
    (r"^(to_in|to_out)\.block\.", r"\1."),
    (r"^downsamples\.(\d+)\.downsample\.", r"downsamples_\1_down.conv."),
    (r"^(down|up)samples\.(\d+)\.(blocks|transformer)\.", r"\1samples_\2_\3."),
    (r"_blocks\.(\d+)\.", r"_blocks_\1."),
    (r"^upsamples\.(\d+)\.upsample\.(1\.)?", r"upsamples_\1_up.conv."),
    (r"^bottleneck\.pre_block\.", "bottleneck_pre."),
    (r"^bottleneck\.post_block\.", "bottleneck_post."),
    (r"^bottleneck\.transformer\.", "bottleneck_transformer."),
    # inside a transformer
    (r"\.to_in\.0\.", ".norm_in."),
    (r"\.to_in\.1\.", ".proj_in.conv."),
    (r"\.to_out\.1\.", ".proj_out.conv."),
    (r"\.blocks\.(\d+)\.", r".blocks_\1."),
    (r"\.attention\.to_out\.", ".to_out."),
    (r"\.feed_forward\.0\.", ".ff_in."),
    (r"\.feed_forward\.2\.", ".ff_out."),
    # inside a resnet block
    (r"\.to_scale_shift\.to_scale_shift\.1\.", ".scale_shift."),
    (r"\.(block[12])\.project\.", r".\1.project.conv."),
    (r"^(to_in|to_out|[a-z_0-9]+_blocks_\d+|bottleneck_pre|bottleneck_post)\.to_out\.", r"\1.to_out.conv."),
]


def expected_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    c = config
    model = UNet1d(c)
    x = jax.ShapeDtypeStruct((1, c.downsampling, c.in_channels), np.float32)
    t = jax.ShapeDtypeStruct((1,), np.float32)
    emb = jax.ShapeDtypeStruct((1, c.context_embedding_max_length, c.context_embedding_features), np.float32)
    feats = (jax.ShapeDtypeStruct((1, c.context_features), np.float32) if c.context_features else None)
    return flat_shapes(jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a), x, t, emb, None, feats)["params"])


def _our_path(key: str, want: dict) -> tuple[str | None, str]:
    """(our parameter path or None, how to transform) for a reference key."""
    for pattern, repl in RENAMES:
        key = re.sub(pattern, repl, key)
    module, _, leaf = key.rpartition(".")
    module = module.replace(".", "/")
    if key == "null_embedding":
        return "null_embedding", "copy"
    if leaf == "weights":
        return f"{module}/weights", "copy"
    if leaf == "bias":
        for m in (module, module.replace("_up/", "_up_transposed/")):
            if f"{m}/bias" in want:
                return f"{m}/bias", "copy"
        return None, ""
    if leaf == "weight":
        for m, how in ((module, "kernel"), (module.replace("_up/", "_up_transposed/"), "kernel_t")):
            if f"{m}/kernel" in want:
                return f"{m}/kernel", how
        if f"{module}/scale" in want:
            return f"{module}/scale", "copy"
    return None, ""


_TRANSFORMS = {"copy": None, "kernel": lambda w: linear(w) if w.ndim == 2 else conv1d(w), "kernel_t": conv1d_t}


def rows(keys, want: dict) -> list[Row]:
    """The import table for the reference keys `keys`: a row for each key the renames place."""
    out = []
    for key in keys:
        path, how = _our_path(key, want)
        if path is not None and path in want:
            out.append((key, path, _TRANSFORMS[how]))
    return out


def from_sat(state: dict[str, np.ndarray], config: UNetConfig, source: str, prefix: str = "") -> dict:
    """Our U-Net params from a reference state dict. `prefix` is the U-Net's key prefix in the file
    (`model.model.` in a whole stable-audio-tools diffusion model); other keys are ignored then."""
    want = expected_shapes(config)
    return convert(state, rows(strip(state, prefix), want), want, "the U-Net config", source, prefix)


def timing_from_sat(state: dict, features: int = 768, prefix: str = "conditioner.conditioners.",
                    source: str = "the stable-audio-tools state dict") -> dict:
    """Our SA1Conditioner params (sa_jax.models.sa1_conditioning) from a stable-audio-tools Stable
    Audio 1.0 model's `int_embedder` tables (the number of rows is the file's; other keys are left to
    the other importers)."""
    names = ("seconds_start", "seconds_total")
    rows = [(f"{n}.int_embedder.weight", f"{n}/embedding", None) for n in names]
    shapes = {n: np.shape(state.get(f"{prefix}{n}.int_embedder.weight", np.zeros((1,)))) for n in names}
    want = {f"{n}/embedding": (shapes[n][0] if shapes[n] else 1, features) for n in names}
    return convert(state, rows, want, f"the integer timing tables (expected (rows, {features}))", source, prefix,
                   ignore=(r".*",))
