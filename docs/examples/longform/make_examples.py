"""Listening examples past the window, from the shipped small model (8.9 s window), with each piece's
seams between windows marked on its spectrogram:

    .venv/bin/python docs/examples/longform/make_examples.py

writes long_60s.flac (generate_long), inpainted.flac (seconds 3-5 of an 8 s clip regenerated) and
continued.flac (a 4 s clip continued by 12 s), each with a PNG beside it (16-bit FLAC to keep them small).
"""

from pathlib import Path

import matplotlib
import numpy as np
import soundfile as sf

from sa_jax import StableAudio
from sa_jax.longform import plan

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = Path(__file__).resolve().parent
PROMPT = "A warm plucked string playing a steady melody in C major at 120 BPM, loud."
STEPS = 50


def write(name: str, audio: np.ndarray, sr: int, marks: list[float], title: str) -> None:
    sf.write(OUT / f"{name}.flac", audio.T, sr, subtype="PCM_16")
    mono = audio.mean(axis=0)
    fig, ax = plt.subplots(figsize=(12, 3.5))
    ax.specgram(mono + 1e-9, NFFT=2048, Fs=sr, noverlap=1536, cmap="magma", scale="dB", vmin=-140)
    for t in marks:
        ax.axvline(t, color="cyan", lw=1, ls="--")
    ax.set(title=title, xlabel="seconds", ylabel="Hz", ylim=(0, 8000))
    fig.tight_layout()
    fig.savefig(OUT / f"{name}.png", dpi=80)
    plt.close(fig)


def main() -> None:
    sa = StableAudio.load()
    sr, ratio = sa.sample_rate, sa.autoencoder.downsampling_ratio
    to_s = lambda frames: [f * ratio / sr for f in frames]

    _, seams = plan(sa, 60.0)
    long = sa.generate_long([PROMPT], seconds_total=60.0, steps=STEPS, seed=0)[0]
    write("long_60s", long, sr, to_s(seams), "generate_long, 60 s: seams between windows dashed")

    clip = sa.generate([PROMPT], seconds_total=8, steps=STEPS, seed=1)[0]
    inpainted = sa.inpaint(clip, sr, ["instrument: bell, A minor, loud"], start=3.0, end=5.0, steps=STEPS,
                           seed=2)[0]
    write("inpainted", inpainted, sr, [3.0, 5.0], "inpaint: seconds 3-5 of an 8 s clip regenerated as a bell")

    prefix = sa.generate([PROMPT], seconds_total=4, steps=STEPS, seed=3)[0]
    continued = sa.continue_audio(prefix, sr, [PROMPT], seconds=12.0, steps=STEPS, seed=4)[0]
    _, seams = plan(sa, 16.0, known_seconds=4.0)
    write("continued", continued, sr, to_s(seams),
          "continue_audio: a 4 s clip continued by 12 s; seams dashed (the first: where the clip ends)")


if __name__ == "__main__":
    main()
