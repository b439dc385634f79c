"""OpenL3's audio embedding network (Cramer et al. 2019; openl3 v0.4.2, as torchopenl3 ports it).

Input: 1 s windows at 48 kHz, (batch, 48000). Two front ends (`frontend`), as the two generations of
openl3 compute the spectrogram:
- `kapre037` (openl3 0.4.x with kapre 0.3.x, what stable-audio-metrics runs; the default): `mel128` /
  `mel256`: the window zero-padded at the end to ceil(48000 / 242) = 199 frames (tf.signal.stft's
  pad_end), |STFT| (n_fft 2048, hop 242, periodic Hann), then librosa's Slaney-scale, Slaney-normalised
  mel filterbank (fmin 0, fmax 24 kHz) applied to that magnitude -> 128 or 256 x 199;
- `kapre014` (openl3 <= 0.3 with kapre 0.1.4, and torchopenl3): `mel128` / `mel256`: the window
  zero-padded "same" (982 samples each side), power STFT (n_fft 2048, hop 242), an HTK mel matrix with
  unit L1 rows (fmin 0, fmax 24 kHz; taken from the weight file when it holds one), then its square
  root -> 128 or 256 x 199;
- `linear` is the same in both: |STFT| (n_fft 512, hop 242, periodic Hann, no padding) -> 257 x 197;
then decibels 10 log10(max(x, 1e-10)), made relative to each window's maximum and floored at -80 dB
(openl3 0.4 keeps kapre 0.1.4's decibel step).
The network: BatchNorm on the spectrogram, four pairs of 3x3 conv + BatchNorm + ReLU (64, 128, 256,
512 channels) with 2x2 max pools between them, a last 3x3 conv (512), and a max pool to a (1 x 1)
(embedding 512) or (4 x 3) (6144) map flattened height, width, channel. BatchNorm eps 1e-3.
Layout: (batch, frequency, time, channels).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.errors import ConfigError
from sa_jax.tree import flat_shapes

SAMPLE_RATE = 48000
INPUT_REPRS = ("linear", "mel128", "mel256")
CONTENT_TYPES = ("music", "env")
EMBEDDING_SIZES = (512, 6144)
FRONTENDS = ("kapre037", "kapre014")
# Max-pool sizes of the last map (frequency, time), per input representation and embedding size.
POOL = {"linear": {512: (32, 24), 6144: (8, 8)}, "mel128": {512: (16, 24), 6144: (4, 8)},
        "mel256": {512: (32, 24), 6144: (8, 8)}}
HOP = 242
CHANNELS = (64, 64, 128, 128, 256, 256, 512)


@dataclasses.dataclass(frozen=True)
class OpenL3Config:
    input_repr: str = "mel256"
    content_type: str = "music"     # which training data the weights come from; the network is the same
    embedding_size: int = 512
    frontend: str = "kapre037"      # openl3 0.4.x's spectrogram (stable-audio-metrics); "kapre014": torchopenl3's

    def validate(self) -> None:
        for what, value, allowed in (("input_repr", self.input_repr, INPUT_REPRS),
                                     ("content_type", self.content_type, CONTENT_TYPES),
                                     ("embedding_size", self.embedding_size, EMBEDDING_SIZES),
                                     ("frontend", self.frontend, FRONTENDS)):
            if value not in allowed:
                raise ConfigError(f"OpenL3 {what} {value!r} is not one of {', '.join(map(str, allowed))}")

    @property
    def n_fft(self) -> int:
        return 512 if self.input_repr == "linear" else 2048

    @property
    def n_mels(self) -> int:
        return {"linear": 0, "mel128": 128, "mel256": 256}[self.input_repr]

    @property
    def frequency_bins(self) -> int:
        return self.n_mels or self.n_fft // 2 + 1

    @property
    def name(self) -> str:
        return f"openl3 {self.input_repr} {self.content_type} {self.embedding_size} {self.frontend}"


def same_padding(n_fft: int, hop: int = HOP, width: int = SAMPLE_RATE) -> tuple[int, int]:
    """Keras' 'same' padding of the mel front end (kapre pads as a Conv1D of width n_fft)."""
    total = max(n_fft - (hop if width % hop == 0 else width % hop), 0)
    return total // 2, total - total // 2


