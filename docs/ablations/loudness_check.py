"""#22's study, part 7: where does a U-Net read a clip's loudness from, the prompt or its own input?

For each MODEL, two measurements:
1. The denoiser's x0 prediction, per noise level t: 4 quiet and 4 loud corpus latents (LATENTS, a latents
   folder), noised at t, denoised once with the prompt "loudness: quiet" and once with "loudness: loud".
   Prints the RMS of the prediction under each prompt. Where the two agree, the U-Net ignored the word
   and read the level from the noisy input.
2. Generations: 8 prompts x 3 levels (4 s, 30 steps, seed 3). Prints each one's level in dBFS and how
   many land nearest their asked level (-30 / -22 / -15 dBFS, `sa-jax evaluate`'s measurement).

    python docs/ablations/loudness_check.py runs/study/latents_whole sa_jax/assets/small runs/study/unet_shift4/export
"""

import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from sa_jax.data import synth
from sa_jax.diffusion import v_alpha_sigma
from sa_jax.pipeline import StableAudio

TIMES = (0.3, 0.6, 0.8, 0.9, 0.97)
PROMPTS = ("loudness: {}", "{}", "bell, {}", "instrument: organ | loudness: {}", "sawtooth lead, {}",
           "key: C major | loudness: {}", "plucked string, A minor, {}", "stereo: left | loudness: {}")


def corpus_latents(folder: Path, level: str, frames: int, count: int = 4) -> np.ndarray:
    """`count` latents of clips at `level` that fill most of the window, zero-padded to `frames`."""
    out = []
    for line in open(folder / "index.jsonl"):
        row = json.loads(line)
        if json.loads(row["metadata_json"])["loudness"] == level and row["frames"] >= 0.75 * frames:
            z = np.load(folder / row["latents"])[:, :frames]
            out.append(np.pad(z, ((0, 0), (0, frames - z.shape[1]))))
        if len(out) == count:
            return np.stack(out)
    raise SystemExit(f"{folder} has fewer than {count} {level} clips of at least {0.75 * frames:.0f} frames")


def prediction_by_prompt(model: StableAudio, folder: Path) -> None:
    family, net = model.family, model.family.network()
    noise_rng = np.random.default_rng(0)
    for level in ("quiet", "loud"):
        x0 = jnp.asarray(corpus_latents(folder, level, model.window_frames))
        eps = jnp.asarray(noise_rng.standard_normal(x0.shape), jnp.float32)
        cells = []
        for t in TIMES:
            alpha, sigma = v_alpha_sigma(t)
            xt = alpha * x0 + sigma * eps
            rms = []
            for said in ("quiet", "loud"):
                cond = family.condition([f"loudness: {said}"] * len(x0), 0, int(model.window_seconds))
                v = net(xt, jnp.full((len(x0),), t), cond)
                rms.append(float(jnp.sqrt(jnp.mean((alpha * xt - sigma * v) ** 2))))
            cells.append(f"t={t}: {rms[0]:.2f} / {rms[1]:.2f}")
        true_rms = float(jnp.sqrt(jnp.mean(x0 ** 2)))
        print(f"  {level} clips (latent RMS {true_rms:.2f}), x0 prediction RMS saying quiet / loud: "
              + "  ".join(cells))


def generations(model: StableAudio) -> None:
    hits = 0
    for level in synth.LOUDNESS:
        audio = model.generate([p.format(level) for p in PROMPTS], seconds_total=4.0, steps=30, seed=3)
        db = [synth.measure(x[..., :4 * model.sample_rate], model.sample_rate)["loudness_db"] for x in audio]
        hits += sum(min(synth.LOUDNESS, key=lambda k: abs(synth.LOUDNESS[k] - d)) == level for d in db)
        print(f"  asked {level}: " + " ".join(f"{d:.0f}" for d in db) + " dBFS")
    print(f"  {hits} of {len(PROMPTS) * len(synth.LOUDNESS)} nearest their asked level")


def main(latents: str, *models: str) -> None:
    for path in models:
        model = StableAudio.load(path)
        print(path)
        prediction_by_prompt(model, Path(latents))
        generations(model)


if __name__ == "__main__":
    main(*sys.argv[1:])
