"""Inpainting-trained checkpoints: a tiny random stable-audio-tools `diffusion_cond_inpaint` model
(a DiT taking `inpaint_mask` and `inpaint_masked_input` as extra input channels), saved as a release
folder and loaded by sa-jax's own importer, samples what the reference's
`generate_diffusion_cond_inpaint` samples from the same noise, the same known latents and mask;
it round-trips through an sa-jax checkpoint; models without those inputs refuse them."""

from __future__ import annotations

import copy
import json
from unittest import mock

import numpy as np
import pytest

from sa_jax.errors import ConfigError
from sa_jax.testing.kdiffusion_ref import kdiffusion
from sa_jax.testing.sat_ref import SAO_MODEL_CONFIG, rel_err

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
SAMPLE_RATE = 512           # a fake rate so the 512-sample window is 1 s
FRAMES = 32                 # latent frames in the window
DOWN = 16                   # the tiny VAE's downsampling ratio
IO = 8                      # latent channels
MAX_TOKENS = 12
PROMPTS = ["128 bpm tech house drum loop", "rain on a roof"]
STEPS = 8
KEEP = (slice(0, 10), slice(24, FRAMES))   # latent frames kept; [10, 24) is generated


def _config():
    config = json.loads(json.dumps(SAO_MODEL_CONFIG))
    config.update(model_type="diffusion_cond_inpaint", sample_size=FRAMES * DOWN, sample_rate=SAMPLE_RATE)
    config["model"]["io_channels"] = IO
    diffusion = config["model"]["diffusion"]
    diffusion["input_concat_ids"] = ["inpaint_mask", "inpaint_masked_input"]
    diffusion["config"].update(io_channels=IO, embed_dim=256, depth=2, num_heads=4, cond_token_dim=64,
                               global_cond_dim=128, input_concat_dim=1 + IO)
    config["model"]["conditioning"]["cond_dim"] = 64
    config["model"]["conditioning"]["configs"][0]["config"].update(t5_model_name="t5-small", max_length=MAX_TOKENS)
    return config


@pytest.fixture(scope="module")
def inpaint_folder(tmp_path_factory):
    """model_config.json + model.safetensors of a tiny diffusion_cond_inpaint model built by
    stable-audio-tools' own factory, with its (tiny, random) T5 in t5/."""
    from test_pipeline import tiny_sat_release

    root = tmp_path_factory.mktemp("sat-inpaint") / "sao-inpaint-tiny"
    return root, tiny_sat_release(root, _config(), seed=21)   # the DiT's input-concat channels included


def _known_and_mask():
    rng = np.random.default_rng(3)
    known = rng.standard_normal((1, IO, FRAMES)).astype(np.float32)
    mask = np.zeros((1, FRAMES), np.float32)
    for s in KEEP:
        mask[:, s] = 1.0
    return known, mask


def _noise():
    torch.manual_seed(4)   # generate_diffusion_cond_inpaint's first draw after seeding is the noise
    return torch.randn([len(PROMPTS), IO, FRAMES]).numpy()


def inpaint_conditioned(sa, prompts, known, mask, noise, steps=STEPS, cfg_scale=7.0, sampler="dpmpp-2m",
                        seconds_start=0.25, seconds_total=1.0):
    """sa-jax's inpainting-conditioned generation, as the reference's generate_diffusion_cond_inpaint:
    the family's conditioning with `inpaint_inputs(known, mask)` merged into both CFG branches, v
    sampling from `noise`, no RePaint replacement; decoded by the model's autoencoder."""
    import jax.numpy as jnp

    from sa_jax.diffusion import cfg_model, get_sigmas, sample, v_denoiser

    fam = sa.family
    cond = fam.condition(prompts, seconds_start, seconds_total)
    uncond = fam.unconditional(cond)
    extra = fam.inpaint_inputs(np.broadcast_to(known, (len(prompts),) + known.shape[1:]), mask[:, None, :])
    cond, uncond = {**cond, **extra}, {**uncond, **extra}
    d = sa.defaults
    sigmas = get_sigmas("polyexponential", steps, d.sigma_min, d.sigma_max, d.rho)
    guided = cfg_model(fam.network(), cond, uncond, cfg_scale, rescale=fam.cfg_rescale, rescale_axis=1,
                       objective=fam.objective)
    latents = sample(v_denoiser(guided), jnp.asarray(noise) * sigmas[0], sigmas, sampler)
    return np.asarray(sa.autoencoder.decode(np.asarray(latents)), np.float32)