def mel_matrix(config: OpenL3Config) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) mel filters: for `kapre037` librosa's Slaney filterbank (kapre 0.3's
    `filterbank_mel` defaults: htk=False, norm='slaney'); for `kapre014` HTK filters with unit L1 norm
    each, as torchopenl3 builds them."""
    import warnings

    import librosa

    if config.frontend == "kapre037":
        return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=config.n_fft, n_mels=config.n_mels, fmin=0.0, fmax=None,
                                   htk=False, norm="slaney").astype(np.float32)
    with warnings.catch_warnings():     # 256 HTK bands at n_fft 2048 leave the lowest ones empty, as released
        warnings.simplefilter("ignore", UserWarning)
        return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=config.n_fft, n_mels=config.n_mels, fmin=0,
                                   fmax=SAMPLE_RATE // 2, htk=True, norm=1).astype(np.float32)


def stft_kernels(n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """kapre's DFT kernels (bins, n_fft): cos and -sin rows, each times a periodic Hann window
    (torchopenl3's `dft_real_kernels` / `dft_imag_kernels` buffers, less their middle axis)."""
    t = np.arange(n_fft)
    w = 2 * np.pi * np.arange(n_fft // 2 + 1)[:, None] / n_fft
    hann = (0.5 - 0.5 * np.cos(2 * np.pi * t / n_fft)).astype(np.float32)
    return (np.cos(w * t) * hann).astype(np.float32), (-np.sin(w * t) * hann).astype(np.float32)


def spectrogram_db(x: jax.Array, config: OpenL3Config, mel: jax.Array | None) -> jax.Array:
    """(batch, 48000) -> (batch, bins, frames) decibels relative to each window's maximum."""
    n_fft = config.n_fft
    kapre014 = config.frontend == "kapre014"
    if config.n_mels and kapre014:
        x = jnp.pad(x, ((0, 0), same_padding(n_fft)))
    elif config.n_mels:         # tf.signal.stft(pad_end=True): ceil(length / hop) frames, zeros after the end
        frames = -(-x.shape[1] // HOP)
        x = jnp.pad(x, ((0, 0), (0, (frames - 1) * HOP + n_fft - x.shape[1])))
    frames = (x.shape[1] - n_fft) // HOP + 1
    index = np.arange(frames)[:, None] * HOP + np.arange(n_fft)[None, :]
    hann = 0.5 - 0.5 * jnp.cos(2 * jnp.pi * jnp.arange(n_fft) / n_fft)
    spec = jnp.fft.rfft(x[:, index] * hann, axis=-1)                      # (batch, frames, bins)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    if config.n_mels and kapre014:    # kapre 0.1.4: the mel of the power spectrum, then its square root
        magnitude = jnp.sqrt(jnp.einsum("mf,btf->btm", mel, power, precision=jax.lax.Precision.HIGHEST))
    elif config.n_mels:               # kapre 0.3: the mel of the magnitude
        magnitude = jnp.einsum("mf,btf->btm", mel, jnp.abs(spec), precision=jax.lax.Precision.HIGHEST)
    else:
        magnitude = jnp.sqrt(power)
    db = 10.0 * jnp.log10(jnp.maximum(magnitude, 1e-10))
    db = db - jnp.max(db, axis=(1, 2), keepdims=True)
    return jnp.maximum(db, -80.0).transpose(0, 2, 1)


class OpenL3(nn.Module):
    """(batch, 48000) windows at 48 kHz -> (batch, embedding_size)."""

    config: OpenL3Config
    precision: jax.lax.Precision | str = jax.lax.Precision.HIGHEST   # float32 convs on GPU/TPU too

    @nn.compact
    def __call__(self, windows: jax.Array) -> jax.Array:
        c = self.config
        mel = self.variable("constants", "mel", lambda: jnp.asarray(mel_matrix(c))).value if c.n_mels else None
        x = spectrogram_db(windows.astype(jnp.float32), c, mel)[..., None]

        def bn(x, name):
            return nn.BatchNorm(use_running_average=True, epsilon=1e-3, momentum=0.99, name=name)(x)

        def conv(x, features, name):
            return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), precision=self.precision, name=name)(x)

        x = bn(x, "batch_normalization_1")
        for i, features in enumerate(CHANNELS):
            x = nn.relu(bn(conv(x, features, f"conv2d_{i + 1}"), f"batch_normalization_{i + 2}"))
            if i in (1, 3, 5):
                x = nn.max_pool(x, (2, 2), (2, 2))
        x = conv(x, 512, "audio_embedding_layer")
        pool = POOL[c.input_repr][c.embedding_size]
        x = nn.max_pool(x, pool, pool)
        return x.reshape(x.shape[0], -1)


def variable_shapes(config: OpenL3Config) -> dict[str, tuple[int, ...]]:
    """{'params/...' | 'batch_stats/...' | 'constants/...': shape} of the model's variables."""
    tree = jax.eval_shape(lambda k: OpenL3(config).init(k, jnp.zeros((1, SAMPLE_RATE))), jax.random.key(0))
    return flat_shapes(tree)
