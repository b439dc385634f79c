"""The k-diffusion sampler family in JAX, each solver one step function inside a single jitted scan.

Conventions (k-diffusion's): `denoise(x, sigma) -> x0 estimate` with sigma of shape (batch,); the
sampler walks x from sigmas[0] to sigmas[-1] (usually 0). x starts as noise * sigmas[0] (plus the init
latents for variations). A step function has the form

    step(model, x, sigmas, i, memory, key, opts) -> (x_next, memory)

where `model(x, sigma_scalar)` is the denoiser, `i` the (traced) step index, `memory` what a multistep
method keeps from earlier steps, and `key` this step's PRNG key. `sample` runs all steps in one
`lax.scan` under one `jax.jit`, compiled once per (denoiser structure, shapes, step count, sampler and
options) and reused: new noise, weights, conditioning or sigmas of the same length do not recompile.

Stochastic samplers draw step i's noise from `step_noise(key, i, x)`: one seed, one result. `key` is one
key for the whole batch, or one key per batch item (a key array of shape (batch,)): then every draw of
item b comes from its own key alone, so an item's result does not depend on what it is batched with.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .wrappers import as_pytree_fn

_SOLVER_STREAM, _INPAINT_STREAM, _JUMP_STREAM = 0, 1, 2


def per_item(key) -> bool:
    """Whether `key` holds one key per batch item (a key array of shape (batch,), or raw (batch, 2) uint32
    keys) rather than one key for the whole batch."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    return key.ndim == (1 if typed else 2)


def fold_in(key, data):
    """`jax.random.fold_in` of one key, or of each key of a per-item key array."""
    if per_item(key):
        return jax.vmap(jax.random.fold_in, (0, None))(key, data)
    return jax.random.fold_in(key, data)


def step_noise(key, i, x, stream: int = _SOLVER_STREAM):
    """Standard normal noise like x for step i (stream 0: the solver, 1: inpainting re-noising). With one
    key per item (`per_item`), item b's noise is drawn from key[b] alone."""
    key = fold_in(fold_in(key, stream), i)
    if per_item(key):
        return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(key)
    return jax.random.normal(key, x.shape, x.dtype)


def to_d(x, sigma, denoised):
    """The probability-flow ODE derivative dx/dsigma = (x - x0) / sigma (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / sigma


def ancestral_step(sigma, sigma_next, eta):
    """Split a step sigma -> sigma_next into a deterministic move to sigma_down and fresh noise of
    scale sigma_up, sigma_down^2 + sigma_up^2 = sigma_next^2; eta = 1 is DDPM-like, 0 deterministic."""
    if not eta:
        return sigma_next, jnp.zeros_like(sigma_next)
    sigma_up = jnp.minimum(sigma_next, eta * jnp.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return jnp.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def _log_lerp_half(a, b):
    """exp of the midpoint of log a and log b (torch.lerp's weight >= 0.5 form, for parity)."""
    la, lb = jnp.log(a), jnp.log(b)
    return jnp.exp(lb - (lb - la) * 0.5)


def _churn(x, sigmas, i, key, opts):
    """Karras et al. (2022) Algorithm 2 "churn": raise sigma to sigma_hat by adding noise first."""
    sigma = sigmas[i]
    if not opts["s_churn"]:
        return x, sigma
    steps = sigmas.shape[0] - 1
    inside = (opts["s_tmin"] <= sigma) & (sigma <= opts["s_tmax"])
    gamma = jnp.where(inside, min(opts["s_churn"] / steps, 2**0.5 - 1), 0.0).astype(sigma.dtype)
    sigma_hat = sigma * (gamma + 1)
    eps = step_noise(key, i, x) * opts["s_noise"]
    x = jnp.where(gamma > 0, x + eps * jnp.sqrt(sigma_hat**2 - sigma**2), x)
    return x, sigma_hat


# --- k-diffusion samplers ---------------------------------------------------------------------------

def euler(model, x, sigmas, i, memory, key, opts):
    """Euler steps on the probability-flow ODE (Karras et al. 2022, Alg. 2 without the Heun correction).
    On rectified-flow time this is also the flow's Euler sampler."""
    x, sigma_hat = _churn(x, sigmas, i, key, opts)
    d = to_d(x, sigma_hat, model(x, sigma_hat))
    return x + d * (sigmas[i + 1] - sigma_hat), memory


def euler_ancestral(model, x, sigmas, i, memory, key, opts):
    """Euler step down to sigma_down, then fresh noise up to sigma_next."""
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    denoised = model(x, sigma)
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next, opts["eta"])
    x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
    if opts["eta"]:
        x = jnp.where(sigma_next > 0, x + step_noise(key, i, x) * opts["s_noise"] * sigma_up, x)
    return x, memory


