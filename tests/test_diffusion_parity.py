"""sa-jax's samplers, schedules and v-wrapper against k-diffusion (and stable-audio-tools' v-ddim and
rectified-flow samplers) on CPU torch: same denoiser, same start, same noise.

The denoiser is a small nonlinear v-model (tanh of a random projection, mixing time in) wrapped by each
side's own VDenoiser, so the wrapper is compared too. SDE samplers are compared exactly by handing
k-diffusion a noise sampler that returns sa-jax's per-step noise (`step_noise`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_jax.diffusion import get_sigmas, rf_denoiser, sample, step_noise, v_denoiser
from sa_jax.testing.kdiffusion_ref import kdiffusion, sat_sampling

torch = pytest.importorskip("torch")

BATCH, LENGTH, CHANNELS, HIDDEN = 2, 8, 4, 16
STEPS = 8
# float32: max |sa-jax - k-diffusion| / max |k-diffusion| must stay below this (the bound).
RTOL32 = 1e-5
RTOL64 = 1e-10


def _weights(dtype):
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(CHANNELS, HIDDEN)) / math.sqrt(CHANNELS)
    w2 = rng.normal(size=(HIDDEN, CHANNELS)) / math.sqrt(HIDDEN)
    u = rng.normal(size=(HIDDEN,))
    return [a.astype(dtype) for a in (w1, w2, u)]


def jax_v_model(dtype):
    w1, w2, u = (jnp.asarray(a) for a in _weights(dtype))

    def model(x, t):  # x: (batch, length, channels), t: (batch,)
        return jnp.tanh(x @ w1 + t[:, None, None] * u) @ w2 + 0.1 * x

    return model


def torch_v_model(dtype):
    w1, w2, u = (torch.from_numpy(a) for a in _weights(dtype))

    def model(x, t):
        return torch.tanh(x @ w1 + t[:, None, None] * u) @ w2 + 0.1 * x

    return model


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def start_noise(dtype):
    return np.random.default_rng(1).normal(size=(BATCH, LENGTH, CHANNELS)).astype(dtype)


class NoiseFromSteps:
    """A k-diffusion noise sampler returning sa-jax's step-i noise on its i-th call."""

    def __init__(self, key, like):
        self.key, self.like, self.calls = key, like, 0

    def __call__(self, sigma, sigma_next):
        noise = step_noise(self.key, self.calls, self.like)
        self.calls += 1
        return torch.from_numpy(np.array(noise))


