"""Encode and decode time of the Oobleck VAE: sa-jax against diffusers' AutoencoderOobleck, same
weights, same input, same machine, one run. Prints a table with the ratios.

    .venv/bin/python bench/bench_vae.py                # 30 s stereo, Stable Audio Open widths
    .venv/bin/python bench/bench_vae.py --seconds 10 --channels 64

Times are wall-clock medians over --repeats runs after a warm-up (sa-jax's first call also
compiles; that time is reported apart). Absolute CPU times depend on the machine; the ratio is
the comparison.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from timing import timed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--channels", type=int, default=128, help="base width (128 = Stable Audio Open)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import jax
    import torch
    from diffusers import AutoencoderOobleck

    from sa_jax import Autoencoder
    from sa_jax.checkpoints.autoencoder import diffusers_config, from_diffusers

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # diffusers ties the encoder output width (mean || scale) to encoder_hidden_size.
    ref = AutoencoderOobleck(encoder_hidden_size=args.channels, decoder_channels=args.channels,
                             decoder_input_channels=args.channels // 2).eval()
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    config = diffusers_config(dict(ref.config))
    ae = Autoencoder(config, from_diffusers(state, config, "bench"))

    samples = int(args.seconds * 44100) // 2048 * 2048
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 2, samples)).astype(np.float32)
    xt = torch.from_numpy(x)
    frames = samples // 2048

    rows = []
    with torch.no_grad():
        z_ref = ref.encode(xt).latent_dist.mean
        t_ref_enc = timed(lambda: ref.encode(xt).latent_dist.mean, args.repeats)
        ref.decode(z_ref)
        t_ref_dec = timed(lambda: ref.decode(z_ref).sample, args.repeats)
    z = z_ref.numpy()
    for label, chunk in (("one shot", None), ("chunked (128 frames, default)", 128)):
        start = time.perf_counter()
        ae.encode(x, chunk_frames=chunk)
        first_enc = time.perf_counter() - start
        t_enc = timed(lambda: ae.encode(x, chunk_frames=chunk), args.repeats)
        start = time.perf_counter()
        ae.decode(z, chunk_frames=chunk)
        first_dec = time.perf_counter() - start
        t_dec = timed(lambda: ae.decode(z, chunk_frames=chunk), args.repeats)
        rows.append((label, t_enc, first_enc, t_dec, first_dec))

    print(f"Oobleck VAE, width {args.channels}, {samples / 44100:.1f} s stereo ({frames} latent frames); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}, "
          f"jax {jax.__version__} on {jax.default_backend()}, torch {torch.__version__}")
    print()
    print("| implementation | encode s | decode s | encode vs diffusers | decode vs diffusers "
          "| first call (compile) enc / dec s |")
    print("|---|---|---|---|---|---|")
    print(f"| diffusers AutoencoderOobleck | {t_ref_enc:.2f} | {t_ref_dec:.2f} | 1.00x | 1.00x | - |")
    for label, t_enc, first_enc, t_dec, first_dec in rows:
        print(f"| sa-jax {label} | {t_enc:.2f} | {t_dec:.2f} | {t_ref_enc / t_enc:.2f}x faster | "
              f"{t_ref_dec / t_dec:.2f}x faster | {first_enc:.1f} / {first_dec:.1f} |")


if __name__ == "__main__":
    main()
