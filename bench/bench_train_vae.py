"""VAE training steps per second on CPU: sa-jax's jitted generator/discriminator steps against the
same steps in PyTorch built from stable-audio-tools' own pieces (its Oobleck autoencoder, its
vendored auraloss SumAndDifferenceSTFTLoss + per-channel MultiResolutionSTFTLoss with A-weighting,
its EncodecDiscriminator, AdamW betas (0.8, 0.99)), following AutoencoderTrainingWrapper.training_step:
even steps update the generator, odd steps the discriminator. Same model, batch and loss settings,
one run, one machine.

    .venv/bin/python bench/bench_train_vae.py                      # small Oobleck VAE, batch 4 x 16384
    .venv/bin/python bench/bench_train_vae.py --channels 32 --window 32768 --steps 10

(The wrapper itself is a PyTorch Lightning module and needs Lightning, wandb and ema_pytorch, which
are not installed here; the torch loop reproduces its step arithmetic: the EMA update is included.)
Times are wall-clock over --steps steps (an even number: G and D alternate) after one warm-up pair;
sa-jax's compile time is reported apart.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def model_dict(channels: int) -> dict:
    common = {"c_mults": [1, 2, 4], "strides": [2, 4, 8], "use_snake": True}
    return {"encoder": {"type": "oobleck", "config": {"in_channels": 2, "channels": channels, "latent_dim": 16,
                                                      **common}},
            "decoder": {"type": "oobleck", "config": {"out_channels": 2, "channels": channels, "latent_dim": 8,
                                                      "final_tanh": False, **common}},
            "bottleneck": {"type": "vae"}, "latent_dim": 8, "downsampling_ratio": 64, "io_channels": 2}


def run_sa_jax(args, audio):
    import jax

    from sa_jax.config import from_dict
    from sa_jax.parallel import batch_sharding, global_batch, make_mesh
    from sa_jax.training import vae

    cfg = from_dict(vae.VAETrainConfig, {
        "model": {**model_dict(args.channels), "sample_rate": 44100},
        "data": {"kind": "folder", "path": "unused", "window": args.window, "batch_size": args.batch},
        "discriminator": {"filters": args.filters}, "steps": 10 ** 6, "log": {"tensorboard": False},
    })
    mesh = make_mesh(cfg.mesh)
    state = vae.create_state(cfg, mesh)
    batch = global_batch({"audio": np.swapaxes(audio, 1, 2)}, batch_sharding(mesh, cfg.mesh))
    t0 = time.perf_counter()
    g_step, d_step = vae.compiled_steps(cfg, mesh, state, batch)
    compile_s = time.perf_counter() - t0
    for fn in (g_step, d_step):   # warm-up pair
        state, m = fn(state, batch)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for i in range(args.steps):
        state, m = (d_step if i % 2 else g_step)(state, batch)
    jax.block_until_ready(state)
    n = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    return (time.perf_counter() - t0) / args.steps, compile_s, n


def run_torch(args, audio):
    import importlib.util

    import torch

    from sa_jax.testing.reference import import_reference

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sat_ae = import_reference("stable_audio_tools.models.autoencoders")
    disc_mod = import_reference("stable_audio_tools.models.discriminators")
    enc_mod = import_reference("stable_audio_tools.models.encodec")
    from sa_jax.testing.spectrogram import Spectrogram  # torchaudio's arithmetic (torchaudio is absent)

    enc_mod.torchaudio.transforms.Spectrogram = Spectrogram
    spec = importlib.util.find_spec("stable_audio_tools")
    path = spec.submodule_search_locations[0] + "/training/losses/auraloss.py"
    s = importlib.util.spec_from_file_location("_sat_auraloss", path)
    aura = importlib.util.module_from_spec(s)
    s.loader.exec_module(aura)

    sat_config = {"model_type": "autoencoder", "sample_rate": 44100, "model": model_dict(args.channels)}
    model = sat_ae.create_autoencoder_from_config(sat_config)
    ema = sat_ae.create_autoencoder_from_config(sat_config)   # (deepcopy fails on weight-normed modules)
    ema.load_state_dict(model.state_dict())
    scales = [2048, 1024, 512, 256, 128, 64, 32]
    stft = dict(fft_sizes=scales, hop_sizes=[s // 4 for s in scales], win_lengths=scales, perceptual_weighting=True,
                sample_rate=44100)
    sdstft, lrstft = aura.SumAndDifferenceSTFTLoss(**stft), aura.MultiResolutionSTFTLoss(**stft)
    d_scales = [2048, 1024, 512, 256, 128]
    disc = disc_mod.EncodecDiscriminator(in_channels=2, filters=args.filters, n_ffts=d_scales,
                                         hop_lengths=[s // 4 for s in d_scales], win_lengths=d_scales)
    opt_g = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.8, 0.99))
    opt_d = torch.optim.AdamW(disc.parameters(), lr=1e-4, betas=(0.8, 0.99))
    reals = torch.from_numpy(audio)

    def step(i):
        latents, info = model.encode(reals, return_info=True)
        decoded = model.decode(latents)
        loss_dis, loss_adv, fm = disc.loss(reals, decoded)
        if i % 2:
            opt_d.zero_grad()
            loss_dis.backward()
            opt_d.step()
        else:
            loss = (sdstft(reals, decoded) + lrstft(reals[:, :1], decoded[:, :1]) / 2
                    + lrstft(reals[:, 1:], decoded[:, 1:]) / 2 + 0.1 * loss_adv + 5.0 * fm + 1e-6 * info["kl"])
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(p, 1e-3)
            opt_g.zero_grad()
            loss.backward()
            opt_g.step()

    model.train()
    step(0)
    step(1)
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i)
    return (time.perf_counter() - t0) / args.steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=16, help="Oobleck base width (SAO: 128)")
    parser.add_argument("--filters", type=int, default=32, help="discriminator filters (the recipe's 32)")
    parser.add_argument("--window", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    if args.steps % 2:
        parser.error("--steps must be even (generator and discriminator steps alternate)")
    audio = (np.random.default_rng(0).uniform(-0.5, 0.5, (args.batch, 2, args.window))).astype(np.float32)

    jax_s, compile_s, n_params = run_sa_jax(args, audio)
    torch_s = run_torch(args, audio)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; Oobleck VAE width "
          f"{args.channels} ({n_params:,} params), 64x, batch {args.batch} x {args.window} stereo samples; "
          f"7 A-weighted STFT resolutions (sum/diff + L/R); discriminator 5 scales x {args.filters} filters")
    print("| implementation | s/step (G and D alternating) | steps/s | speed-up |")
    print("|---|---|---|---|")
    print(f"| stable-audio-tools pieces, PyTorch {__import__('torch').__version__} CPU | {torch_s:.3f} | "
          f"{1 / torch_s:.2f} | 1.00x |")
    print(f"| sa-jax (jitted, donated state) | {jax_s:.3f} | {1 / jax_s:.2f} | {torch_s / jax_s:.2f}x |")
    print(f"sa-jax compile (both steps, once): {compile_s:.1f} s")


if __name__ == "__main__":
    main()