def heun(model, x, sigmas, i, memory, key, opts):
    """Heun's second-order method (Karras et al. 2022, Alg. 2); a plain Euler step into sigma = 0."""
    x, sigma_hat = _churn(x, sigmas, i, key, opts)
    sigma_next = sigmas[i + 1]
    d = to_d(x, sigma_hat, model(x, sigma_hat))
    dt = sigma_next - sigma_hat

    def corrected(x):
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigma_next, model(x_2, sigma_next))
        return x + (d + d_2) / 2 * dt

    return lax.cond(sigma_next == 0, lambda x: x + d * dt, corrected, x), memory


def dpm_2(model, x, sigmas, i, memory, key, opts):
    """DPM-Solver-2 as a midpoint method in log sigma (k-diffusion's sample_dpm_2)."""
    x, sigma_hat = _churn(x, sigmas, i, key, opts)
    sigma_next = sigmas[i + 1]
    d = to_d(x, sigma_hat, model(x, sigma_hat))

    def midpoint(x):
        sigma_mid = _log_lerp_half(sigma_hat, sigma_next)
        x_2 = x + d * (sigma_mid - sigma_hat)
        d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
        return x + d_2 * (sigma_next - sigma_hat)

    return lax.cond(sigma_next == 0, lambda x: x + d * (sigma_next - sigma_hat), midpoint, x), memory


def _t(sigma):  # DPM-Solver's time: t = -log sigma (half the log-SNR in sigma space)
    return -jnp.log(sigma)


def _sigma(t):
    return jnp.exp(-t)


def dpmpp_2s_ancestral(model, x, sigmas, i, memory, key, opts):
    """DPM-Solver++(2S) (Lu et al. 2022, single-step, second order) to sigma_down, then ancestral noise."""
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    denoised = model(x, sigma)
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next, opts["eta"])

    def second_order(x):
        t, t_next = _t(sigma), _t(sigma_down)
        h = t_next - t
        s = t + 0.5 * h
        x_2 = (_sigma(s) / _sigma(t)) * x - jnp.expm1(-h * 0.5) * denoised
        denoised_2 = model(x_2, _sigma(s))
        return (_sigma(t_next) / _sigma(t)) * x - jnp.expm1(-h) * denoised_2

    x = lax.cond(sigma_down == 0, lambda x: x + to_d(x, sigma, denoised) * (sigma_down - sigma), second_order, x)
    if opts["eta"]:
        x = jnp.where(sigma_next > 0, x + step_noise(key, i, x) * opts["s_noise"] * sigma_up, x)
    return x, memory


def dpmpp_2m(model, x, sigmas, i, memory, key, opts):
    """DPM-Solver++(2M) (Lu et al. 2022): a two-step multistep method in the data prediction."""
    (old_denoised,) = memory
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    denoised = model(x, sigma)
    t, t_next = _t(sigma), _t(sigma_next)
    h = t_next - t
    r = (t - _t(sigmas[jnp.maximum(i - 1, 0)])) / h  # h_last / h
    denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
    first_order = (i == 0) | (sigma_next == 0)
    x = (_sigma(t_next) / _sigma(t)) * x - jnp.expm1(-h) * jnp.where(first_order, denoised, denoised_d)
    return x, (denoised,)


