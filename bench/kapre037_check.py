"""One-off check of sa-jax's `kapre037` OpenL3 front end against kapre 0.3.7 itself (TensorFlow).

openl3 0.4.2 (the version stable-audio-metrics pins, with kapre 0.3.7) builds its mel front end as
`kapre.composed.get_melspectrogram_layer(n_fft=2048, hop_length=242, n_mels=128|256, sample_rate=48000,
pad_end=True, return_decibel=False)`, then its own `kapre_v0_1_4_magnitude_to_decibel` and a permute
to (frequency, time); the linear one as `get_stft_magnitude_layer(n_fft=512, hop_length=242)`. TensorFlow
is not a dependency of sa-jax, so this runs in two steps:

    # 1. in a separate environment with tensorflow-cpu and kapre==0.3.7 (not sa-jax's .venv):
    python bench/kapre037_check.py make /tmp/kapre037.npz
    # 2. in sa-jax's environment: sa-jax's front end and the NumPy reference of the tests against it
    .venv/bin/python bench/kapre037_check.py compare /tmp/kapre037.npz

Step 2 prints the largest differences (dB) per input representation.
"""

from __future__ import annotations

import sys

import numpy as np

REPRS = {"mel128": dict(n_fft=2048, n_mels=128), "mel256": dict(n_fft=2048, n_mels=256),
         "linear": dict(n_fft=512, n_mels=0)}


def inputs() -> np.ndarray:
    """(4, 48000) fixed 1 s windows: noise, a chord, a quiet sweep, a click after near-silence. Each
    has a noise floor about 60 dB (power) under its peak: deeper spectral nulls would measure float32
    rounding (in openl3's 10 log10 of the magnitude, -80 is a magnitude ratio of 1e-8, under float32's
    resolution), not the front end's math."""
    rng = np.random.default_rng(0)
    t = np.arange(48000) / 48000
    click = np.zeros(48000)
    click[30000:30100] = 0.9
    floor = rng.normal(size=(4, 48000)) * 1e-3
    return (np.stack([rng.normal(size=48000) * 0.3,
                      sum(np.sin(2 * np.pi * f * t) for f in (220, 277.2, 329.6)) * 0.2,
                      np.sin(2 * np.pi * (100 + 8000 * t) * t) * 0.3,
                      click]) + floor).astype(np.float32)


def make(out: str) -> None:
    import kapre
    import tensorflow as tf
    from kapre.composed import get_melspectrogram_layer, get_stft_magnitude_layer

    x = inputs()[:, None, :]                      # openl3's kapre input: (batch, 1, 48000), channels first
    results = {"input": x[:, 0]}
    for name, r in REPRS.items():
        common = dict(input_shape=(1, 48000), n_fft=r["n_fft"], hop_length=242, return_decibel=False,
                      input_data_format="channels_first", output_data_format="channels_last")
        layer = (get_melspectrogram_layer(n_mels=r["n_mels"], sample_rate=48000, pad_end=True, **common)
                 if r["n_mels"] else get_stft_magnitude_layer(**common))
        spec = layer(x)                           # (batch, time, frequency, 1)
        # openl3 0.4.2's kapre_v0_1_4_magnitude_to_decibel, then its Permute((2, 1, 3))
        db = 10.0 * tf.math.log(tf.maximum(spec, 1e-10)) / tf.math.log(tf.constant(10.0))
        db = tf.maximum(db - tf.reduce_max(db, axis=(1, 2, 3), keepdims=True), -80.0)
        results[name] = tf.transpose(db, (0, 2, 1, 3)).numpy()[..., 0]
    np.savez(out, **results)
    print(f"tensorflow {tf.__version__}, kapre {kapre.__version__} (module attribute), wrote {out}")


def compare(path: str) -> None:
    import jax.numpy as jnp

    from sa_jax.models.openl3 import OpenL3Config, mel_matrix, spectrogram_db
    from sa_jax.testing.metrics_ref import kapre037_db

    data = np.load(path)
    x = data["input"]
    print("max |difference| in dB, over all bins / over the bins within 60 dB of the window's peak (deeper ones "
          "are float32 rounding: -60 here is a magnitude ratio of 1e-6)")
    print("| input_repr | shape | sa-jax vs kapre 0.3.7 | NumPy reference vs kapre 0.3.7 | sa-jax vs NumPy reference |")
    print("|---|---|---|---|---|")
    for name in REPRS:
        config = OpenL3Config(input_repr=name, frontend="kapre037")
        mel = jnp.asarray(mel_matrix(config)) if config.n_mels else None
        ours = np.asarray(spectrogram_db(jnp.asarray(x), config, mel))
        ref = kapre037_db(x, name)
        want = data[name]
        loud = want > -60

        def cell(a, b):
            return f"{np.abs(a - b).max():.1e} / {np.abs(a - b)[loud].max():.1e}"
        print(f"| {name} | {want.shape} | {cell(ours, want)} | {cell(ref, want)} | {cell(ours, ref)} |")

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("make", "compare"):
        sys.exit(__doc__)
    (make if sys.argv[1] == "make" else compare)(sys.argv[2])
