"""Seams of long-form generation and continuation with the shipped small model (or --model):
for each overlap, `generate_long` a piece and measure its window boundaries with
`sa_jax.eval.seams.seam_stats` (max sample-to-sample jump near a seam / max elsewhere; 50 ms level
step at a seam against adjacent 50 ms frames elsewhere). Prints a markdown table.

    .venv/bin/python bench/bench_seams.py --seconds 40 --steps 50
"""

from __future__ import annotations

import argparse
import time

PROMPTS = ["sine flute melody, C major, 100 BPM", "plucked bass, A minor, 120 BPM, panned left"]


def row(st: dict) -> str:
    return (f"{st['seam_level_db_mean']:.1f} / {st['seam_level_db']:.1f} | {st['level_db_mean']:.1f} / "
            f"{st['level_db_p95']:.1f} / {st['level_db_max']:.1f}")


def randomized(sa, seed: int = 0):
    """`sa` with its denoiser's (U-Net's or DiT's) weights redrawn: normal, each array's own mean and std."""
    import copy

    import jax
    import jax.numpy as jnp

    from sa_jax import StableAudio

    family = copy.copy(sa.family)
    name = "unet_params" if hasattr(family, "unet_params") else "dit_params"
    leaves, tree = jax.tree_util.tree_flatten(getattr(family, name))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [jnp.mean(p) + jnp.std(p) * jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)]
    setattr(family, name, jax.tree_util.tree_unflatten(tree, leaves))
    return StableAudio(family, sa.autoencoder, sa.window_samples, sa.defaults)


def main() -> None:
    from sa_jax import StableAudio
    from sa_jax.eval.seams import seam_stats
    from sa_jax.longform import plan

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--overlaps", default="0.125,0.25,0.5", help="fractions of the window")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random-denoiser", action="store_true",
                    help="redraw the denoiser weights at random, same scale (a model that learned nothing)")
    args = ap.parse_args()
    sa = StableAudio.load(args.model)
    if args.random_denoiser:
        sa = randomized(sa, args.seed)
    ratio = sa.autoencoder.downsampling_ratio
    print(f"model {args.model or 'shipped small'}: window {sa.window_seconds:.2f} s, {args.seconds:g} s pieces, "
          f"{len(PROMPTS)} prompts, {args.steps} steps, seed {args.seed}"
          + (", random denoiser weights" if args.random_denoiser else ""))
    print("| what | overlap | windows | jump ratio (seam / elsewhere) | seam level step, mean / max (dB) | "
          "elsewhere mean / p95 / max (dB) | time (s) |")
    print("|---|---|---|---|---|---|---|")
    for frac in [float(f) for f in args.overlaps.split(",")]:
        overlap_s = frac * sa.window_seconds
        starts, seams = plan(sa, args.seconds, overlap_s)
        t = time.perf_counter()
        y = sa.generate_long(PROMPTS, seconds_total=args.seconds, overlap_seconds=overlap_s, steps=args.steps,
                             seed=args.seed)
        dt = time.perf_counter() - t
        st = seam_stats(y, [s * ratio for s in seams], sa.sample_rate)
        print(f"| generate_long | {frac:g} window ({overlap_s:.2f} s) | {len(starts)} | {st['jump_ratio']:.2f} | "
              f"{row(st)} | {dt:.0f} |")
    clip = sa.generate(PROMPTS[:1], seconds_total=5.0, steps=args.steps, seed=args.seed + 1)
    t = time.perf_counter()
    y = sa.continue_audio(clip, sa.sample_rate, PROMPTS[:1], seconds=args.seconds - 5.0, steps=args.steps,
                          seed=args.seed)
    dt = time.perf_counter() - t
    starts, seams = plan(sa, y.shape[-1] / sa.sample_rate, None, known_seconds=clip.shape[-1] / sa.sample_rate)
    st = seam_stats(y, [s * ratio for s in seams], sa.sample_rate)
    print(f"| continue_audio (5 s clip) | default | {len(starts)} | {st['jump_ratio']:.2f} | {row(st)} "
          f"| {dt:.0f} |")


if __name__ == "__main__":
    main()