def dpmpp_2m_sde(model, x, sigmas, i, memory, key, opts):
    """DPM-Solver++(2M) SDE: the 2M update with eta times the noise of the reverse SDE; eta = 0 is 2M."""
    old_denoised, h_last = memory
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    eta = opts["eta"]
    denoised = model(x, sigma)
    h = _t(sigma_next) - _t(sigma)
    eta_h = eta * h
    x_new = sigma_next / sigma * jnp.exp(-eta_h) * x + -jnp.expm1(-h - eta_h) * denoised
    r = h_last / h
    if opts["solver_type"] == "heun":
        correction = (-jnp.expm1(-h - eta_h) / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
    else:  # midpoint
        correction = 0.5 * -jnp.expm1(-h - eta_h) * (1 / r) * (denoised - old_denoised)
    x_new = jnp.where(i > 0, x_new + correction, x_new)
    if eta:
        noise = step_noise(key, i, x)
        x_new = x_new + noise * sigma_next * jnp.sqrt(-jnp.expm1(-2 * eta_h)) * opts["s_noise"]
    return jnp.where(sigma_next == 0, denoised, x_new), (denoised, h)


def dpmpp_3m_sde(model, x, sigmas, i, memory, key, opts):
    """DPM-Solver++(3M) SDE: third-order multistep in the data prediction with eta-scaled SDE noise.
    The first two steps use the lower orders available; the last step into sigma = 0 returns x0."""
    denoised_1, denoised_2, h_1, h_2 = memory
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    eta = opts["eta"]
    denoised = model(x, sigma)
    h = _t(sigma_next) - _t(sigma)
    h_eta = h * (eta + 1)
    x_new = jnp.exp(-h_eta) * x + -jnp.expm1(-h_eta) * denoised
    phi_2 = jnp.expm1(-h_eta) / h_eta + 1
    phi_3 = phi_2 / h_eta - 0.5
    # third order, from the last three data predictions
    r0, r1 = h_1 / h, h_2 / h
    d1_0 = (denoised - denoised_1) / r0
    d1_1 = (denoised_1 - denoised_2) / r1
    d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    third = x_new + phi_2 * d1 - phi_3 * d2
    # second order, from the last two
    second = x_new + phi_2 * ((denoised - denoised_1) / r0)
    x_new = jnp.where(i >= 2, third, jnp.where(i == 1, second, x_new))
    if eta:
        noise = step_noise(key, i, x)
        x_new = x_new + noise * sigma_next * jnp.sqrt(-jnp.expm1(-2 * h * eta)) * opts["s_noise"]
    return jnp.where(sigma_next == 0, denoised, x_new), (denoised, denoised_1, h, h_1)


def _lms_coefficients(sigmas, i, order):
    """Integrals over [sigma_i, sigma_i+1] of the Lagrange basis through sigma_i, ..., sigma_i-order+1
    (fewer points in the first steps), by Gauss-Legendre quadrature, exact for these polynomials."""
    nodes, weights = np.polynomial.legendre.leggauss(max(1, (order + 1) // 2))
    cur_order = jnp.minimum(i + 1, order)
    ts = sigmas[jnp.maximum(i - jnp.arange(order), 0)]  # ts[j] = sigma_{i-j}
    a, b = sigmas[i], sigmas[i + 1]
    taus = (a + b) / 2 + (b - a) / 2 * jnp.asarray(nodes, sigmas.dtype)
    coeffs = []
    for j in range(order):
        basis = jnp.ones_like(taus)
        for k in range(order):
            if k == j:
                continue
            used = k < cur_order
            denom = jnp.where(used, ts[j] - ts[k], 1.0)
            basis = basis * jnp.where(used, (taus - ts[k]) / denom, 1.0)
        integral = (b - a) / 2 * jnp.sum(jnp.asarray(weights, sigmas.dtype) * basis)
        coeffs.append(jnp.where(j < cur_order, integral, 0.0))
    return coeffs


def lms(model, x, sigmas, i, memory, key, opts):
    """Linear multistep (Adams-Bashforth on the ODE in sigma, non-uniform steps) of order `order`."""
    (ds,) = memory  # ds[j] = the derivative j steps ago
    d = to_d(x, sigmas[i], model(x, sigmas[i])).astype(ds.dtype)
    ds = jnp.concatenate([d[None], ds[:-1]])
    coeffs = _lms_coefficients(sigmas, i, opts["order"])
    update = coeffs[0] * ds[0]
    for coeff, d_j in zip(coeffs[1:], ds[1:]):
        update = update + coeff * d_j
    return x + update, (ds,)


def v_ddim(model, x, sigmas, i, memory, key, opts):
    """DDIM (Song et al. 2021) on the v-objective's cosine schedule, in sigma space.

    With t = atan(sigma) 2 / pi, alpha = cos(pi t / 2), sigma_t = sin(pi t / 2), the variance-preserving
    update  x_t' = alpha' x0 + sqrt(sigma_t'^2 - s^2) eps + s z  with  s = eta sigma_t'/sigma_t
    sqrt(1 - alpha^2 / alpha'^2)  is divided by alpha' to stay in sigma space. eta = 0 (the reference's
    setting) is deterministic and equals an Euler step."""
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    denoised = model(x, sigma)
    eps = (x - denoised) / sigma
    t, t_next = jnp.arctan(sigma) * 2 / math.pi, jnp.arctan(sigma_next) * 2 / math.pi
    alpha, sigma_t = jnp.cos(t * math.pi / 2), jnp.sin(t * math.pi / 2)
    alpha_next, sigma_t_next = jnp.cos(t_next * math.pi / 2), jnp.sin(t_next * math.pi / 2)
    ddim_sigma = opts["eta"] * jnp.sqrt(sigma_t_next**2 / sigma_t**2) * jnp.sqrt(1 - alpha**2 / alpha_next**2)
    x_next = denoised + eps * (jnp.sqrt(sigma_t_next**2 - ddim_sigma**2) / alpha_next)
    if opts["eta"]:
        x_next = x_next + step_noise(key, i, x) * (ddim_sigma / alpha_next)
    return x_next, memory


# --- rectified-flow samplers (sigma is the flow time t in [0, 1]) ------------------------------------

def rk4(model, x, sigmas, i, memory, key, opts):
    """Classic fourth-order Runge-Kutta on dx/dt = v(x, t), as stable-audio-tools' sample_rk4."""
    velocity = model.velocity
    t, t_next = sigmas[i], sigmas[i + 1]
    dt = t_next - t
    k1 = velocity(x, t)
    k2 = velocity(x + dt / 2 * k1, t + dt / 2)
    k3 = velocity(x + dt / 2 * k2, t + dt / 2)
    k4 = velocity(x + dt * k3, t_next)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4), memory


def pingpong(model, x, sigmas, i, memory, key, opts):
    """Ping-pong sampling (for distilled flows): denoise fully, then re-noise to the next t with fresh
    noise: x' = (1 - t') x0 + t' z."""
    t_next = sigmas[i + 1]
    denoised = model(x, sigmas[i])
    return (1 - t_next) * denoised + t_next * step_noise(key, i, x), memory


# --- registry ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    step: Callable
    options: dict  # option name -> default
    memory: Callable = lambda x, sigmas, opts: ()  # initial multistep memory
    stochastic: Callable = lambda opts: False  # draws noise with these options?
    rectified_flow: bool = False  # only meaningful on rectified-flow time
    needs_velocity: bool = False


_CHURN = dict(s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0)
_churns = lambda opts: bool(opts["s_churn"])
_eta = lambda opts: bool(opts["eta"])
_zero_h = lambda sigmas: jnp.zeros((), sigmas.dtype)

SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec(euler, _CHURN, stochastic=_churns),
    "euler-ancestral": SamplerSpec(euler_ancestral, dict(eta=1.0, s_noise=1.0), stochastic=_eta),
    "heun": SamplerSpec(heun, _CHURN, stochastic=_churns),
    "dpm-2": SamplerSpec(dpm_2, _CHURN, stochastic=_churns),
    "dpmpp-2s-ancestral": SamplerSpec(dpmpp_2s_ancestral, dict(eta=1.0, s_noise=1.0), stochastic=_eta),
    "dpmpp-2m": SamplerSpec(dpmpp_2m, {}, memory=lambda x, sigmas, opts: (jnp.zeros_like(x),)),
    "dpmpp-2m-sde": SamplerSpec(dpmpp_2m_sde, dict(eta=1.0, s_noise=1.0, solver_type="midpoint"),
                                memory=lambda x, sigmas, opts: (jnp.zeros_like(x), _zero_h(sigmas)),
                                stochastic=_eta),
    "dpmpp-3m-sde": SamplerSpec(dpmpp_3m_sde, dict(eta=1.0, s_noise=1.0),
                                memory=lambda x, sigmas, opts: (jnp.zeros_like(x), jnp.zeros_like(x),
                                                                _zero_h(sigmas), _zero_h(sigmas)),
                                stochastic=_eta),
    "lms": SamplerSpec(lms, dict(order=4),
                       memory=lambda x, sigmas, opts: (jnp.zeros((opts["order"],) + x.shape, x.dtype),)),
    "v-ddim": SamplerSpec(v_ddim, dict(eta=0.0), stochastic=_eta),
    "rk4": SamplerSpec(rk4, {}, rectified_flow=True, needs_velocity=True),
    "pingpong": SamplerSpec(pingpong, {}, stochastic=lambda opts: True, rectified_flow=True),
}
# Aliases under stable-audio-tools' names.
SAMPLER_ALIASES = {"k-heun": "heun", "k-lms": "lms", "k-dpm-2": "dpm-2",
                   "k-dpmpp-2s-ancestral": "dpmpp-2s-ancestral"}


def _resolve_options(name: str, spec: SamplerSpec, options: dict) -> dict:
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.options) or "none"
        raise ValueError(f"sampler {name!r} takes no option(s) {', '.join(unknown)}; its options: {allowed}")
    opts = {**spec.options, **options}
    for key, value in opts.items():
        if key == "solver_type":
            if value not in ("midpoint", "heun"):
                raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {value!r}")
        elif key == "order":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"lms order must be an integer >= 1, got {value!r}")
        else:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
                raise ValueError(f"{key} must be a number, got {value!r}")
            if key in ("eta", "s_noise", "s_churn") and (value < 0 or not math.isfinite(value)):
                raise ValueError(f"{key} must be finite and >= 0, got {value}")
            opts[key] = float(value)
    return opts


