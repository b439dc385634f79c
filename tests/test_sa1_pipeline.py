"""Stable Audio 1.0 (the paper's family) through `StableAudio`: a tiny random model saved in the
stable-audio-tools layout (U-Net `model.model.*`, integer timing tables, DAC-style VAE
`pretransform.model.*`, paper-style model_config.json) plus a transformers CLAP folder, against a
PyTorch reference built from the same parts: CLAP text layer -2 -> 79-token context -> UNetCFG1d
(batched CFG with the learned null embedding, rescale phi 0.4) -> k-diffusion -> VAE decode."""

import json

import numpy as np
import pytest
import torch

from sa_jax import StableAudio
from sa_jax.testing.kdiffusion_ref import kdiffusion
from sa_jax.testing.reference import import_reference

SAMPLE_RATE = 1000          # a small rate keeps a 1 s window tiny
FRAMES = 64                 # latent frames in the window
RATIO = 16
UNET = dict(in_channels=8, channels=32, multipliers=[1, 1], factors=[2], num_blocks=[1], attentions=[1, 1],
            context_embedding_features=32, context_embedding_max_length=79, attention_heads=2,
            attention_multiplier=2, resnet_groups=4, use_context_time=True)
VAE = {"encoder": {"type": "dac", "config": {"in_channels": 2, "latent_dim": 16, "d_model": 4, "strides": [2, 4, 2]}},
       "decoder": {"type": "dac", "config": {"out_channels": 2, "latent_dim": 8, "channels": 16, "rates": [2, 4, 2]}},
       "bottleneck": {"type": "vae"}, "latent_dim": 8, "downsampling_ratio": RATIO, "io_channels": 2}


def model_config(clap_path):
    return {"model_type": "diffusion_cond", "sample_size": FRAMES * RATIO, "sample_rate": SAMPLE_RATE,
            "audio_channels": 2,
            "model": {"pretransform": {"type": "autoencoder", "iterate_batch": True, "config": VAE},
                      "conditioning": {"configs": [
                          {"id": "prompt", "type": "clap_text",
                           "config": {"clap_ckpt_path": str(clap_path), "use_text_features": True,
                                      "feature_layer_ix": -2, "audio_model_type": "HTSAT-base", "enable_fusion": True}},
                          {"id": "seconds_start", "type": "int", "config": {"min_val": 0, "max_val": 512}},
                          {"id": "seconds_total", "type": "int", "config": {"min_val": 0, "max_val": 512}}],
                          "cond_dim": 32},
                      "diffusion": {"type": "adp_cfg_1d", "cross_attention_cond_ids":
                                    ["prompt", "seconds_start", "seconds_total"], "config": UNET},
                      "io_channels": 8}}


@pytest.fixture(scope="module")
def sa1_model(tmp_path_factory):
    from safetensors.torch import save_file
    from test_clap_api import clap_folder

    root = tmp_path_factory.mktemp("sa1")
    clap, tokenizer, clap_dir = clap_folder(str(root))
    adp = import_reference("stable_audio_tools.models.adp")
    sat_ae = import_reference("stable_audio_tools.models.autoencoders")
    cond = import_reference("stable_audio_tools.models.conditioners")
    torch.manual_seed(0)
    unet = adp.UNetCFG1d(**UNET).eval()
    start, total = cond.IntConditioner(32, 0, 512), cond.IntConditioner(32, 0, 512)
    vae = sat_ae.create_autoencoder_from_config({"sample_rate": SAMPLE_RATE, "model": VAE}).eval()
    state = {f"model.model.{k}": v for k, v in unet.state_dict().items()}
    state |= {f"conditioner.conditioners.seconds_start.{k}": v for k, v in start.state_dict().items()}
    state |= {f"conditioner.conditioners.seconds_total.{k}": v for k, v in total.state_dict().items()}
    state |= {f"pretransform.model.{k}": v for k, v in vae.state_dict().items()}
    folder = root / "sa1"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "model_config.json").write_text(json.dumps(model_config(clap_dir)))
    return folder, clap_dir, dict(clap=clap, tokenizer=tokenizer, unet=unet, start=start, total=total, vae=vae)


