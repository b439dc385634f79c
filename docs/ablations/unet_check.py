"""#22's study, part 5: where does a U-Net end its clips, before any decoder?

Samples `sa-jax evaluate`'s 64 timing generations (its 8 prompts x 8 lengths, seeds and 50 steps) once as
latents with MODEL's U-Net and measures each one's end twice: in latent space (the last frame whose RMS over
the latent channels exceeds 0.3; the U-Net is trained to put zero latents after seconds_total) and as audio
through each DECODER (the evaluation's own timing measurement). Also prints which of the window's frames the
U-Net's architecture cannot tell apart (`position_blind_frames`).

    python docs/ablations/unet_check.py sa_jax/assets/small runs/study/vae_quiet3
"""

import sys

import numpy as np

from sa_jax.autoencoder import Autoencoder
from sa_jax.eval.report import TIMING_PROMPTS
from sa_jax.eval.timing import generated_length, requested_lengths, timing_errors
from sa_jax.models.unet import position_blind_frames
from sa_jax.pipeline import StableAudio


def main(model_dir: str, *decoders: str) -> None:
    model = StableAudio.load(model_dir)
    frames = model.window_samples // model.autoencoder.downsampling_ratio
    blind = position_blind_frames(model.family.unet_config, frames)
    print(f"frames the U-Net cannot tell apart: {f'{blind[0]}-{blind[-1]}' if blind else 'none'} of {frames}")
    items = [(p, s) for s in requested_lengths(model.window_seconds, 8, 2.0) for p in TIMING_PROMPTS]
    latents, start = [], 0
    while start < len(items):    # batches of one length, item n seeded by (0, n), as the evaluation does
        stop = start + 1
        while stop < len(items) and stop - start < 8 and items[stop][1] == items[start][1]:
            stop += 1
        latents.append(model.generate_latents([p for p, _ in items[start:stop]], seconds_total=items[start][1],
                                              steps=50, seed=0, first_item=start))
        start = stop
    z, requested = np.concatenate(latents), [s for _, s in items]
    fps = model.sample_rate / model.autoencoder.downsampling_ratio
    level = np.sqrt((z ** 2).mean(1))
    ends = [(np.flatnonzero(r > 0.3)[-1] + 1) / fps if (r > 0.3).any() else 0.0 for r in level]
    e = timing_errors(requested, ends)
    print(f"latent-space end: median error {e['median']:.2f} s, p90 {e['p90']:.2f} s")
    for path in decoders:
        ae = Autoencoder.load(path)
        audio = np.concatenate([ae.decode(z[i:i + 8]) for i in range(0, len(z), 8)])
        measured = [generated_length(a, model.sample_rate) for a in audio]
        e = timing_errors(requested, measured)
        by_length = {s: float(np.median([m for m, r in zip(measured, requested) if r == s]))
                     for s in sorted(set(requested))}
        print(f"{path}: median error {e['median']:.2f} s [{e['median_low']:.2f}-{e['median_high']:.2f}], p90 "
              f"{e['p90']:.2f} s; median measured by request: {by_length}")


if __name__ == "__main__":
    main(*sys.argv[1:])