# name -> (k-diffusion function name, options for both sides)
DETERMINISTIC = {
    "euler": ("sample_euler", {}),
    "heun": ("sample_heun", {}),
    "dpm-2": ("sample_dpm_2", {}),
    "lms": ("sample_lms", {}),
    "dpmpp-2m": ("sample_dpmpp_2m", {}),
    "euler-ancestral(eta=0)": ("sample_euler_ancestral", {"eta": 0.0}),
    "dpmpp-2s-ancestral(eta=0)": ("sample_dpmpp_2s_ancestral", {"eta": 0.0}),
    "dpmpp-2m-sde(eta=0)": ("sample_dpmpp_2m_sde", {"eta": 0.0}),
    "dpmpp-2m-sde(eta=0,heun)": ("sample_dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}),
    "dpmpp-3m-sde(eta=0)": ("sample_dpmpp_3m_sde", {"eta": 0.0}),
}
STOCHASTIC = {
    "euler-ancestral": ("sample_euler_ancestral", {}),
    "dpmpp-2s-ancestral": ("sample_dpmpp_2s_ancestral", {"eta": 0.7}),
    "dpmpp-2m-sde": ("sample_dpmpp_2m_sde", {}),
    "dpmpp-2m-sde(heun)": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    "dpmpp-3m-sde": ("sample_dpmpp_3m_sde", {"eta": 0.8, "s_noise": 0.9}),
}


def run_pair(case, table, dtype, key=jax.random.key(7)):
    K = kdiffusion()
    fn_name, options = table[case]
    name = case.split("(")[0]
    sigmas_np = np.array(get_sigmas("polyexponential", STEPS, sigma_min=0.03, sigma_max=30.0,
                                      dtype=jnp.float64 if dtype == np.float64 else jnp.float32))
    x_np = start_noise(dtype) * sigmas_np[0]

    ours = sample(v_denoiser(jax_v_model(dtype)), jnp.asarray(x_np), jnp.asarray(sigmas_np), name, key=key,
                  **options)

    ref_kwargs = dict(options, disable=True)
    if table is STOCHASTIC:
        ref_kwargs["noise_sampler"] = NoiseFromSteps(key, ours)
    denoiser = K.external.VDenoiser(torch_v_model(dtype))
    with torch.no_grad():
        ref = getattr(K.sampling, fn_name)(denoiser, torch.from_numpy(x_np), torch.from_numpy(sigmas_np),
                                           **ref_kwargs)
    return ours, ref.numpy()


@pytest.mark.parametrize("case", list(DETERMINISTIC))
def test_deterministic_samplers_match_kdiffusion_float32(case):
    ours, ref = run_pair(case, DETERMINISTIC, np.float32)
    assert ours.dtype == jnp.float32
    assert rel_err(ours, ref) < RTOL32, f"{case}: relative error {rel_err(ours, ref):.2e}"


@pytest.mark.parametrize("case", ["euler", "heun", "lms", "dpmpp-2m", "dpmpp-3m-sde(eta=0)"])
def test_deterministic_samplers_match_kdiffusion_float64(case):
    with jax.enable_x64(True):
        ours, ref = run_pair(case, DETERMINISTIC, np.float64)
        assert ours.dtype == jnp.float64
    assert rel_err(ours, ref) < RTOL64, f"{case}: relative error {rel_err(ours, ref):.2e}"


@pytest.mark.parametrize("case", list(STOCHASTIC))
def test_sde_samplers_match_kdiffusion_given_the_same_noise(case):
    ours, ref = run_pair(case, STOCHASTIC, np.float32)
    assert rel_err(ours, ref) < RTOL32, f"{case}: relative error {rel_err(ours, ref):.2e}"


SCHEDULE_CASES = [
    ("polyexponential", dict(sigma_min=0.01, sigma_max=100.0, rho=1.0), "get_sigmas_polyexponential"),
    ("polyexponential", dict(sigma_min=0.3, sigma_max=500.0, rho=2.5), "get_sigmas_polyexponential"),
    ("exponential", dict(sigma_min=0.01, sigma_max=100.0), "get_sigmas_exponential"),
    ("karras", dict(sigma_min=0.002, sigma_max=80.0, rho=7.0), "get_sigmas_karras"),
]


@pytest.mark.parametrize("kind,kwargs,ref_name", SCHEDULE_CASES)
@pytest.mark.parametrize("steps", [1, 2, 50])
def test_schedules_match_kdiffusion(kind, kwargs, ref_name, steps):
    K = kdiffusion()
    ref_fn = getattr(K.sampling, ref_name)
    ours32 = np.asarray(get_sigmas(kind, steps, **kwargs))
    ref32 = ref_fn(steps, **kwargs).numpy()
    assert ours32.shape == ref32.shape == (steps + 1,) and ours32.dtype == ref32.dtype == np.float32
    assert ours32[-1] == ref32[-1] == 0
    # torch does the arithmetic in float32, we in float64 rounded once: a few float32 ulps apart.
    np.testing.assert_allclose(ours32, ref32, rtol=2e-6, atol=0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref64 = ref_fn(steps, **kwargs).numpy()
    finally:
        torch.set_default_dtype(default)
    with jax.enable_x64(True):
        ours64 = np.asarray(get_sigmas(kind, steps, **kwargs, dtype=jnp.float64))
    np.testing.assert_allclose(ours64, ref64, rtol=1e-13, atol=0)


def test_v_denoiser_matches_kdiffusion_vdenoiser():
    K = kdiffusion()
    x = start_noise(np.float32) * 3
    sigma = np.array([0.02, 40.0], np.float32)
    ours = v_denoiser(jax_v_model(np.float32))(jnp.asarray(x), jnp.asarray(sigma))
    ref = K.external.VDenoiser(torch_v_model(np.float32))(torch.from_numpy(x), torch.from_numpy(sigma))
    assert rel_err(ours, ref.numpy()) < 1e-6


def test_v_ddim_matches_stable_audio_tools():
    """stable-audio-tools' v-ddim runs in variance-preserving t-space; ours in sigma space with the
    'cosine' schedule (t uniform, sigma = tan(pi t / 2)). Same start: x_sigma = x_t / alpha."""
    sat = sat_sampling()
    t_max, steps = 0.97, STEPS
    x_t = start_noise(np.float32)
    with torch.no_grad():
        ref = sat.sample(torch_v_model(np.float32), torch.from_numpy(x_t), steps, eta=0.0, sigma_max=t_max)
    sigmas = get_sigmas("cosine", steps, sigma_max=math.tan(t_max * math.pi / 2))
    ours = sample(v_denoiser(jax_v_model(np.float32)), jnp.asarray(x_t) / math.cos(t_max * math.pi / 2),
                  sigmas, "v-ddim")
    assert rel_err(ours, ref.numpy()) < RTOL32, f"relative error {rel_err(ours, ref.numpy()):.2e}"


@pytest.mark.parametrize("sampler,ref_name,kind", [
    ("euler", "sample_discrete_euler", "logsnr"), ("euler", "sample_discrete_euler", "linear"),
    ("rk4", "sample_rk4", "linear"), ("rk4", "sample_rk4", "logsnr"), ("pingpong", "sample_flow_pingpong", "logsnr")])
def test_rectified_flow_samplers_match_stable_audio_tools(sampler, ref_name, kind, monkeypatch):
    sat = sat_sampling()
    key = jax.random.key(3)
    t = np.array(get_sigmas(kind, STEPS, sigma_max=1.0))
    x = start_noise(np.float32)
    ours = sample(rf_denoiser(jax_v_model(np.float32)), jnp.asarray(x), jnp.asarray(t), sampler, key=key)
    if sampler == "pingpong":  # feed the reference our per-step noise
        draws = iter(np.array(step_noise(key, i, ours)) for i in range(STEPS))
        monkeypatch.setattr(sat.torch, "randn_like", lambda like: torch.from_numpy(next(draws).copy()))
    with torch.no_grad():
        ref = getattr(sat, ref_name)(torch_v_model(np.float32), torch.from_numpy(x), sigmas=torch.from_numpy(t))
    assert rel_err(ours, ref.numpy()) < RTOL32, f"relative error {rel_err(ours, ref.numpy()):.2e}"
