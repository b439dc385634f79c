"""Noise-level (sigma) schedules for sampling.

Every schedule is a float array of `steps + 1` decreasing noise levels ending in 0: the sampler takes
one step from each sigma to the next, and the final 0 means "fully denoised". Values are computed in
float64 on the host (they are tiny and fixed for a run) and cast to `dtype` once.

k-diffusion schedules, in sigma space (x_sigma = x0 + sigma * noise):
  polyexponential  log sigma follows a polynomial ramp of power rho; rho = 1 is log-linear
  exponential      log-linear from sigma_max to sigma_min (polyexponential with rho = 1)
  karras           Karras et al. (2022), linear in sigma^(1/rho); rho = 7 by default

Schedules in the time of other processes:
  cosine           t linear in [t_max, 0] mapped to sigma = tan(pi t / 2): the v-diffusion DDIM grid
  linear           rectified flow: t linear from sigma_max (<= 1) down to 0
  logsnr           rectified flow: t = sigmoid(-logsnr), logsnr linear from that of sigma_max up to 2,
                   last value replaced by 0 (stable-audio-tools' `sample_rf` grid)
"""

from __future__ import annotations

import math
import numbers

import jax.numpy as jnp
import numpy as np

SCHEDULES = ("polyexponential", "exponential", "karras", "cosine", "linear", "logsnr")
_RECTIFIED_FLOW = ("linear", "logsnr")
_DEFAULT_RHO = {"polyexponential": 1.0, "karras": 7.0}


def _append_zero(sigmas: np.ndarray) -> np.ndarray:
    return np.concatenate([sigmas, np.zeros(1)])


def sigmas_polyexponential(steps: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> np.ndarray:
    ramp = np.linspace(1.0, 0.0, steps) ** rho
    log_min, log_max = math.log(sigma_min), math.log(sigma_max)
    return _append_zero(np.exp(ramp * (log_max - log_min) + log_min))


def sigmas_exponential(steps: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    return _append_zero(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), steps)))


def sigmas_karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, steps)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def sigmas_cosine(steps: int, sigma_max: float) -> np.ndarray:
    # Uniform steps in the v-objective's t (alpha = cos, sigma = sin) expressed as k-diffusion sigmas.
    t_max = math.atan(sigma_max) * 2 / math.pi
    sigmas = np.tan(np.linspace(t_max, 0.0, steps + 1) * math.pi / 2)
    sigmas[-1] = 0.0  # tan(0) is 0 already; make it exact
    return sigmas


def sigmas_linear(steps: int, sigma_max: float = 1.0) -> np.ndarray:
    return np.linspace(sigma_max, 0.0, steps + 1)


def sigmas_logsnr(steps: int, sigma_max: float = 1.0) -> np.ndarray:
    logsnr_max = math.log((1 - sigma_max) / sigma_max + 1e-6) if sigma_max < 1 else -6.0
    t = 1 / (1 + np.exp(np.linspace(logsnr_max, 2.0, steps + 1)))
    t[0], t[-1] = sigma_max, 0.0
    return t


def _check_number(name: str, value, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def get_sigmas(
    kind: str = "polyexponential",
    steps: int = 100,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float | None = None,
    dtype=jnp.float32,
) -> jnp.ndarray:
    """A (steps + 1,) array of decreasing noise levels ending in 0.

    kind: one of `SCHEDULES`. sigma_min/sigma_max default to 0.01/100 for the k-diffusion schedules;
    the rectified-flow schedules (`linear`, `logsnr`) take only sigma_max (default 1, at most 1);
    `cosine` takes only sigma_max. rho defaults to 1 (polyexponential) or 7 (karras).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown sigma schedule {kind!r}; valid schedules: {', '.join(SCHEDULES)}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    steps = int(steps)
    if rho is not None and kind not in _DEFAULT_RHO:
        raise ValueError(f"rho applies only to the {' and '.join(_DEFAULT_RHO)} schedules, not {kind!r}")
    if kind in _RECTIFIED_FLOW or kind == "cosine":
        if sigma_min is not None:
            raise ValueError(f"the {kind!r} schedule runs from sigma_max to 0 and takes no sigma_min")
        if kind in _RECTIFIED_FLOW:
            sigma_max = _check_number("sigma_max", 1.0 if sigma_max is None else sigma_max, positive=True)
            if sigma_max > 1:
                raise ValueError(f"rectified-flow time runs in (0, 1]; sigma_max must be <= 1, got {sigma_max}")
            sigmas = sigmas_linear(steps, sigma_max) if kind == "linear" else sigmas_logsnr(steps, sigma_max)
        else:
            sigma_max = _check_number("sigma_max", 100.0 if sigma_max is None else sigma_max, positive=True)
            sigmas = sigmas_cosine(steps, sigma_max)
        return jnp.asarray(sigmas, dtype=dtype)

    sigma_min = _check_number("sigma_min", 0.01 if sigma_min is None else sigma_min, positive=True)
    sigma_max = _check_number("sigma_max", 100.0 if sigma_max is None else sigma_max, positive=True)
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if kind == "exponential":
        sigmas = sigmas_exponential(steps, sigma_min, sigma_max)
    else:
        rho = _check_number("rho", _DEFAULT_RHO[kind] if rho is None else rho, positive=True)
        fn = sigmas_polyexponential if kind == "polyexponential" else sigmas_karras
        sigmas = fn(steps, sigma_min, sigma_max, rho)
    return jnp.asarray(sigmas, dtype=dtype)
