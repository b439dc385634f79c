"""Parity of the Flax autoencoders with the PyTorch references, random weights, float32.

Weights go through our own importers. Error is max|ours - ref| / max|ref|, bound 1e-4. Weight-norm
magnitudes and Snake parameters are perturbed away from their initial values so that a mix-up of
g and ||v||, or of alpha and beta, cannot hide.
"""

import numpy as np
import pytest
import torch

from sa_jax import Autoencoder
from sa_jax.checkpoints import autoencoder as importer
from sa_jax.models.autoencoder import vae_kl, vae_stats
from sa_jax.testing.reference import import_reference

TOL = 1e-4


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def perturb(module: torch.nn.Module, seed: int = 0) -> dict:
    """Move weight-norm gains and Snake parameters off their init; return a numpy state dict."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight_g"):
                p.mul_(0.5 + torch.rand(p.shape, generator=gen))
            elif name.endswith(("alpha", "beta")):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def audio(batch, samples, seed=0, channels=2):
    return np.random.default_rng(seed).uniform(-0.8, 0.8, (batch, channels, samples)).astype(np.float32)


def small_sat_config(kind: str) -> dict:
    if kind == "oobleck":
        enc = {"type": "oobleck", "config": {"in_channels": 2, "channels": 8, "c_mults": [1, 2, 3],
                                             "strides": [2, 4, 2], "latent_dim": 16, "use_snake": True}}
        dec = {"type": "oobleck", "config": {"out_channels": 2, "channels": 8, "c_mults": [1, 2, 3],
                                             "strides": [2, 4, 2], "latent_dim": 8, "use_snake": True,
                                             "final_tanh": False}}
        ratio = 16
    else:  # the paper's DAC-style VAE, shrunk
        enc = {"type": "dac", "config": {"in_channels": 2, "latent_dim": 16, "d_model": 8, "strides": [2, 4, 2]}}
        dec = {"type": "dac", "config": {"out_channels": 2, "latent_dim": 8, "channels": 32, "rates": [2, 4, 2]}}
        ratio = 16
    return {"model_type": "autoencoder", "sample_rate": 44100, "audio_channels": 2,
            "model": {"encoder": enc, "decoder": dec, "bottleneck": {"type": "vae"}, "latent_dim": 8,
                      "downsampling_ratio": ratio, "io_channels": 2}}


def check_against(ref_encoder, ref_decoder, ae: Autoencoder, x: np.ndarray):
    """Encoder mean and std, and decoder output of the reference against ours."""
    with torch.no_grad():
        h = ref_encoder(torch.from_numpy(x))
        mean, scale = h.chunk(2, dim=1)
        std = torch.nn.functional.softplus(scale) + 1e-4
        y = ref_decoder(mean)
    errors = {"mean": rel_err(ae.encode(x), mean.numpy())}
    _, std_ours = ae._encode_stats({"params": ae.params}, x.transpose(0, 2, 1))
    errors["std"] = rel_err(np.asarray(std_ours).transpose(0, 2, 1), std.numpy())
    # Decode the reference's latents so the decoder is checked on its own.
    errors["decoder"] = rel_err(ae.decode(mean.numpy()), y.numpy())
    print("relative errors:", {k: f"{v:.1e}" for k, v in errors.items()})  # shown with pytest -s
    assert max(errors.values()) < TOL, errors


def test_oobleck_matches_diffusers_small():
    from diffusers import AutoencoderOobleck

    torch.manual_seed(0)
    cfg = dict(encoder_hidden_size=16, downsampling_ratios=[2, 4, 2], channel_multiples=[1, 2, 3],
               decoder_channels=12, decoder_input_channels=8, audio_channels=2, sampling_rate=44100)
    ref = AutoencoderOobleck(**cfg).eval()
    state = perturb(ref)
    config = importer.diffusers_config(cfg)
    ae = Autoencoder(config, importer.from_diffusers(state, config, "diffusers test model"))
    x = audio(2, 16 * 40)
    check_against(ref.encoder, ref.decoder, ae, x)
    # The diffusers posterior agrees too (its own mean/std path, not just the encoder trunk).
    with torch.no_grad():
        dist = ref.encode(torch.from_numpy(x)).latent_dist
    np.testing.assert_array_less(rel_err(ae.encode(x), dist.mean.numpy()), TOL)


@pytest.mark.parametrize("kind", ["oobleck", "dac"])
def test_matches_stable_audio_tools_small(kind):
    sat = import_reference("stable_audio_tools.models.autoencoders")
    from sa_jax.checkpoints import sat_config

    torch.manual_seed(1)
    model_config = small_sat_config(kind)
    ref = sat.create_autoencoder_from_config(model_config).eval()
    state = perturb(ref, seed=1)
    config = sat_config.autoencoder_config(model_config)
    ae = Autoencoder(config, importer.from_sat(state, config, "s-a-t test model"))
    check_against(ref.encoder, ref.decoder, ae, audio(2, 16 * 24, seed=1))


def test_whole_model_checkpoint_uses_pretransform_keys():
    """A diffusion model's file: the autoencoder is under pretransform.model.*, the rest is ignored."""
    sat = import_reference("stable_audio_tools.models.autoencoders")
    from sa_jax.checkpoints import sat_config

    torch.manual_seed(2)
    ae_config = small_sat_config("oobleck")
    ref = sat.create_autoencoder_from_config(ae_config).eval()
    state = {f"pretransform.model.{k}": v for k, v in perturb(ref, seed=2).items()}
    state["model.model.transformer.layers.0.weight"] = np.zeros((3, 3), np.float32)
    diffusion_config = {"model_type": "diffusion_cond", "sample_rate": 44100,
                        "model": {"pretransform": {"type": "autoencoder", "iterate_batch": True,
                                                   "config": ae_config["model"]}}}
    config = sat_config.autoencoder_config(diffusion_config)
    ae = Autoencoder(config, importer.from_sat(state, config, "whole model"))
    check_against(ref.encoder, ref.decoder, ae, audio(1, 16 * 20, seed=2))


