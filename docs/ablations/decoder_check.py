"""#22's study, part 4: a paired check of decoders under the shipped U-Net, minutes instead of a whole evaluation.

The instrument generations of `sa-jax evaluate` (its prompts and seeds: 50 generations of 4 s, 50 steps) are
sampled once as latents by the shipped U-Net and decoded by each decoder given, so every decoder plays exactly
the same latents; the instrument is measured as the evaluation measures it. Beside it, per decoder: the
instrument measured on the 24 held-out clips through that autoencoder (encode, decode: its ceiling), and the
decoded timing ceiling (`timing.ceiling_decoded`).

Each instrument number is given twice: by the evaluation's classifier (nearest class mean of band energies,
`adherence.reference_classifier`) and by an exploratory one, a logistic regression on MFCC statistics,
flatness, centroid and envelope of the sounding frames (`mfcc_features`, scikit-learn, which librosa
brings), fitted on 250 fresh synthesized clips. The evaluation's names only 42% of the raw held-out clips'
instruments; the exploratory one is the check of whether that weakness decides the comparison.

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


def mfcc_features(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """MFCC means and spreads, log flatness and centroid, and the envelope's level statistics of the STFT
    frames within 40 dB of the loudest (a silent tail or a decoder's floor does not count)."""
    import librosa

    power = np.abs(librosa.stft(np.asarray(audio, np.float32).mean(0), n_fft=2048, hop_length=512)) ** 2
    level = power.sum(0)
    if (level > level.max() * 1e-4).sum() > 4:
        power = power[:, level > level.max() * 1e-4]
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sample_rate)),
                                n_mfcc=20)
    flatness = librosa.feature.spectral_flatness(S=np.sqrt(power)).mean()
    centroid = librosa.feature.spectral_centroid(S=np.sqrt(power), sr=sample_rate).mean()
    envelope = 10 * np.log10(power.sum(0) / power.sum(0).max() + 1e-9)
    return np.concatenate([mfcc.mean(1), mfcc.std(1), [np.log(flatness + 1e-12), np.log(centroid),
                                                       envelope.mean(), envelope.std()]])


def mfcc_classifier(sample_rate: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sa_jax.data import synth

    clips = [synth.synth_clip(1, i, max_seconds=4.0) for i in range(250)]
    x = np.stack([mfcc_features(a, sample_rate) for a, _ in clips])
    fitted = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, [m["instrument"]
                                                                                         for _, m in clips])
    return lambda audio: fitted.predict(mfcc_features(audio, sample_rate)[None])[0]


def main(heldout: str, *decoders: str) -> None:
    model = StableAudio.load("sa_jax/assets/small")
    sr, samples = model.sample_rate, 4 * model.sample_rate
    classifier = adherence.reference_classifier(100, seed=12345)     # as sa_jax.eval.report
    latents = {}

    def generate(prompts, first_item):
        latents[first_item] = np.asarray(model.generate_latents(prompts, seconds_total=4.0, steps=50, seed=0,
                                                                first_item=first_item))
        return np.zeros((len(prompts), 2, samples), np.float32)     # measured below, per decoder

    items = adherence.adherence_eval(generate, sr, classifier, attributes=("instrument",), per_attribute=48,
                                     seed=0, batch=8)["items"]
    clips = corpus_clips(heldout)
    labels = [adherence.metadata_value("instrument", meta) for _, meta in clips]
    judges = {"evaluation's": lambda audio: classifier.predict(audio, sr), "MFCC + LR": mfcc_classifier(sr)}

    def score(judge, pairs):
        return f"{np.mean([judge(audio) == want for audio, want in pairs]):.2f}"

    print("raw held-out clips: " + ", ".join(f"{k} {score(j, zip((a for a, _ in clips), labels))}"
                                             for k, j in judges.items()))
    print("| decoder | instrument, same 50 latents (evaluation's / MFCC + LR) | held-out clips through it (same) "
          "| decoded timing ceiling, median / p90 (s) |\n|---|---|---|---|")
    for path in decoders:
        ae = Autoencoder.load(path)
        generated = [(audio, items[first + n]["wanted"]) for first, z in sorted(latents.items())
                     for n, audio in enumerate(ae.decode(z)[:, :, :samples])]
        through = [(ae.decode(ae.encode(a[None]))[0], want) for (a, _), want in zip(clips, labels)]
        ceiling = timing_ceiling(clips, sr, model.window_seconds, autoencoder=ae)
        print(f"| {path} | {' / '.join(score(j, generated) for j in judges.values())} | "
              f"{' / '.join(score(j, through) for j in judges.values())} | {ceiling['median']:.2f} / "
              f"{ceiling['p90']:.2f} |", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
