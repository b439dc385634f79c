"""The diffusion core on its own: schedules, objectives and wrappers, guidance, compile-once sampling,
SDE statistics on Gaussian data with a known answer, variations, inpainting and bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_jax.diffusion import (
    SAMPLERS,
    SCHEDULES,
    Conditioned,
    cfg_model,
    get_sigmas,
    noised_and_target,
    rf_denoiser,
    sample,
    sample_timesteps,
    start_latents,
    v_denoiser,
)

KEY = jax.random.key(0)


def gaussian_denoiser(mu, s):
    """The exact x0 estimate for data ~ N(mu, s^2) (per channel, independent), x = x0 + sigma eps:
    E[x0 | x] = (s^2 x + sigma^2 mu) / (s^2 + sigma^2)."""

    def denoise(x, sigma):
        var = jnp.reshape(sigma, (-1,) + (1,) * (x.ndim - 1)) ** 2
        return (s**2 * x + var * mu) / (s**2 + var)

    return denoise


def exact_start(key, shape, sigma_max, mu, s):
    """A draw from the true marginal at sigma_max: N(mu, s^2 + sigma_max^2)."""
    return mu + jnp.sqrt(s**2 + sigma_max**2) * jax.random.normal(key, shape)


# --- schedules -------------------------------------------------------------------------------------------

def test_get_sigmas_contract():
    sigmas = get_sigmas("polyexponential", steps=50, sigma_min=0.01, sigma_max=100.0, rho=1.0)
    assert sigmas.shape == (51,) and sigmas.dtype == jnp.float32
    assert float(sigmas[-1]) == 0.0
    np.testing.assert_allclose(np.asarray(sigmas)[[0, -2]], [100.0, 0.01], rtol=1e-6)
    # rho = 1 is log-linear: equal ratios between neighbours
    ratios = np.asarray(sigmas[1:-1] / sigmas[:-2])
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-5)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_every_schedule_decreases_to_zero(kind):
    kwargs = dict(sigma_min=0.3, sigma_max=500.0) if kind in ("polyexponential", "exponential", "karras") else {}
    sigmas = np.asarray(get_sigmas(kind, 7, **kwargs))
    assert sigmas.shape == (8,) and sigmas[-1] == 0 and np.all(np.diff(sigmas) < 0)


def test_rectified_flow_schedules():
    np.testing.assert_allclose(get_sigmas("linear", 4), [1.0, 0.75, 0.5, 0.25, 0.0], rtol=1e-7)
    t = np.asarray(get_sigmas("logsnr", 4, sigma_max=0.8))
    assert t[0] == np.float32(0.8) and t[-1] == 0
    # the cosine schedule is uniform in the v-objective's t
    t_cos = np.arctan(np.asarray(get_sigmas("cosine", 4, sigma_max=100.0), np.float64)) * 2 / np.pi
    np.testing.assert_allclose(np.diff(t_cos), np.diff(t_cos)[0], rtol=1e-5)


# --- objectives and wrappers -------------------------------------------------------------------------------

def test_v_objective_and_v_denoiser_agree():
    """A model that outputs the true v target makes v_denoiser return x0 exactly: the training
    objective and the sampling-time wrapper describe the same process."""
    x0, eps = jax.random.normal(jax.random.key(1), (2, 2, 5, 3))
    t = jnp.array([0.1, 0.9])
    x_t, v = noised_and_target("v", x0, eps, t)
    alpha, sig = jnp.cos(t * math.pi / 2)[:, None, None], jnp.sin(t * math.pi / 2)[:, None, None]
    np.testing.assert_allclose(x_t, alpha * x0 + sig * eps, rtol=1e-6)

    def oracle(x_in, t_in):  # x_in should be x_t; returns the v that produced it
        np.testing.assert_allclose(t_in, t, rtol=1e-5)
        return v

    sigma = jnp.tan(t * math.pi / 2)
    denoised = v_denoiser(oracle)(x_t / alpha, sigma)
    np.testing.assert_allclose(denoised, x0, atol=1e-5)


def test_rectified_flow_objective_and_rf_denoiser_agree():
    x0, eps = jax.random.normal(jax.random.key(2), (2, 2, 5, 3))
    t = jnp.array([0.25, 0.75])
    x_t, target = noised_and_target("rectified_flow", x0, eps, t)
    np.testing.assert_allclose(x_t, (1 - t[:, None, None]) * x0 + t[:, None, None] * eps, rtol=1e-6)
    np.testing.assert_allclose(target, eps - x0)
    denoiser = rf_denoiser(lambda x, t: target)
    np.testing.assert_allclose(denoiser(x_t, t), x0, atol=1e-6)
    np.testing.assert_allclose(denoiser.velocity(x_t, t), target)


def test_timestep_samplers():
    t = np.sort(np.asarray(sample_timesteps(KEY, 64, "low-discrepancy")))
    assert 0 <= t[0] < 1 / 64 and np.allclose(np.diff(t), 1 / 64, atol=1e-6)  # one point per stratum
    u = np.asarray(sample_timesteps(KEY, 4096, "uniform"))
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.02
    ln = np.asarray(sample_timesteps(KEY, 4096, "logit-normal", mean=0.5, std=0.8))
    logit = np.log(ln / (1 - ln))
    assert abs(logit.mean() - 0.5) < 0.05 and abs(logit.std() - 0.8) < 0.05


def test_timestep_shift_moves_training_toward_high_noise():
    """shift s maps t -> s t / (1 + (s - 1) t): the same draws, monotone, ends fixed; s = 3 sends 0.5 to 0.75."""
    u = np.asarray(sample_timesteps(KEY, 4096, "uniform"))
    np.testing.assert_array_equal(np.asarray(sample_timesteps(KEY, 4096, "uniform", shift=1.0)), u)
    shifted = np.asarray(sample_timesteps(KEY, 4096, "uniform", shift=3.0))
    np.testing.assert_allclose(shifted, 3 * u / (1 + 2 * u), rtol=1e-6)
    assert np.all(np.argsort(shifted) == np.argsort(u)) and shifted.min() >= 0 and shifted.max() < 1
    # the share of draws above t = 0.95 (sigma > 12.7) grows from 5% to about 15%
    assert abs((u > 0.95).mean() - 0.05) < 0.01 and abs((shifted > 0.95).mean() - (1 - 0.95 / 1.1)) < 0.015


# --- guidance ----------------------------------------------------------------------------------------------

def _cond_model(calls):
    def model(x, t, cond):
        calls.append(x.shape[0])
        return x * cond["scale"][:, None, None] + t[:, None, None] + cond["bias"]

    return model


COND = {"scale": jnp.array([1.0, 2.0]), "bias": jnp.full((2, 1, 3), 0.5)}
NEG = {"scale": jnp.array([0.5]), "bias": jnp.full((1, 1, 3), -1.0)}  # batch 1, broadcast


def test_cfg_is_one_batched_call_with_negative_conditioning():
    calls = []
    model = _cond_model(calls)
    x, t = jax.random.normal(KEY, (2, 4, 3)), jnp.array([0.3, 0.3])
    out = cfg_model(model, COND, NEG, 4.0)(x, t)
    assert calls == [4]  # cond and uncond in one forward pass of batch 2B
    c = model(x, t, COND)
    u = model(x, t, jax.tree.map(lambda a: jnp.broadcast_to(a, (2,) + a.shape[1:]), NEG))
    np.testing.assert_allclose(out, u + 4.0 * (c - u), rtol=1e-6)
    assert isinstance(cfg_model(model, COND, NEG, 1.0), Conditioned)  # scale 1: no unconditional pass


def test_cfg_rescale_matches_the_reference_formula():
    torch = pytest.importorskip("torch")
    model = _cond_model([])
    x, t = jax.random.normal(KEY, (2, 4, 3)), jnp.array([0.3, 0.3])
    out = cfg_model(model, COND, NEG, 7.0, rescale=0.7)(x, t)
    # stable-audio-tools: std over dim 1 of (batch, channels, time) tensors, Bessel-corrected
    c = torch.from_numpy(np.array(model(x, t, COND))).transpose(1, 2)
    neg = jax.tree.map(lambda a: jnp.broadcast_to(a, (2,) + a.shape[1:]), NEG)
    u = torch.from_numpy(np.array(model(x, t, neg))).transpose(1, 2)
    cfg = u + (c - u) * 7.0
    ref = 0.7 * (cfg * (c.std(dim=1, keepdim=True) / cfg.std(dim=1, keepdim=True))) + 0.3 * cfg
    np.testing.assert_allclose(out, ref.transpose(1, 2).numpy(), rtol=1e-5)


def test_cfg_interval_runs_only_the_conditional_branch_outside():
    calls = []
    model = _cond_model(calls)
    guided = cfg_model(model, COND, NEG, 5.0, interval=(0.2, 0.8), objective="v")
    x = jax.random.normal(KEY, (2, 4, 3))
    t_outside = jnp.full((2,), 0.05)  # noise level sin(pi t / 2) = 0.078 < 0.2
    np.testing.assert_allclose(jax.jit(guided)(x, t_outside), model(x, t_outside, COND), rtol=1e-6)
    t_inside = jnp.full((2,), 0.4)
    assert not np.allclose(jax.jit(guided)(x, t_inside), model(x, t_inside, COND))
    # a bfloat16 model keeps its dtype in both branches (lax.cond needs them to agree)
    bf16 = cfg_model(lambda x, t, c: model(x, t, c).astype(jnp.bfloat16), COND, NEG, 5.0, rescale=0.5,
                     interval=(0.2, 0.8))
    assert jax.jit(bf16)(x, t_inside).dtype == jnp.bfloat16


# --- the jitted loop ---------------------------------------------------------------------------------------

def test_sampling_loop_is_traced_once():
    traces = []

    def model(x, t, cond):
        traces.append(1)  # runs only while tracing
        return jnp.tanh(x * cond[:, None, None]) - x * t[:, None, None]

    sigmas = get_sigmas("polyexponential", 6, sigma_min=0.1, sigma_max=10.0)

    def run(seed, cond, scale):
        denoise = v_denoiser(cfg_model(model, cond, jnp.zeros(1), scale, rescale=0.5))
        x = jax.random.normal(jax.random.key(seed), (2, 5, 3)) * sigmas[0]
        return sample(denoise, x, sigmas, "dpmpp-3m-sde", key=jax.random.key(seed))

    first = run(1, jnp.array([1.0, 2.0]), 6.0)
    traced = len(traces)
    assert traced == 1  # one denoiser call site in the scan body, traced once
    second = run(2, jnp.array([3.0, 1.0]), 4.0)  # new noise, new key, new conditioning, new CFG scale
    assert len(traces) == traced, "sampling again with new values recompiled the loop"
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(run(1, jnp.array([1.0, 2.0]), 6.0), first)  # same seed, same result


def test_sde_samplers_at_eta_zero_equal_their_deterministic_forms():
    den = v_denoiser(lambda x, t: jnp.sin(x) * (1 - t[:, None, None]))
    sigmas = get_sigmas("polyexponential", 6, sigma_min=0.05, sigma_max=20.0)
    x = jax.random.normal(KEY, (2, 4, 3)) * sigmas[0]
    run = lambda name, **kw: np.asarray(sample(den, x, sigmas, name, key=jax.random.key(5), **kw))
    np.testing.assert_array_equal(run("euler-ancestral", eta=0.0), run("euler"))
    np.testing.assert_allclose(run("dpmpp-2m-sde", eta=0.0), run("dpmpp-2m"), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(run("v-ddim"), run("euler"), rtol=1e-5, atol=1e-6)  # DDIM = Euler in sigma
    # stochastic DDIM is Euler-ancestral with the same eta (same noise, same variance split)
    np.testing.assert_allclose(run("v-ddim", eta=0.6), run("euler-ancestral", eta=0.6), rtol=1e-4, atol=1e-5)


# Data ~ N(MU, S^2) per channel: the exact answer of sampling is known. With the exact denoiser the only
# errors left are discretisation (first-order methods need more steps: about -9% std at 50 steps,
# -4% at 100 for euler-ancestral) and sampling error (32768 draws per channel: ~0.006 on the mean of the
# S = 1 channel, ~0.4% on the std). Seeds are fixed, so the test is deterministic.
MU, S = jnp.array([-1.0, 0.5]), jnp.array([0.2, 1.0])
STAT_CASES = {  # name -> (sampler, options, steps)
    "euler-ancestral": ("euler-ancestral", {}, 200),
    "euler-churn": ("euler", {"s_churn": 10.0}, 200),
    "v-ddim-eta1": ("v-ddim", {"eta": 1.0}, 200),
    "dpmpp-2s-ancestral": ("dpmpp-2s-ancestral", {}, 50),
    "dpmpp-2m-sde": ("dpmpp-2m-sde", {}, 50),
    "dpmpp-3m-sde": ("dpmpp-3m-sde", {}, 50),  # Stable Audio Open's default
}
MEAN_TOL, STD_TOL = 0.03, 0.03  # absolute on the mean, relative on the std


def check_gaussian(out):
    flat = np.asarray(out, np.float64).reshape(-1, 2)
    np.testing.assert_allclose(flat.mean(0), MU, atol=MEAN_TOL, err_msg="mean")
    np.testing.assert_allclose(flat.std(0), S, rtol=STD_TOL, err_msg="std")


@pytest.mark.parametrize("case", list(STAT_CASES))
def test_stochastic_samplers_recover_a_gaussian(case):
    name, options, steps = STAT_CASES[case]
    sigmas = get_sigmas("polyexponential", steps, sigma_min=0.01, sigma_max=80.0)
    x = exact_start(jax.random.key(11), (512, 64, 2), float(sigmas[0]), MU, S)
    check_gaussian(sample(gaussian_denoiser(MU, S), x, sigmas, name, key=jax.random.key(12), **options))


def test_pingpong_recovers_a_gaussian_with_a_distilled_model():
    """Ping-pong is for distilled (consistency) models that map x_t straight to a data sample; for
    Gaussian data on rectified flow (x_t = (1 - t) x0 + t eps) that map is the probability-flow ODE's:
    x0 = MU + (x_t - a MU) S / sqrt(a^2 S^2 + t^2), a = 1 - t. Each re-noised step then has the exact
    marginal, so 8 steps suffice. (With an MMSE denoiser ping-pong under-disperses.)"""

    def consistency(x, t):
        t = jnp.reshape(t, (-1, 1, 1))
        a = 1 - t
        return MU + (x - a * MU) * S / jnp.sqrt(a**2 * S**2 + t**2)

    t = get_sigmas("linear", 8)
    check_gaussian(sample(consistency, jax.random.normal(KEY, (512, 64, 2)), t, "pingpong", key=jax.random.key(3)))


# --- variations and inpainting -----------------------------------------------------------------------------

def test_variation_starts_at_init_noise_level():
    init = jax.random.normal(jax.random.key(4), (2, 6, 2))
    noise = jax.random.normal(jax.random.key(5), (2, 6, 2))
    np.testing.assert_allclose(start_latents(noise, 0.5, init), init + 0.5 * noise)
    np.testing.assert_allclose(start_latents(noise, 0.5, init, rectified_flow=True), 0.5 * init + 0.5 * noise)
    np.testing.assert_allclose(start_latents(noise, 3.0), 3.0 * noise)
    # a low init_noise_level keeps the result near the init, a high one forgets it
    den = gaussian_denoiser(MU, S)
    dist = {}
    for level in (0.05, 50.0):
        sigmas = get_sigmas("polyexponential", 10, sigma_min=0.01, sigma_max=level)
        dist[level] = float(jnp.abs(sample(den, start_latents(noise, level, init), sigmas, "dpmpp-2m") - init).mean())
    assert dist[0.05] < 0.1 < dist[50.0]


def rank_one_denoiser(n):
    """Exact x0 estimate for data c * ones(n), c ~ N(0, 1): E[c | x] = mean(x) / (1 + sigma^2 / n)."""

    def denoise(x, sigma):
        sigma = jnp.reshape(sigma, (-1, 1, 1))
        return jnp.broadcast_to(jnp.mean(x, axis=1, keepdims=True) / (1 + sigma**2 / n), x.shape)

    return denoise


@pytest.mark.parametrize("name", ["dpmpp-3m-sde", "euler"])
def test_inpainting_keeps_the_known_region_and_fills_coherently(name):
    n = 32
    c = jnp.linspace(-1.5, 1.5, 4)[:, None, None]
    known = jnp.broadcast_to(c, (4, n, 1))  # each item constant along time, as the data are
    mask = (jnp.arange(n) < n // 2).astype(jnp.float32)[None, :, None]  # first half known
    sigmas = get_sigmas("polyexponential", 30, sigma_min=0.01, sigma_max=50.0)
    x = jax.random.normal(KEY, known.shape) * sigmas[0]
    out = sample(rank_one_denoiser(n), x, sigmas, name, key=jax.random.key(9), known=known, mask=mask)
    np.testing.assert_array_equal(out[:, : n // 2], known[:, : n // 2])
    # the generated half continues the known value (unconditional samples would be independent of it)
    np.testing.assert_allclose(out[:, n // 2 :], known[:, n // 2 :], atol=0.1)


@pytest.mark.parametrize("name", ["dpmpp-3m-sde", "euler"])
def test_resampling_passes_keep_the_known_region_and_draw_their_own_noise(name):
    """RePaint's resampling: 3 passes per step keep the known half exactly, still continue it coherently,
    and differ from one pass (each pass re-noises); one pass is the plain step, bit for bit."""
    n = 32
    known = jnp.broadcast_to(jnp.linspace(-1.5, 1.5, 4)[:, None, None], (4, n, 1))
    mask = (jnp.arange(n) < n // 2).astype(jnp.float32)[None, :, None]
    sigmas = get_sigmas("polyexponential", 12, sigma_min=0.01, sigma_max=50.0)
    x = jax.random.normal(KEY, known.shape) * sigmas[0]
    run = lambda passes: sample(rank_one_denoiser(n), x, sigmas, name, key=jax.random.key(9), known=known,
                                mask=mask, resample_passes=passes)
    plain = sample(rank_one_denoiser(n), x, sigmas, name, key=jax.random.key(9), known=known, mask=mask)
    np.testing.assert_array_equal(run(1), plain)
    out = run(3)
    np.testing.assert_array_equal(out[:, : n // 2], known[:, : n // 2])
    np.testing.assert_allclose(out[:, n // 2 :], known[:, n // 2 :], atol=0.1)
    assert not np.array_equal(out, plain)


@pytest.mark.parametrize("passes", [0, -1, 1.5, True])
def test_resampling_passes_must_be_a_positive_integer(passes):
    x = jnp.ones((1, 4, 1))
    with pytest.raises(ValueError, match="resample_passes must be an integer >= 1"):
        sample(lambda x, s: x, x, get_sigmas("karras", 3), "euler", key=KEY, known=x, mask=x, resample_passes=passes)


def test_resampling_needs_inpainting():
    with pytest.raises(ValueError, match="give known and mask"):
        sample(lambda x, s: x, jnp.ones((1, 4, 1)), get_sigmas("karras", 3), "euler", key=KEY, resample_passes=2)


# --- bad input ---------------------------------------------------------------------------------------------

def test_unknown_sampler_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown sampler 'dpmpp-9m'.*dpmpp-2m.*dpmpp-3m-sde.*pingpong"):
        sample(lambda x, s: x, jnp.ones((1, 2)), get_sigmas("karras", 3), "dpmpp-9m")


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_steps_below_one_or_not_an_integer(steps):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        get_sigmas("polyexponential", steps, sigma_min=0.01, sigma_max=100.0)


@pytest.mark.parametrize("kind", ["polyexponential", "exponential", "karras"])
def test_sigma_min_not_below_sigma_max(kind):
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        get_sigmas(kind, 10, sigma_min=100.0, sigma_max=100.0)
    with pytest.raises(ValueError, match="sigma_min must be > 0"):
        get_sigmas(kind, 10, sigma_min=0.0, sigma_max=1.0)


@pytest.mark.parametrize("scale", [math.inf, -math.inf, math.nan])
def test_non_finite_cfg_scale(scale):
    with pytest.raises(ValueError, match="cfg scale must be a finite number"):
        cfg_model(lambda x, t, c: x, jnp.ones(1), jnp.zeros(1), scale)


def test_other_bad_input_is_explained():
    den = lambda x, s: x * 0
    sigmas = get_sigmas("polyexponential", 4, sigma_min=0.1, sigma_max=10.0)
    x = jnp.ones((1, 3))
    cases = [
        (lambda: get_sigmas("cosinus", 4), "unknown sigma schedule 'cosinus'; valid schedules: polyexponential"),
        (lambda: get_sigmas("linear", 4, sigma_max=2.0), "sigma_max must be <= 1"),
        (lambda: get_sigmas("exponential", 4, rho=2.0), "rho applies only to"),
        (lambda: sample(den, x, sigmas[:1], "euler"), r"steps \+ 1 >= 2"),
        (lambda: sample(den, x, sigmas[::-1], "euler"), "strictly decreasing"),
        (lambda: sample(den, x, sigmas, "dpmpp-2m-sde"), r"needs key=jax.random.key\(seed\)"),
        (lambda: sample(den, x, sigmas, "dpmpp-2m-sde", key=3), r"key=jax.random.key\(3\)"),
        (lambda: sample(den, x, sigmas, "dpmpp-2m", eta=1.0), "takes no option.*eta; its options: none"),
        (lambda: sample(den, x, sigmas, "dpmpp-2m-sde", key=KEY, eta=-1.0), "eta must be finite and >= 0"),
        (lambda: sample(den, x, sigmas, "rk4"), "wrap the velocity model with rf_denoiser"),
        (lambda: sample(rf_denoiser(den), x, sigmas, "rk4"), "sigmas\\[0\\] = 10.0 > 1"),
        (lambda: sample(den, x, sigmas, "euler", known=x), "needs both `known`"),
        (lambda: sample(den, x, sigmas, "euler", key=KEY, known=x, mask=jnp.ones(4)), "does not broadcast"),
        (lambda: sample(den, jnp.ones((1, 3), jnp.int32), sigmas, "euler"), "floating-point"),
        (lambda: cfg_model(den, jnp.ones(1), jnp.zeros(1), 3.0, rescale=1.5), r"rescale \(phi\) must be"),
        (lambda: cfg_model(den, jnp.ones(1), jnp.zeros(1), 3.0, interval=(0.9, 0.1)), "lo <= hi"),
        (lambda: cfg_model(den, {"a": 1}, {"b": 1}, 3.0), "same structure"),
        (lambda: sample_timesteps(KEY, 4, "sobol"), "valid samplers: uniform, low-discrepancy, logit-normal"),
        (lambda: sample_timesteps(KEY, 4, "uniform", shift=0.0), "shift must be a finite number > 0"),
        (lambda: noised_and_target("eps", x, x, jnp.ones(1)), "valid objectives: v, rectified_flow"),
    ]
    for fn, message in cases:
        with pytest.raises(ValueError, match=message):
            fn()


def _run_sampler(name, dtype, inpaint):
    spec = SAMPLERS[name]
    den = rf_denoiser(lambda x, t: jnp.tanh(x) - x) if spec.rectified_flow else v_denoiser(
        lambda x, t: jnp.tanh(x) * t[:, None])
    sigmas = get_sigmas("linear", 3) if spec.rectified_flow else get_sigmas("karras", 3, sigma_max=10.0)
    x = (jax.random.normal(KEY, (2, 3)) * sigmas[0]).astype(dtype)
    extra = dict(known=jnp.ones((2, 3)), mask=jnp.array([1.0, 0.0, 0.0])) if inpaint else {}
    out = sample(den, x, sigmas, name, key=KEY, **extra)
    assert out.shape == (2, 3) and out.dtype == dtype and bool(jnp.all(jnp.isfinite(out))), name
    if inpaint:
        np.testing.assert_array_equal(np.asarray(out[:, 0], np.float32), 1.0)


# The other samplers run in the statistics and equivalence tests above.
@pytest.mark.parametrize("name", ["heun", "dpm-2", "lms", "rk4"])
def test_remaining_samplers_run(name):
    _run_sampler(name, jnp.float32, inpaint=False)


@pytest.mark.parametrize("name", ["dpmpp-3m-sde", "heun", "rk4"])
def test_bfloat16_latents_with_inpainting(name):
    _run_sampler(name, jnp.bfloat16, inpaint=True)


@pytest.mark.slow
@pytest.mark.parametrize("dtype,inpaint", [(jnp.float32, False), (jnp.bfloat16, True)])
def test_every_registered_sampler_runs(dtype, inpaint):
    for name in SAMPLERS:
        _run_sampler(name, dtype, inpaint)
