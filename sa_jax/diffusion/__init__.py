"""Model-independent diffusion machinery: training objectives, sigma schedules, denoiser wrappers,
the k-diffusion sampler family (one jitted scan per run) and classifier-free guidance.

    from sa_jax.diffusion import get_sigmas, sample
    sigmas = get_sigmas("polyexponential", steps=50, sigma_min=0.01, sigma_max=100.0, rho=1.0)
    x0 = sample(denoise, noise * sigmas[0], sigmas, sampler="dpmpp-2m", key=jax.random.key(0))
"""

from .guidance import Conditioned, Guided, cfg_model
from .objectives import (
    OBJECTIVES,
    TIMESTEP_SAMPLERS,
    diffusion_loss,
    noised_and_target,
    sample_timesteps,
    sigma_to_t,
    t_to_sigma,
    v_alpha_sigma,
)
from .samplers import SAMPLER_ALIASES, SAMPLERS, sample, start_latents, step_noise
from .schedules import SCHEDULES, get_sigmas
from .wrappers import RFDenoiser, VDenoiser, rf_denoiser, v_denoiser

__all__ = [
    "get_sigmas", "sample", "start_latents", "step_noise", "SAMPLERS", "SAMPLER_ALIASES", "SCHEDULES",
    "v_denoiser", "rf_denoiser", "VDenoiser", "RFDenoiser", "cfg_model", "Guided", "Conditioned",
    "noised_and_target", "diffusion_loss", "sample_timesteps", "v_alpha_sigma", "t_to_sigma", "sigma_to_t",
    "OBJECTIVES", "TIMESTEP_SAMPLERS",
]
