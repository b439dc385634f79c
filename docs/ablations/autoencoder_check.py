"""#22's study, part 6: which text attributes survive the autoencoder itself?

Measures root, mode, tempo, stereo and loudness (`sa-jax evaluate`'s measurement) on the held-out clips raw
and through each AUTOENCODER (encode, then decode: exact latents, what a perfect U-Net would produce), and
the share of the reconstructions' power on multiples of the latent frame rate (the decoder's buzz).

    python docs/ablations/autoencoder_check.py runs/study/heldout sa_jax/assets/small runs/study/vae_quiet3
"""

import sys

import numpy as np

from sa_jax.autoencoder import Autoencoder
from sa_jax.eval import adherence
from sa_jax.eval.recon import corpus_clips

ATTRIBUTES = ["root", "mode", "tempo", "stereo", "loudness"]


def frame_rate_share(audio: np.ndarray, sample_rate: int, ratio: int) -> float:
    """The fraction of the mono mix's power within 1 Hz of a multiple of sample_rate / ratio."""
    power = np.abs(np.fft.rfft(audio.mean(0))) ** 2
    f = np.fft.rfftfreq(audio.shape[-1], 1 / sample_rate)
    k = np.round(f * ratio / sample_rate)
    return float(power[(np.abs(f - k * sample_rate / ratio) < 1.0) & (k > 0)].sum() / power.sum())


def main(heldout: str, *autoencoders: str) -> None:
    clips = corpus_clips(heldout, 24)
    raw = adherence.oracle(clips, attributes=ATTRIBUTES)
    share = np.median([frame_rate_share(a, 44100, 1024) for a, _ in clips])
    print(f"raw: {({a: round(v['accuracy'], 2) for a, v in raw.items()})}, frame-rate share {share:.2f}")
    for path in autoencoders:
        ae = Autoencoder.load(path)
        rec = [(ae.decode(ae.encode(a[None]))[0][..., :a.shape[-1]], m) for a, m in clips]
        got = adherence.oracle(rec, attributes=ATTRIBUTES)
        share = np.median([frame_rate_share(a, ae.sample_rate, ae.downsampling_ratio) for a, _ in rec])
        print(f"{path}: {({a: round(v['accuracy'], 2) for a, v in got.items()})}, frame-rate share {share:.2f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
