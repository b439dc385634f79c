"""The CPU path of Conv1d / ConvTranspose1d (`cpu_matmul`: the convolution as one matrix product, which the
U-Net uses) against XLA's convolutions: same parameters, outputs and gradients (input and parameters) within
float32 rounding, over strides, paddings, dilations and weight norm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_jax.nn.layers import Conv1d, ConvTranspose1d

TOL = 1e-5   # relative to the largest entry; float32 sums taken in another order (seen: ~3e-7)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / np.abs(b).max())


def compare(make, frames):
    x = jnp.asarray(np.random.default_rng(frames).normal(size=(2, frames, 6)), jnp.float32)
    xla, matmul = make(False), make(True)
    params = xla.init(jax.random.key(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(matmul.init(jax.random.key(0), x))

    def run(module):
        loss = lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))   # a nonlinear loss: every cotangent differs
        y = jax.jit(module.apply)(params, x)
        return y, jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)

    (y0, (gp0, gx0)), (y1, (gp1, gx1)) = run(xla), run(matmul)
    errs = [rel_err(y1, y0), rel_err(gx1, gx0)] + [rel_err(a, b) for a, b in zip(jax.tree.leaves(gp1),
                                                                                   jax.tree.leaves(gp0))]
    assert max(errs) < TOL, errs


@pytest.mark.parametrize("kernel, stride, padding, dilation, frames", [
    (3, 1, (1, 1), 1, 16), (5, 2, (2, 3), 1, 16), (1, 1, (0, 0), 1, 8), (7, 1, (9, 9), 3, 20), (5, 2, (1, 2), 1, 7)])
@pytest.mark.parametrize("weight_norm", [False, True])
def test_conv1d_as_matmul(kernel, stride, padding, dilation, frames, weight_norm):
    compare(lambda m: Conv1d(5, kernel, stride=stride, padding=padding, dilation=dilation, weight_norm=weight_norm,
                             cpu_matmul=m), frames)


@pytest.mark.parametrize("kernel, stride, padding, frames", [(4, 2, 0, 8), (8, 4, 0, 5), (5, 2, 1, 7), (3, 2, 0, 4)])
@pytest.mark.parametrize("weight_norm", [False, True])
def test_conv_transpose1d_as_matmul(kernel, stride, padding, frames, weight_norm):
    compare(lambda m: ConvTranspose1d(5, kernel, stride=stride, padding=padding, weight_norm=weight_norm,
                                      cpu_matmul=m), frames)
