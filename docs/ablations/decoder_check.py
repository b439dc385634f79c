"""#22's study, part 4: a paired check of decoders under the shipped U-Net, minutes instead of a whole evaluation.

The instrument generations of `sa-jax evaluate` (its prompts and seeds: 50 generations of 4 s, 50 steps) are
sampled once as latents by the shipped U-Net and decoded by each decoder given, so every decoder plays exactly
the same latents; the instrument is measured as the evaluation measures it. Beside it, per decoder: the
instrument measured on the 24 held-out clips through that autoencoder (encode, decode: its ceiling), and the
decoded timing ceiling (`timing.ceiling_decoded`).

The instrument is judged by the evaluation's classifier (`adherence.reference_classifier()`: since part 4, a
logistic regression on MFCC statistics, flatness, centroid and envelope of the sounding frames, fitted on 250
fresh clips of seed 12345). Part 4's table was made before that, with two judges: the band-energy nearest
class mean the evaluation used then, and the same logistic regression fitted in this script on 250 clips of
seed 1, the held-out clips' own seed (near-copies of them); docs/ablations/README.md, part 4, says what changed.

    python docs/ablations/decoder_check.py runs/study/heldout sa_jax/assets/small runs/study/vae_quiet2 \
        runs/study/vae_quiet3
"""

import sys

import numpy as np

from sa_jax.autoencoder import Autoencoder
from sa_jax.eval import adherence
from sa_jax.eval.recon import corpus_clips
from sa_jax.eval.timing import timing_ceiling
from sa_jax.pipeline import StableAudio


def main(heldout: str, *decoders: str) -> None:
    model = StableAudio.load("sa_jax/assets/small")
    sr, samples = model.sample_rate, 4 * model.sample_rate
    classifier = adherence.reference_classifier()     # as sa_jax.eval.report
    latents = {}

    def generate(prompts, first_item):
        latents[first_item] = np.asarray(model.generate_latents(prompts, seconds_total=4.0, steps=50, seed=0,
                                                                first_item=first_item))
        return np.zeros((len(prompts), 2, samples), np.float32)     # measured below, per decoder

    items = adherence.adherence_eval(generate, sr, classifier, attributes=("instrument",), per_attribute=48,
                                     seed=0, batch=8)["items"]
    clips = corpus_clips(heldout)
    labels = [adherence.metadata_value("instrument", meta) for _, meta in clips]

    def score(pairs):
        return f"{np.mean([classifier.predict(audio, sr) == want for audio, want in pairs]):.2f}"

    print(f"raw held-out clips: {score(zip((a for a, _ in clips), labels))}")
    print("| decoder | instrument, same 50 latents | held-out clips through it "
          "| decoded timing ceiling, median / p90 (s) |\n|---|---|---|---|")
    for path in decoders:
        ae = Autoencoder.load(path)
        generated = [(audio, items[first + n]["wanted"]) for first, z in sorted(latents.items())
                     for n, audio in enumerate(ae.decode(z)[:, :, :samples])]
        through = [(ae.decode(ae.encode(a[None]))[0], want) for (a, _), want in zip(clips, labels)]
        ceiling = timing_ceiling(clips, sr, model.window_seconds, autoencoder=ae)
        print(f"| {path} | {score(generated)} | {score(through)} | {ceiling['median']:.2f} / {ceiling['p90']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
