"""The trainable model of a run: conditioner + denoiser of one family, as pure functions.

    params = init_params(cfg.model, key, frames)        # {"conditioner": ..., "denoiser": ...}
    v = predict(cfg.model, params, x_t, t, text, text_mask, seconds_start, seconds_total, cfg_drop(key, p, batch))

`sao` (Stable Audio Open): SAOConditioner -> (cross-attention tokens, global vector) -> DiT; CFG
dropout zeroes a batch item's whole cross-attention tensor (as stable-audio-tools' DiT), the global vector is
kept. `sa1` (the paper): SA1Conditioner -> 79 context tokens -> UNet1d; CFG dropout replaces a
batch item's context by the U-Net's learned null embedding (mask unchanged), as UNetCFG1d does.
Latents are (batch, channels, frames) as in the data pipeline and the reference.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.models import conditioners as sao_cond
from sa_jax.models.dit import DiT
from sa_jax.models.sa1_conditioning import SA1Conditioner
from sa_jax.models.unet import UNet1d, null_embedding
from sa_jax.nn import DTYPES


def text_shape(model) -> tuple[int, int]:
    """(tokens, width) of the text features the conditioner takes."""
    if model.family == "sao":
        return model.conditioning.max_length, model.conditioning.text_dim
    return model.text_tokens, model.text_dim


def _modules(model):
    dt = DTYPES[model.compute_dtype]
    if model.family == "sao":
        return sao_cond.SAOConditioner(model.conditioning), DiT(model.dit, dt, model.remat)
    return (SA1Conditioner(model.text_dim, model.timing, model.timing), UNet1d(model.unet, dt, model.remat))


def init_params(model, key: jax.Array, frames: int | None = None) -> dict:
    """Fresh float32 parameters {"conditioner", "denoiser"} (not jitted; wrap in jax.jit / eval_shape).
    `frames`: the dummy input's length (the parameters do not depend on it); None: one U-Net
    downsampling multiple (a U-Net takes only multiples of it), 16 for the DiT."""
    cond, den = _modules(model)
    if frames is None:
        frames = 16 if model.family == "sao" else model.unet.downsampling
    k1, k2 = jax.random.split(key)
    n, d = text_shape(model)
    text, mask = jnp.zeros((1, n, d)), jnp.ones((1, n), bool)
    z = jnp.zeros((1,))
    pc = cond.init(k1, text, mask, z, z)["params"]
    x = jnp.zeros((1, model.latent_dim, frames))
    if model.family == "sao":
        cross, glob = cond.apply({"params": pc}, text, mask, z, z)
        pd = den.init(k2, x, z, cross, glob)["params"]
    else:
        ctx, cmask = cond.apply({"params": pc}, text, mask, z, z)
        pd = den.init(k2, jnp.swapaxes(x, 1, 2), z, ctx, cmask)["params"]
    return {"conditioner": pc, "denoiser": pd}


def cfg_drop(key: jax.Array, prob: float, batch: int):
    """Which batch items lose their conditioning (CFG dropout): (batch,) bool, each True with probability
    `prob`, or None when prob is 0."""
    return jax.random.bernoulli(key, prob, (batch,)) if prob > 0 else None


def predict(model, params, x_t, t, text, text_mask, seconds_start, seconds_total, drop=None):
    """The network output (v or velocity) for noisy latents x_t (batch, channels, frames); `drop`
    ((batch,) bool, `cfg_drop`) marks the items trained unconditionally."""
    cond, den = _modules(model)
    if model.family == "sao":
        cross, glob = cond.apply({"params": params["conditioner"]}, text, text_mask, seconds_start, seconds_total)
        if drop is not None:   # the item's whole cross-attention tensor is zeroed
            cross = jnp.where(drop[:, None, None], jnp.zeros_like(cross), cross)
        return den.apply({"params": params["denoiser"]}, x_t, t, cross, glob)
    ctx, cmask = cond.apply({"params": params["conditioner"]}, text, text_mask, seconds_start, seconds_total)
    if drop is not None:
        ctx = jnp.where(drop[:, None, None], null_embedding(params["denoiser"], ctx.shape[0], ctx.shape[1]), ctx)
    out = den.apply({"params": params["denoiser"]}, jnp.swapaxes(x_t, 1, 2), t, ctx, cmask)
    return jnp.swapaxes(out, 1, 2)


def hash_text_features(prompts, tokens: int, width: int, real_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in for a frozen text encoder: each distinct prompt string maps to fixed N(0, 1)
    features (seeded by its SHA-256) in its first `real_tokens` positions, zeros and mask False
    after. Deterministic across processes and runs. Returns (batch, tokens, width) float32 and
    (batch, tokens) bool."""
    b = len(prompts)
    k = max(1, min(real_tokens, tokens))
    feats = np.zeros((b, tokens, width), np.float32)
    mask = np.zeros((b, tokens), bool)
    for i, p in enumerate(prompts):
        seed = int.from_bytes(hashlib.sha256(str(p).encode()).digest()[:8], "little")
        feats[i, :k] = np.random.default_rng(seed).standard_normal((k, width), np.float32)
        mask[i, :k] = True
    return feats, mask


def zero_text_features(batch: int, tokens: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((batch, tokens, width), np.float32), np.zeros((batch, tokens), bool)