def reference_audio(parts, prompts, seconds_start, seconds_total, noise, steps, cfg, sigma_min, sigma_max):
    K = kdiffusion()
    enc = parts["tokenizer"](prompts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        text = parts["clap"].text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                        output_hidden_states=True).hidden_states[-2]
        b = len(prompts)
        s_emb, s_mask = parts["start"]([seconds_start] * b, device="cpu")
        t_emb, t_mask = parts["total"]([seconds_total] * b, device="cpu")
        context = torch.cat([text, s_emb, t_emb], dim=1)
        mask = torch.cat([enc["attention_mask"], s_mask, t_mask], dim=1).bool()

        class Inner(torch.nn.Module):
            def forward(self, x, t):
                return parts["unet"](x, t, embedding=context, embedding_mask=mask, embedding_scale=cfg,
                                     batch_cfg=True, rescale_cfg=True)

        denoiser = K.external.VDenoiser(Inner())
        sigmas = K.sampling.get_sigmas_polyexponential(steps, sigma_min, sigma_max, rho=1.0)
        latents = K.sampling.sample_dpmpp_2m(denoiser, torch.from_numpy(noise) * sigmas[0], sigmas, disable=True)
        audio = parts["vae"].decode(latents).numpy()
    return audio[:, :, : int(round(seconds_total * SAMPLE_RATE))]


def test_generation_matches_the_reference(sa1_model):
    folder, clap_dir, parts = sa1_model
    sa = StableAudio.load(folder, clap=clap_dir)
    assert sa.family.name == "sa1" and sa.sample_rate == SAMPLE_RATE
    prompts = ["a warm synth pad", "dry snare hits with room"]
    noise = np.random.default_rng(0).standard_normal((2, 8, FRAMES)).astype(np.float32)
    kwargs = dict(seconds_start=0, seconds_total=1, steps=6, cfg_scale=6.0, sigma_min=0.3, sigma_max=80.0)
    ours = sa.generate(prompts, sampler="dpmpp-2m", seed=0, init_noise=noise, **kwargs)
    want = reference_audio(parts, prompts, kwargs["seconds_start"], kwargs["seconds_total"], noise, kwargs["steps"],
                           kwargs["cfg_scale"], kwargs["sigma_min"], kwargs["sigma_max"])
    assert ours.shape == want.shape == (2, 2, SAMPLE_RATE)
    err = float(np.abs(ours - want).max() / np.abs(want).max())
    print(f"SA1 end to end vs torch + k-diffusion: relative error {err:.1e}")
    assert err < 2e-4


def test_convert_round_trip_and_timing_range(sa1_model, tmp_path):
    folder, clap_dir, _ = sa1_model
    sa = StableAudio.load(folder, clap=clap_dir)
    noise = np.random.default_rng(1).standard_normal((1, 8, FRAMES)).astype(np.float32)
    args = dict(seconds_total=1, steps=3, sampler="dpmpp-2m", init_noise=noise)
    first = sa.generate(["bells"], **args)
    again = StableAudio.load(sa.save(tmp_path / "sa1-jax")).generate(["bells"], **args)
    np.testing.assert_array_equal(first, again)
    with pytest.raises(ValueError, match=r"outside this model's timing embeddings \(0..512 s\)"):
        sa.family.condition(["bells"], seconds_start=600, seconds_total=1)
    # The CLAP model is not in the checkpoint: without clap= and a config path that exists, say so.
    moved = tmp_path / "no-clap"
    moved.mkdir()
    (moved / "model.safetensors").symlink_to(folder / "model.safetensors")
    config = json.loads((folder / "model_config.json").read_text())
    config["model"]["conditioning"]["configs"][0]["config"]["clap_ckpt_path"] = "/nowhere/clap.ckpt"
    (moved / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="pass clap="):
        StableAudio.load(moved)


def test_command_line_converts_and_samples(sa1_model, tmp_path):
    from sa_jax.cli import main

    folder, clap_dir, _ = sa1_model
    out = tmp_path / "sa1-jax"
    assert main(["convert", str(folder), str(out), "--clap", str(clap_dir)]) == 0
    assert main(["sample", "soft rain", "--model", str(out), "--seconds-total", "1", "--steps", "2",
                 "--out", str(tmp_path / "wav")]) == 0
    assert sorted(p.suffix for p in (tmp_path / "wav").iterdir()) == [".png", ".wav"]