def _concrete(a) -> np.ndarray | None:
    """The value of `a` if it is known now (not a tracer inside someone's jit)."""
    if isinstance(a, jax.core.Tracer):
        return None
    return np.asarray(a)


def _check_sigmas(sigmas, rectified_flow: bool):
    if jnp.ndim(sigmas) != 1 or jnp.shape(sigmas)[0] < 2:
        raise ValueError(f"sigmas must be a 1-D array of steps + 1 >= 2 noise levels (steps >= 1), "
                         f"got shape {jnp.shape(sigmas)}")
    if not jnp.issubdtype(jnp.result_type(sigmas), jnp.floating):
        raise ValueError(f"sigmas must be floating point, got {jnp.result_type(sigmas)}")
    values = _concrete(sigmas)
    if values is None:
        return
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"sigmas must be finite and >= 0, got {values}")
    if np.any(np.diff(values) >= 0):
        raise ValueError(f"sigmas must be strictly decreasing (from sigma_max down to 0), got {values}")
    if rectified_flow and values[0] > 1:
        raise ValueError(f"rectified-flow samplers run on t in [0, 1]; sigmas[0] = {values[0]} > 1")


def _noised(known, sigma, noise, rectified_flow: bool):
    """The known clean data at noise level sigma, the way the sampler's process noises it."""
    if rectified_flow:
        return (1 - sigma) * known + sigma * noise
    return known + sigma * noise


