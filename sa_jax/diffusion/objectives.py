"""Training objectives: how clean data x0 and noise are mixed at time t, what the model must predict,
and how training times t are drawn.

v-objective (Salimans & Ho 2022) on the cosine schedule used by Stable Audio:
    alpha = cos(pi t / 2), sigma = sin(pi t / 2), x_t = alpha x0 + sigma eps, target v = alpha eps - sigma x0
rectified flow (Liu et al. 2022):
    x_t = (1 - t) x0 + t eps, target (velocity) = eps - x0

Timestep samplers return a (batch,) array in [0, 1]:
    uniform          i.i.d. U(0, 1)
    low-discrepancy  one uniform offset shared by the batch, spread in even strata (Kingma et al. 2021):
                     lower-variance loss estimates than i.i.d.; each t is still marginally U(0, 1)
    logit-normal     sigmoid(mean + std * N(0, 1)) (Esser et al. 2024), mass in the middle of [0, 1]
Any of them may then be shifted toward the noisy end: t -> shift t / (1 + (shift - 1) t) (the timestep
shift of Esser et al. 2024, there for higher resolutions). shift > 1 trains more on high noise, where the
input says little and only the conditioning can set what the whole clip is like (its level, say);
shift = 1 changes nothing.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

OBJECTIVES = ("v", "rectified_flow")
TIMESTEP_SAMPLERS = ("uniform", "low-discrepancy", "logit-normal")


def _per_example(t, x):
    """Broadcast a (batch,) time against x of shape (batch, ...)."""
    t = jnp.asarray(t, x.dtype)
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def v_alpha_sigma(t):
    """The cosine schedule's signal and noise scales at time t."""
    return jnp.cos(t * math.pi / 2), jnp.sin(t * math.pi / 2)


def t_to_sigma(t):
    """v-objective time to the equivalent k-diffusion noise level sigma / alpha."""
    return jnp.tan(t * math.pi / 2)


def sigma_to_t(sigma):
    return jnp.arctan(sigma) * 2 / math.pi


def noised_and_target(objective: str, x0, noise, t):
    """(x_t, regression target) for a training step; t has shape (batch,)."""
    if objective == "v":
        alpha, sigma = v_alpha_sigma(_per_example(t, x0))
        return alpha * x0 + sigma * noise, alpha * noise - sigma * x0
    if objective == "rectified_flow":
        t = _per_example(t, x0)
        return (1 - t) * x0 + t * noise, noise - x0
    raise ValueError(f"unknown diffusion objective {objective!r}; valid objectives: {', '.join(OBJECTIVES)}")


def diffusion_loss(objective: str, model_output, x0, noise, t):
    """Plain MSE between the model output and the objective's target, averaged over everything."""
    _, target = noised_and_target(objective, x0, noise, t)
    return jnp.mean(jnp.square(model_output - target))


def sample_timesteps(key, batch: int, kind: str = "low-discrepancy", *, mean: float = 0.0, std: float = 1.0,
                     shift: float = 1.0, dtype=jnp.float32):
    """Training times t in [0, 1] for a batch (see the module docstring for the kinds and the shift)."""
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"the timestep shift must be a finite number > 0 (1: no shift), got {shift}")
    t = _unshifted_timesteps(key, batch, kind, mean, std, dtype)
    return t if shift == 1 else shift * t / (1 + (shift - 1) * t)


def _unshifted_timesteps(key, batch, kind, mean, std, dtype):
    if kind not in TIMESTEP_SAMPLERS:
        raise ValueError(f"unknown timestep sampler {kind!r}; valid samplers: {', '.join(TIMESTEP_SAMPLERS)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    if kind == "uniform":
        return jax.random.uniform(key, (batch,), dtype)
    if kind == "low-discrepancy":
        offset = jax.random.uniform(key, (), dtype)
        return jnp.mod(offset + jnp.arange(batch, dtype=dtype) / batch, 1.0)
    if not (math.isfinite(std) and std > 0 and math.isfinite(mean)):
        raise ValueError(f"logit-normal needs a finite mean and std > 0, got mean={mean}, std={std}")
    return jax.nn.sigmoid(mean + std * jax.random.normal(key, (batch,), dtype))
