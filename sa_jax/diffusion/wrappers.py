"""Adapters from a network's own parameterisation to k-diffusion's denoiser `D(x, sigma) -> x0`.

Samplers see only a denoiser. Everything here is a pytree (parameters and conditioning are leaves, the
functions are static), so `sample` can take it as an ordinary jit argument: new weights or a new prompt
reuse the compiled loop instead of baking arrays into it as constants.

    v_denoiser(model)   model(x_t, t) -> v on the cosine schedule; x is in sigma space, x = x_t / alpha
    rf_denoiser(model)  model(x_t, t) -> velocity eps - x0 for rectified flow; sigma is t itself
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.tree_util import Partial


def as_pytree_fn(fn: Callable) -> Any:
    """Return `fn` as a pytree: unchanged if it already is one (Partial, a wrapper here, a registered
    module), else `Partial(fn)`, which keeps `fn` in the tree structure (static, hashed by identity)."""
    if not callable(fn):
        raise TypeError(f"expected a callable model or denoiser, got {type(fn).__name__}")
    leaves = jax.tree_util.tree_leaves(fn)
    if len(leaves) == 1 and leaves[0] is fn:  # not a registered pytree: jit cannot take it as data
        return Partial(fn)
    return fn


def _per_example(s, x):
    """Reshape a (batch,) noise level so it broadcasts against x of shape (batch, ...)."""
    return jnp.reshape(s, jnp.shape(s) + (1,) * (x.ndim - jnp.ndim(s)))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: leaves may be dicts
class VDenoiser:
    """A v-objective model as a denoiser in sigma space (k-diffusion's VDenoiser, sigma_data = 1).

    With alpha = cos(pi t / 2), sigma_t = sin(pi t / 2), the k-diffusion noise level is
    sigma = sigma_t / alpha and x = x_t / alpha, so the network input is x * c_in with
    c_in = 1 / sqrt(sigma^2 + 1) (= alpha) and the time is t = atan(sigma) 2 / pi. Then
    x0 = c_skip x + c_out v with c_skip = 1 / (sigma^2 + 1), c_out = -sigma / sqrt(sigma^2 + 1).
    """

    model: Any

    def __call__(self, x, sigma):
        s = _per_example(sigma, x)
        c_skip = 1 / (s**2 + 1)
        c_out = -s / jnp.sqrt(s**2 + 1)
        c_in = 1 / jnp.sqrt(s**2 + 1)
        t = jnp.arctan(sigma) / math.pi * 2
        return self.model(x * c_in, t) * c_out + x * c_skip


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: leaves may be dicts
class RFDenoiser:
    """A rectified-flow velocity model as a denoiser: x_t = (1 - t) x0 + t eps, v = eps - x0, so
    x0 = x_t - t v. Keeps `velocity` for solvers that need it where x0 cannot give it (t = 0)."""

    model: Any
    rectified_flow = True  # class constant, read by `sample` to noise known regions the RF way

    def velocity(self, x, t):
        return self.model(x, t)

    def __call__(self, x, t):
        return x - _per_example(t, x) * self.model(x, t)


def v_denoiser(model: Callable) -> VDenoiser:
    """Wrap `model(x_t, t) -> v` (t of shape (batch,)) as a k-diffusion denoiser."""
    return VDenoiser(as_pytree_fn(model))


def rf_denoiser(model: Callable) -> RFDenoiser:
    """Wrap a rectified-flow `model(x_t, t) -> eps - x0` as a denoiser over t in [0, 1]."""
    return RFDenoiser(as_pytree_fn(model))