def _jump_back(x, sigma_low, sigma_high, noise, rectified_flow: bool):
    """x at noise level sigma_low taken back up to sigma_high (RePaint's resampling jump): the forward
    process's transition, x + sqrt(high^2 - low^2) eps, or its rectified-flow form."""
    if rectified_flow:
        scale = (1 - sigma_high) / (1 - sigma_low)
        return scale * x + jnp.sqrt(jnp.maximum(sigma_high ** 2 - (scale * sigma_low) ** 2, 0)) * noise
    return x + jnp.sqrt(jnp.maximum(sigma_high ** 2 - sigma_low ** 2, 0)) * noise


@functools.partial(jax.jit, static_argnames=("sampler", "opts", "rectified_flow", "resample_passes"))
def _run(denoise, x, sigmas, key, inpaint, *, sampler, opts, rectified_flow, resample_passes=1):
    spec = SAMPLERS[sampler]
    opts = dict(opts)
    batch = x.shape[0]

    class Model:  # the step functions call model(x, sigma) with a scalar sigma
        def __call__(self, x, sigma):
            return denoise(x, jnp.full((batch,), sigma, sigmas.dtype)).astype(x.dtype)

        def velocity(self, x, t):
            return denoise.velocity(x, jnp.full((batch,), t, sigmas.dtype)).astype(x.dtype)

    model = Model()

    def attempt(x, memory, i, key):
        if inpaint is not None:  # RePaint: overwrite the known region with known data noised to sigma_i
            known, mask = inpaint
            renoised = _noised(known, sigmas[i], step_noise(key, i, x, _INPAINT_STREAM), rectified_flow)
            x = (mask * renoised + (1 - mask) * x).astype(x.dtype)
        x_next, memory = spec.step(model, x, sigmas, i, memory, key, opts)
        return x_next.astype(x.dtype), memory  # sigmas may be wider than x (bf16 latents)

    def body(carry, i):
        x, memory = carry
        x_next, new_memory = attempt(x, memory, i, key)
        # RePaint's resampling: take the step's result back up to sigma_i and step again, so the generated
        # region and the re-noised known region harmonise. Each pass starts from the step's own history
        # (multistep solvers) and draws its own noise; one pass is the plain step.
        for jump in range(1, resample_passes):
            jump_key = fold_in(key, _JUMP_STREAM + jump)
            back = _jump_back(x_next, sigmas[i + 1], sigmas[i], step_noise(jump_key, i, x, _JUMP_STREAM),
                              rectified_flow).astype(x.dtype)
            x_next, new_memory = attempt(back, memory, i, jump_key)
        return (x_next, new_memory), None

    steps = sigmas.shape[0] - 1
    (x, _), _ = lax.scan(body, (x, spec.memory(x, sigmas, opts)), jnp.arange(steps))
    if inpaint is not None:
        known, mask = inpaint
        x = (mask * known + (1 - mask) * x).astype(x.dtype)
    return x


