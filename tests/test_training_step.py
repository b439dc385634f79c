"""The diffusion loss of both families, CFG dropout as the references do it: the U-Net swaps in its
learned null embedding (which then gets gradients), the DiT zeroes the cross-attention tokens (the
text then gets none). Gradients of the loss only; no optimiser, no loop."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_jax.config import load
from sa_jax.training import TrainConfig
from sa_jax.training import model as tm
from sa_jax.training.diffusion import loss_and_aux

ROOT = Path(__file__).resolve().parents[1]


def batch(cfg, b=2, frames=32):
    n, d = tm.text_shape(cfg.model)
    text, mask = tm.hash_text_features(["a", "b"][:b], n, d, 4)
    rng = np.random.default_rng(0)
    return {"latents": jnp.asarray(rng.standard_normal((b, cfg.model.latent_dim, frames)), jnp.float32),
            "text": jnp.asarray(text), "text_mask": jnp.asarray(mask),
            "seconds_start": jnp.zeros((b,), jnp.int32), "seconds_total": jnp.full((b,), 7, jnp.int32)}


def grads(cfg, p_drop):
    cfg.diffusion.cfg_dropout = p_drop
    params = jax.jit(lambda k: tm.init_params(cfg.model, k))(jax.random.key(0))
    b = batch(cfg)
    loss, g = jax.jit(jax.value_and_grad(lambda p: loss_and_aux(cfg, p, b, jax.random.key(1))))(params)
    assert np.isfinite(float(loss))
    return g


def norm(tree):
    return float(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


@pytest.mark.slow   # two U-Net compiles, ~60 s on a shared 2-core CPU
def test_unet_cfg_dropout_uses_the_null_embedding():
    cfg = load(TrainConfig, ROOT / "configs/train_unet_tiny.yaml")
    kept, dropped = grads(cfg, 0.0), grads(cfg, 1.0)
    assert norm(kept["denoiser"]["null_embedding"]) == 0.0
    assert norm(dropped["denoiser"]["null_embedding"]) > 0.0
    # Dropped context: the timing tables (part of the context) get no gradient.
    assert norm(kept["conditioner"]) > 0.0 and norm(dropped["conditioner"]) == 0.0


@pytest.mark.slow   # moved out of the default run for its time (~30s on 2 AVX2 cores); run with -m slow
def test_dit_cfg_dropout_zeroes_cross_attention():
    """Also the rectified-flow objective (the loop tests train with v)."""
    cfg = load(TrainConfig, ROOT / "configs/train_dit_tiny.yaml", ["diffusion.objective=rectified_flow"])
    kept, dropped = grads(cfg, 0.0), grads(cfg, 1.0)
    # Zero tokens through bias-free projections give zero cross-attention values: the (zero-initialised)
    # output projection of every cross-attention gets a gradient only when the context is kept.
    for i in range(cfg.model.dit.depth):
        assert norm(kept["denoiser"][f"layers_{i}"]["cross_attn"]["out"]) > 0.0
        assert norm(dropped["denoiser"][f"layers_{i}"]["cross_attn"]["out"]) == 0.0
    # (The global token, never dropped, reaches the output only through zero-initialised projections,
    # so at initialisation no gradient shows whether it is kept; test_cfg_drop_marks_items_at_the_rate covers it.)


def test_cfg_drop_marks_items_at_the_rate():
    """CFG dropout picks whole batch items (one flag each) at the configured rate; 0 drops nothing."""
    drop = np.asarray(tm.cfg_drop(jax.random.key(0), 0.1, 4000))
    assert drop.shape == (4000,) and drop.dtype == bool
    assert abs(drop.mean() - 0.1) < 0.02, drop.mean()
    assert tm.cfg_drop(jax.random.key(0), 0.0, 4000) is None


@pytest.mark.slow   # two U-Net compiles
def test_unet_remat_gives_the_same_gradients():
    """model.remat reaches the U-Net through the training model: same loss gradients (recomputed
    activations), to float32 rounding."""
    cfg = load(TrainConfig, ROOT / "configs/train_unet_tiny.yaml")
    plain = grads(cfg, 0.0)
    cfg.model.remat = True
    remat = grads(cfg, 0.0)
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(remat)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
