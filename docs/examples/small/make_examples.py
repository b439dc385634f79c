"""Listening examples from the shipped small model, each a WAV and its spectrogram (as `sa-jax sample` writes):

    .venv/bin/python docs/examples/small/make_examples.py
"""

from pathlib import Path

from sa_jax import StableAudio
from sa_jax.audio import write_audio
from sa_jax.commands.sample import write_spectrogram

OUT = Path(__file__).resolve().parent
EXAMPLES = {   # name: (prompt, seconds)
    "pluck_c_major_4s": ("A warm plucked string playing a steady melody in C major at 120 BPM, loud.", 4),
    "bell_a_minor_left_6s": ("instrument: bell | key: A minor | stereo: left | loudness: medium", 6),
    "flute_g_minor_8s": ("sine flute, G minor, 90, sparse, quiet", 8),
    "saw_e_major_right_3s": ("A bright sawtooth lead in E major, 140 BPM, panned hard right, loud.", 3),
}


def main() -> None:
    sa = StableAudio.load()
    for name, (prompt, seconds) in EXAMPLES.items():
        audio = sa.generate([prompt], seconds_total=seconds, steps=100, seed=0)[0]
        write_audio(OUT / f"{name}.wav", audio, sa.sample_rate)
        write_spectrogram(OUT / f"{name}.png", audio, sa.sample_rate, f"{prompt} ({seconds} s)")


if __name__ == "__main__":
    main()