def test_inpaint_model_matches_generate_diffusion_cond_inpaint(inpaint_folder):
    """The reference's own generation (its conditioners, inpaint inputs built from the mask and the
    encoded audio, DiT CFG, k-diffusion dpmpp-2m, pretransform decode). Its encoder draws from the
    VAE posterior, so it is patched to return the known latents that sa-jax is given too."""
    from sa_jax import StableAudio
    from sa_jax.testing.sat_ref import sat_module

    kdiffusion()
    root, model = inpaint_folder
    generation = sat_module("inference.generation")
    sa = StableAudio.load(root)
    assert sa.family.has_inpaint_inputs and sa.family.dit_config.input_concat_dim == 1 + IO
    known, mask = _known_and_mask()
    sample_mask = torch.from_numpy(np.repeat(mask, DOWN, axis=1)).expand(len(PROMPTS), -1)  # per audio sample
    conditioning = [{"prompt": p, "seconds_start": 0.25, "seconds_total": 1.0} for p in PROMPTS]
    with torch.no_grad(), mock.patch.object(model.pretransform, "encode", lambda audio: torch.from_numpy(known)):
        ref = generation.generate_diffusion_cond_inpaint(
            model, steps=STEPS, cfg_scale=7.0, conditioning=conditioning, batch_size=len(PROMPTS),
            sample_size=FRAMES * DOWN, seed=4, device="cpu", inpaint_audio=(SAMPLE_RATE, torch.zeros(2, FRAMES * DOWN)),
            inpaint_mask=sample_mask, sampler_type="dpmpp-2m", sigma_min=0.3, sigma_max=500.0).numpy()
    ours = inpaint_conditioned(sa, PROMPTS, known, mask, _noise())
    err = rel_err(ours, ref)
    print(f"diffusion_cond_inpaint ({STEPS} steps dpmpp-2m, cfg 7) vs generate_diffusion_cond_inpaint: "
          f"waveform relative error {err:.2e}")
    assert err < TOL
    # the inputs matter: with nothing known the model samples something else
    other = inpaint_conditioned(sa, PROMPTS, known, np.zeros_like(mask), _noise())
    assert rel_err(other, ref) > 1e-2


def test_save_load_keeps_the_inpaint_inputs(inpaint_folder, tmp_path):
    from sa_jax import StableAudio
    from sa_jax.config import read_yaml

    root, _ = inpaint_folder
    sa = StableAudio.load(root)
    out = sa.save(tmp_path / "ckpt")
    saved = read_yaml(out / "config.yaml")
    assert saved["conditioning"]["input_concat_ids"] == ["inpaint_mask", "inpaint_masked_input"]
    assert saved["dit"]["input_concat_dim"] == 1 + IO
    again = StableAudio.load(out)
    assert again.family.has_inpaint_inputs
    known, mask = _known_and_mask()
    a = sa.family.inpaint_inputs(known, mask[:, None, :])["input_concat"]
    b = again.family.inpaint_inputs(known, mask[:, None, :])["input_concat"]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.shape == (1, 1 + IO, FRAMES)
    np.testing.assert_array_equal(np.asarray(a[:, 0]), mask)                      # inpaint_mask first
    np.testing.assert_array_equal(np.asarray(a[:, 1:]), known * mask[:, None, :])  # then the masked input
    import jax
    leaves = jax.tree_util.tree_leaves
    assert all(np.array_equal(x, y) for x, y in zip(leaves(sa.family.dit_params), leaves(again.family.dit_params)))


def test_models_without_inpaint_inputs_refuse_them(inpaint_folder):
    from sa_jax import StableAudio
    from sa_jax.families import Family
    from sa_jax.families.sa1 import SA1Family

    root, _ = inpaint_folder
    sa = StableAudio.load(root)
    plain = copy.copy(sa.family)   # the same SAO family as a plain diffusion_cond checkpoint has it
    plain.cond_config = plain.cond_config.replace(input_concat_ids=())
    known, mask = _known_and_mask()
    assert not plain.has_inpaint_inputs
    with pytest.raises(ConfigError, match="no inpainting inputs.*diffusion_cond_inpaint"):
        plain.inpaint_inputs(known, mask)
    assert SA1Family.has_inpaint_inputs is False and SA1Family.inpaint_inputs is Family.inpaint_inputs
    with pytest.raises(ValueError, match="does not broadcast"):
        sa.family.inpaint_inputs(known, np.ones((1, 1, FRAMES + 1)))


def test_importer_checks_the_input_concat_channels():
    from sa_jax.checkpoints import sao

    dit, cond, _ = sao.sat_model_configs(_config())
    assert dit.input_concat_dim == 1 + IO and cond.input_concat_ids == ("inpaint_mask", "inpaint_masked_input")
    bad = _config()
    bad["model"]["diffusion"]["config"]["input_concat_dim"] = IO
    with pytest.raises(ConfigError, match="input_concat_dim is 8 but input_concat_ids"):
        sao.sat_model_configs(bad)
    bad = _config()
    bad["model"]["diffusion"]["input_concat_ids"] = ["inpaint_mask", "audio"]
    with pytest.raises(ConfigError, match="input_concat_ids"):
        sao.sat_model_configs(bad)


def test_inpaint_passes_the_inputs_to_an_inpainting_model(inpaint_folder):
    """`StableAudio.inpaint` on an inpainting-trained checkpoint gives the network the mask and the
    known latents (besides RePaint's replacement): the same call with the inputs withheld (the
    network then sees an all-zero mask and input) gives other audio."""
    from sa_jax import StableAudio

    root, _ = inpaint_folder
    sa = StableAudio.load(root)
    plain = copy.copy(sa.family)
    plain.cond_config = plain.cond_config.replace(input_concat_ids=())   # the network then sees zeros
    without = StableAudio(plain, sa.autoencoder, sa.window_samples, sa.defaults)
    audio = 0.3 * np.sin(np.linspace(0, 200, FRAMES * DOWN, dtype=np.float32))[None].repeat(2, 0)
    kw = dict(start=0.3, end=0.6, steps=4, seed=1, sampler="dpmpp-2m")
    y = sa.inpaint(audio, SAMPLE_RATE, PROMPTS[:1], **kw)
    z = without.inpaint(audio, SAMPLE_RATE, PROMPTS[:1], **kw)
    assert y.shape == z.shape == (1, 2, FRAMES * DOWN) and np.all(np.isfinite(y))
    assert rel_err(y, z) > 1e-3