def test_kl_matches_reference():
    sat = import_reference("stable_audio_tools.models.bottleneck")
    rng = np.random.default_rng(3)
    h = rng.normal(size=(2, 16, 10)).astype(np.float32)  # (B, 2D, T), reference layout
    mean, scale = torch.from_numpy(h).chunk(2, dim=1)
    _, kl_ref = sat.vae_sample(mean, scale)
    mean_j, std_j = vae_stats(h.transpose(0, 2, 1))
    assert abs(float(vae_kl(mean_j, std_j)) - float(kl_ref)) <= 1e-5 * abs(float(kl_ref))


def test_oobleck_full_sao_widths_short_clip():
    """The released SAO VAE's exact shape (2048x, 128..2048 channels) on 4 latent frames."""
    from diffusers import AutoencoderOobleck

    torch.manual_seed(4)
    ref = AutoencoderOobleck().eval()  # diffusers' defaults are Stable Audio Open's VAE
    state = perturb(ref, seed=4)
    config = importer.diffusers_config(dict(ref.config))
    assert config.downsampling_ratio == 2048 and config.latent_dim == 64
    ae = Autoencoder(config, importer.from_diffusers(state, config, "SAO-shaped VAE"))
    assert ae.num_params() == sum(v.size for v in state.values())
    check_against(ref.encoder, ref.decoder, ae, audio(1, 2048 * 4, seed=4))


def test_dac_paper_widths_short_clip():
    """Stable Audio 1.0's VAE shape (1024x, encoder 128..2048, decoder 1536) on 4 latent frames."""
    sat = import_reference("stable_audio_tools.models.autoencoders")
    from sa_jax.checkpoints import sat_config
    from sa_jax.config import load_yaml

    model_config = {"model_type": "autoencoder", "sample_rate": 44100,
                    "model": load_yaml("configs/vae_sa1.yaml")["autoencoder"]}
    torch.manual_seed(5)
    ref = sat.create_autoencoder_from_config(model_config).eval()
    state = perturb(ref, seed=5)
    config = sat_config.autoencoder_config(model_config)
    ae = Autoencoder(config, importer.from_sat(state, config, "SA1-shaped VAE"))
    check_against(ref.encoder, ref.decoder, ae, audio(1, 1024 * 4, seed=5))
