"""UNet1d(remat=True) recomputes block activations in the backward pass: the parameter tree, the
output and the gradients must be those of remat=False (float32, a small config with a mask)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_jax.models.unet import UNet1d, config_from_dict

# One level with a transformer, and one in the bottleneck: every kind of remat'd block, little to compile.
SMALL = dict(in_channels=4, channels=16, multipliers=[1, 2], factors=[2], num_blocks=[1], attentions=[1, 1],
             context_embedding_features=8, context_embedding_max_length=6, attention_heads=2,
             attention_multiplier=2, resnet_groups=4, use_context_time=True)
TOL = 1e-5  # float32: recomputation lets XLA fuse and sum in another order (seen: ~1.5e-6)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _inputs(config, batch=2, frames=8):
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (batch, frames, config.in_channels))
    t = jax.random.uniform(k[1], (batch,))
    emb = jax.random.normal(k[2], (batch, config.context_embedding_max_length, config.context_embedding_features))
    mask = jnp.ones(emb.shape[:2], bool).at[0, 3:].set(False)
    cot = jax.random.normal(k[3], (batch, frames, config.out_channels or config.in_channels))
    return x, t, emb, mask, cot


def _random_params(shapes, seed=1):
    """Random values for a parameter tree of ShapeDtypeStructs (no init compile): fan-in scaled
    weights, 1-D parameters around 0 (biases) or 1 (norm scales)."""
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        if len(s.shape) > 1:
            std = 1.0 / np.sqrt(np.prod(s.shape[:-1]))
            return jnp.asarray(rng.normal(0, std, s.shape), s.dtype)
        return jnp.asarray(("scale" in name) + rng.normal(0, 0.2, s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.slow   # moved out of the default run for its time (~45s on 2 AVX2 cores); run with -m slow
def test_unet_remat_same_params_output_and_grads():
    config = config_from_dict(SMALL)
    x, t, emb, mask, cot = _inputs(config)
    plain, remat = UNet1d(config), UNet1d(config, jnp.float32, True)
    shapes = jax.eval_shape(plain.init, jax.random.key(1), x, t, emb, mask)["params"]
    shapes_remat = jax.eval_shape(remat.init, jax.random.key(1), x, t, emb, mask)["params"]
    assert jax.tree.structure(shapes) == jax.tree.structure(shapes_remat)
    assert jax.tree.leaves(shapes) == jax.tree.leaves(shapes_remat)  # same shapes and dtypes, leaf by leaf
    params = _random_params(shapes)

    def run(model):
        def loss(p, x):
            y = model.apply({"params": p}, x, t, emb, mask)
            return jnp.sum(y * cot), y

        traced = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)).trace(params, x)
        (_, y), grads = traced.lower().compile()(params, x)
        return str(traced.jaxpr), y, grads

    jaxpr0, y0, (g0, gx0) = run(plain)
    jaxpr1, y1, (g1, gx1) = run(remat)
    # remat really changes the program: the remat'd blocks appear as checkpoint (remat) calls
    assert "checkpoint" not in jaxpr0 and "remat" not in jaxpr0
    assert "checkpoint" in jaxpr1 or "remat" in jaxpr1
    out_err = rel_err(y1, y0)
    # relative to the largest entry of the whole gradient tree (a leaf whose gradients are all
    # tiny would otherwise compare float32 rounding noise)
    flat = lambda g: np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)])
    grad_err = rel_err(flat(g1), flat(g0))
    x_err = rel_err(gx1, gx0)
    print(f"remat vs plain: output {out_err:.1e}, param grads {grad_err:.1e}, input grad {x_err:.1e}")
    assert np.abs(np.asarray(y0)).max() > 0 and np.abs(flat(g0)).max() > 0
    assert out_err < TOL and grad_err < TOL and x_err < TOL
