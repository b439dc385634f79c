"""Text-to-audio generation time: sa-jax's StableAudio against diffusers' StableAudioPipeline, same
random weights (one diffusers pipeline saved to disk and loaded by sa-jax), same steps, CFG on,
same machine, one run. Prints a table with the ratio.

    .venv/bin/python bench/bench_generate.py                      # SAO's shape at reduced width
    .venv/bin/python bench/bench_generate.py --steps 10 --width 128 --depth 4

"SAO-shaped at reduced width": Stable Audio Open's window (1024 latent frames of 64 channels =
47.55 s at 44.1 kHz, VAE strides 2,4,4,8,8), 128 text tokens, CFG with the batched [cond, uncond]
call and a batch of one prompt; the DiT, T5 and VAE are narrower and shallower than SAO's so a CPU
finishes. diffusers samples with its CosineDPMSolverMultistepScheduler (DPM-Solver++ 2M SDE),
sa-jax with dpmpp-2m-sde: one network call (of batch 2) per step on both sides. Both times cover
the whole call: prompt encoding, sampling and VAE decoding. sa-jax's first call also compiles;
it is reported apart; diffusers gets an untimed warm-up call too. Absolute CPU times depend on the
machine; the ratio is the comparison.

A second comparison drives the same diffusers components (T5, projection, DiT with batched [cond, uncond] CFG,
VAE) with k-diffusion's ODE sampler dpmpp-2m, as stable-audio-tools' generate_diffusion_cond does (the same
arithmetic as tests/test_pipeline.py's torch_reference), against sa-jax's dpmpp-2m: same steps, CFG, sigmas
(polyexponential 0.3 -> 500, rho 1). The issue's SAO-shaped reduced model is `--width 384 --depth 6`.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import timed


def tokenizer(vocab: int = 0):
    """A small T5 sentencepiece tokenizer built offline (no hub), padded with unused pieces to `vocab`."""
    from transformers import T5Tokenizer

    words = "drum loop tech house bpm 128 rain on a roof piano soft ambient kick snare bass".split()
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0 - 0.1 * i) for i, w in enumerate(words)]
    pieces += [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    pieces += [(f"\u2581x{i}", -20.0) for i in range(max(0, vocab - len(pieces)))]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def build_pipeline(folder: Path, width: int, depth: int, frames: int):
    import torch
    import transformers
    from diffusers import (
        AutoencoderOobleck,
        CosineDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioPipeline,
    )
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel

    torch.manual_seed(0)
    tok = tokenizer()
    tok.model_max_length = 128
    cond = width // 2
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(tok), d_model=cond, d_kv=64, d_ff=2 * cond, num_layers=2, num_heads=cond // 64,
        feed_forward_proj="relu", dropout_rate=0.0)).eval()
    proj = StableAudioProjectionModel(text_encoder_dim=cond, conditioning_dim=cond, min_value=0, max_value=512)
    heads = width // 64
    dit = StableAudioDiTModel(sample_size=frames, in_channels=64, out_channels=64, num_layers=depth,
                              attention_head_dim=64, num_attention_heads=heads,
                              num_key_value_attention_heads=max(1, heads // 2), cross_attention_dim=cond,
                              cross_attention_input_dim=cond, global_states_input_dim=2 * cond, time_proj_dim=256)
    vae = AutoencoderOobleck(encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 8, 8],
                             channel_multiples=[1, 2, 4, 8, 16], decoder_channels=16, decoder_input_channels=64,
                             audio_channels=2, sampling_rate=44100)
    pipe = StableAudioPipeline(vae=vae.eval(), text_encoder=t5, projection_model=proj.eval(), tokenizer=tok,
                               transformer=dit.eval(), scheduler=CosineDPMSolverMultistepScheduler())
    pipe.save_pretrained(folder)
    return pipe


def kdiffusion_generate(pipe, prompt: str, seconds: float, steps: int, cfg_scale: float, frames: int):
    """The diffusers components driven by k-diffusion's dpmpp-2m (prompt encoding, sampling, VAE decode)."""
    import torch
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    from sa_jax.testing.kdiffusion_ref import kdiffusion

    K = kdiffusion()
    tok, t5, proj, dit, vae = pipe.tokenizer, pipe.text_encoder, pipe.projection_model, pipe.transformer, pipe.vae
    with torch.no_grad():
        enc = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt")
        text = t5(enc.input_ids, attention_mask=enc.attention_mask)[0]
        text = proj(text_hidden_states=text).text_hidden_states * enc.attention_mask[..., None].float()
        secs = proj(start_seconds=torch.zeros(1), end_seconds=torch.full((1,), float(seconds)))
        cross = torch.cat([text, secs.seconds_start_hidden_states, secs.seconds_end_hidden_states], 1)
        glob = torch.cat([secs.seconds_start_hidden_states, secs.seconds_end_hidden_states], 2)[:, 0]
        uncond = torch.zeros_like(cross)
        rot = get_1d_rotary_pos_embed(dit.config.attention_head_dim // 2, frames + 1, use_real=True,
                                      repeat_interleave_real=False)

        def v_model(x, t):
            out = dit(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([cross, uncond]),
                      global_hidden_states=torch.cat([glob, glob])[:, None], rotary_embedding=rot,
                      return_dict=False)[0]
            c, u = out.chunk(2)
            return u + (c - u) * cfg_scale

        sigmas = K.sampling.get_sigmas_polyexponential(steps, 0.3, 500.0, 1.0)
        x = torch.randn(1, 64, frames, generator=torch.Generator().manual_seed(0)) * sigmas[0]
        latents = K.sampling.sample_dpmpp_2m(K.external.VDenoiser(v_model), x, sigmas, disable=True)
        return vae.decode(latents).sample.numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=256, help="DiT width (SAO: 1536), a multiple of 64")
    parser.add_argument("--depth", type=int, default=8, help="DiT blocks (SAO: 24)")
    parser.add_argument("--frames", type=int, default=1024, help="latent frames in the window (SAO: 1024)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import warnings

    import jax
    import torch

    warnings.filterwarnings("ignore", module="torchsde")   # its Brownian interval warns at every call
    logging.getLogger("sa_jax").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    from sa_jax import StableAudio

    prompt = "128 bpm tech house drum loop"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pipeline"
        pipe = build_pipeline(folder, args.width, args.depth, args.frames)
        sa = StableAudio.load(folder)
        seconds = sa.window_seconds

        def ours():
            return sa.generate([prompt], seconds_total=seconds, steps=args.steps, cfg_scale=7.0,
                               sampler="dpmpp-2m-sde", seed=0)

        def ours_ode():
            return sa.generate([prompt], seconds_total=seconds, steps=args.steps, cfg_scale=7.0,
                               sampler="dpmpp-2m", sigma_min=0.3, sigma_max=500.0, rho=1.0, seed=0)

        def kdiff():
            return kdiffusion_generate(pipe, prompt, seconds, args.steps, 7.0, args.frames)

        def theirs():
            with torch.no_grad():
                return pipe(prompt, num_inference_steps=args.steps, guidance_scale=7.0, audio_end_in_s=seconds,
                            generator=torch.Generator().manual_seed(0)).audios

        start = time.perf_counter()
        audio = ours()
        first = time.perf_counter() - start
        assert audio.shape == (1, 2, sa.window_samples) and np.all(np.isfinite(audio))
        t_ours = timed(ours, args.repeats)
        pipe.set_progress_bar_config(disable=True)
        theirs()   # warm-up, as sa-jax's first call
        t_theirs = timed(theirs, args.repeats)
        ours_ode()   # compiles the dpmpp-2m loop
        t_ode = timed(ours_ode, args.repeats)
        kdiff()
        t_kdiff = timed(kdiff, args.repeats)
        decode_path = sa.autoencoder.decode_chunk_frames((1, 64, args.frames)) if hasattr(
            sa.autoencoder, "decode_chunk_frames") else 128

    n_params = sum(p.numel() for p in pipe.transformer.parameters())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; jax {jax.__version__} "
          f"({jax.devices()[0].platform}), torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"DiT width {args.width}, depth {args.depth} ({n_params / 1e6:.1f}M params), {args.frames} latent "
          f"frames ({seconds:.2f} s audio), 128 text tokens, CFG 7 (batch 2 per call), {args.steps} steps\n")
    print("| | seconds per generation | steps/s |")
    print("|---|---|---|")
    print(f"| sa-jax, first call (includes compile) | {first:.2f} | {args.steps / first:.2f} |")
    print(f"| sa-jax | {t_ours:.2f} | {args.steps / t_ours:.2f} |")
    print(f"| diffusers StableAudioPipeline | {t_theirs:.2f} | {args.steps / t_theirs:.2f} |")
    print(f"| sa-jax, dpmpp-2m | {t_ode:.2f} | {args.steps / t_ode:.2f} |")
    print(f"| diffusers components + k-diffusion dpmpp-2m | {t_kdiff:.2f} | {args.steps / t_kdiff:.2f} |")
    print(f"\ndiffusers pipeline / sa-jax: {t_theirs / t_ours:.2f}x; k-diffusion + diffusers components / "
          f"sa-jax (dpmpp-2m): {t_kdiff / t_ode:.2f}x; sa-jax VAE decode: "
          f"{'one shot' if decode_path is None else f'chunks of {decode_path} frames'}; load average "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