def sample(denoise: Callable, x, sigmas, sampler: str = "dpmpp-3m-sde", key=None, *, known=None, mask=None,
           resample_passes: int = 1, rectified_flow: bool | None = None, **options):
    """Draw x0 by integrating from x at sigmas[0] through `sigmas` with `sampler`.

    denoise: `denoise(x, sigma) -> x0 estimate`, sigma of shape (batch,) (k-diffusion's convention): a
      function, a `jax.tree_util.Partial` binding weights/conditioning (these become jit arguments, not
      constants), or a wrapper from `v_denoiser`/`rf_denoiser`/`cfg_model`.
    x: the start, noise * sigmas[0] (plus init latents for variations, see `start_latents`); the first
      axis is the batch.
    sigmas: decreasing noise levels, usually `get_sigmas(...)`, ending in 0.
    sampler: a name in `SAMPLERS` (or `SAMPLER_ALIASES`).
    key: a `jax.random` key; needed by samplers that draw noise (ancestral, SDE, churn, pingpong) and by
      inpainting. The same key gives the same result. Or one key per batch item (a key array of shape
      (batch,)): each item's noise then comes from its own key, whatever else is in the batch.
    known, mask: RePaint-style inpainting. `known` holds clean latents (shape of x); `mask` (broadcast to
      x) is 1 where `known` is kept, 0 where the model generates. Before every step the kept region is
      replaced by `known` noised to the current sigma; the output carries `known` exactly there.
    resample_passes: RePaint's resampling (Lugmayr et al. 2022) for inpainting: each step is taken this
      many times, the result jumped back up to the step's sigma with fresh noise in between (1: none;
      each pass costs a step's network calls).
    rectified_flow: whether x lives on rectified-flow time (x_t = (1 - t) x0 + t eps); decides how
      `known` is noised. Default: true for the flow-only samplers and for `rf_denoiser` models.
    options: per-sampler knobs, e.g. eta and s_noise for ancestral/SDE samplers, s_churn for euler/heun/
      dpm-2, order for lms, solver_type for dpmpp-2m-sde. Unknown ones are errors.
    """
    name = SAMPLER_ALIASES.get(sampler, sampler)
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    spec = SAMPLERS[name]
    opts = _resolve_options(name, spec, options)
    denoise = as_pytree_fn(denoise)
    if rectified_flow is None:
        rectified_flow = spec.rectified_flow or bool(getattr(denoise, "rectified_flow", False))
    if spec.needs_velocity and not hasattr(denoise, "velocity"):
        raise ValueError(f"sampler {name!r} evaluates the flow velocity at t = 0, which an x0 denoiser cannot "
                         "give; wrap the velocity model with rf_denoiser(model)")
    x = jnp.asarray(x)
    if x.ndim < 1 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating-point array with a leading batch axis, got {x.dtype}{x.shape}")
    sigmas = jnp.asarray(sigmas)
    _check_sigmas(sigmas, rectified_flow or spec.rectified_flow)

    if (known is None) != (mask is None):
        raise ValueError("inpainting needs both `known` (clean latents) and `mask` (1 = keep); got only one")
    inpaint = None
    if known is not None:
        known = jnp.asarray(known, x.dtype)
        if known.shape != x.shape:
            raise ValueError(f"known latents must have the shape of x {x.shape}, got {known.shape}")
        try:
            mask = jnp.broadcast_to(jnp.asarray(mask, x.dtype), x.shape)
        except ValueError:
            raise ValueError(f"mask of shape {jnp.shape(mask)} does not broadcast to x {x.shape}") from None
        inpaint = (known, mask)
    if isinstance(resample_passes, bool) or not isinstance(resample_passes, (int, np.integer)) \
            or resample_passes < 1:
        raise ValueError(f"resample_passes must be an integer >= 1 (1: no resampling), got {resample_passes!r}")
    if resample_passes > 1 and inpaint is None:
        raise ValueError("resample_passes > 1 resamples an inpainting run: give known and mask")

    if isinstance(key, (int, np.integer)):
        raise ValueError(f"key must be a jax.random key, e.g. key=jax.random.key({key}), not an integer")
    if key is None:
        if spec.stochastic(opts) or inpaint is not None:
            why = "inpainting re-noises the known region" if not spec.stochastic(opts) else "it draws noise"
            raise ValueError(f"sampler {name!r} needs key=jax.random.key(seed): {why}")
        key = jax.random.key(0)  # never used
    elif per_item(key) and key.shape[0] != x.shape[0]:
        raise ValueError(f"one key per batch item needs {x.shape[0]} keys (the batch of x), got {key.shape[0]}")
    return _run(denoise, x, sigmas, key, inpaint, sampler=name, opts=tuple(sorted(opts.items())),
                rectified_flow=bool(rectified_flow), resample_passes=int(resample_passes))


def start_latents(noise, sigma_max, init=None, *, rectified_flow: bool = False):
    """Where sampling starts: noise * sigma_max, or for variations the init latents noised to
    sigma_max (= init_noise_level): init + sigma_max * noise (sigma space) or
    (1 - t) init + t noise (rectified flow, t = sigma_max)."""
    if init is None:
        return noise * sigma_max
    init = jnp.asarray(init)
    if init.shape != jnp.shape(noise):
        raise ValueError(f"init latents must have the shape of the noise {jnp.shape(noise)}, got {init.shape}")
    return _noised(init, sigma_max, noise, rectified_flow)
