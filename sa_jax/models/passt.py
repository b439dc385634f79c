"""PaSST (Koutini et al. 2022), the AudioSet tagger KL_passt uses: hear21passt's
`passt_s_swa_p16_128_ap476` in evaluation mode (no patchout, no SpecAugment), logits out.

Front end (hear21passt's AugmentMelSTFT, eval mode), mono 32 kHz in:
pre-emphasis y[n] = x[n + 1] - 0.97 x[n]; power STFT (n_fft 1024, hop 320, a symmetric 800-sample
Hann window centred in the frame, centre frames with reflect padding); Kaldi-style mel filters
(128 bands over 0-15 kHz on the mel scale 1127 ln(1 + f / 700), triangles in mel, a zero column for
the Nyquist bin); log(mel + 1e-5); (x + 4.5) / 5.
Network: a 16 x 16 patch conv with stride 10 over (mel, time) -> (12, T) tokens of width 768, plus a
frequency and a time positional embedding (the time one cut to T); a class and a distillation token
(each with its own positional vector); 12 pre-norm ViT blocks (LayerNorm eps 1e-6, GELU); a final
LayerNorm; the mean of the two tokens -> LayerNorm (eps 1e-5) -> Linear to the 527 AudioSet classes.
Layout: (batch, frequency, time, channels).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.tree import flat_shapes

SAMPLE_RATE = 32000
HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class PaSSTConfig:
    n_mels: int = 128
    n_fft: int = 1024
    win_length: int = 800
    hop: int = 320
    fmin: float = 0.0
    fmax: float = 15000.0           # hear21passt: sr / 2 - fmax_aug_range / 2
    patch: int = 16
    stride: int = 10
    freq_patches: int = 12
    time_patches: int = 99          # 10 s windows (998 frames in training)
    embed_dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 527


def kaldi_mel_banks(config: PaSSTConfig) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) torchaudio.compliance.kaldi.get_mel_banks (no VTLN warp), with the zero
    column for the Nyquist bin that hear21passt appends. Computed as torchaudio does (band edges from
    double scalars, everything else float32): the triangles' edges are cancellation-sensitive."""
    import math

    f32 = np.float32
    low, high = (1127.0 * math.log(1.0 + f / 700.0) for f in (config.fmin, config.fmax))
    delta = (high - low) / (config.n_mels + 1)
    b = np.arange(config.n_mels, dtype=f32)[:, None]
    left, center, right = (f32(low) + b * f32(delta), f32(low) + (b + 1) * f32(delta), f32(low) + (b + 2) * f32(delta))
    hz = f32(SAMPLE_RATE / config.n_fft) * np.arange(config.n_fft // 2, dtype=f32)
    m = (f32(1127.0) * np.log(f32(1.0) + hz / f32(700.0)))[None, :]
    up, down = (m - left) / (center - left), (right - m) / (right - center)
    banks = np.maximum(f32(0.0), np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1))).astype(f32)


def log_mel(x: jax.Array, config: PaSSTConfig) -> jax.Array:
    """(batch, samples) at 32 kHz -> (batch, n_mels, frames)."""
    x = x[:, 1:] - 0.97 * x[:, :-1]
    pad = config.n_fft // 2
    x = jnp.pad(x, ((0, 0), (pad, pad)), mode="reflect")
    frames = (x.shape[1] - config.n_fft) // config.hop + 1
    index = np.arange(frames)[:, None] * config.hop + np.arange(config.n_fft)[None, :]
    n = np.arange(config.win_length)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / (config.win_length - 1))       # symmetric (periodic=False)
    left = (config.n_fft - config.win_length) // 2
    window = np.zeros(config.n_fft, np.float32)
    window[left:left + config.win_length] = hann
    spec = jnp.fft.rfft(x[:, index] * window, axis=-1)                       # (batch, frames, bins)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    mel = jnp.einsum("mf,btf->bmt", kaldi_mel_banks(config), power, precision=HIGHEST)
    return (jnp.log(mel + 1e-5) + 4.5) / 5.0


class Block(nn.Module):
    config: PaSSTConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        b, n, d = x.shape
        h = nn.LayerNorm(epsilon=1e-6, name="norm1")(x)
        q, k, v = (nn.Dense(d, precision=HIGHEST, name=name)(h).reshape(b, n, c.heads, d // c.heads)
                   for name in ("query", "key", "value"))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=HIGHEST) * (d // c.heads) ** -0.5
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v, precision=HIGHEST)
        x = x + nn.Dense(d, precision=HIGHEST, name="proj")(attn.reshape(b, n, d))
        h = nn.LayerNorm(epsilon=1e-6, name="norm2")(x)
        h = nn.Dense(int(d * c.mlp_ratio), precision=HIGHEST, name="fc1")(h)
        h = nn.Dense(d, precision=HIGHEST, name="fc2")(nn.gelu(h, approximate=False))
        return x + h


class PaSST(nn.Module):
    """(batch, samples) mono at 32 kHz -> (batch, num_classes) logits."""

    config: PaSSTConfig

    @nn.compact
    def __call__(self, audio: jax.Array) -> jax.Array:
        c = self.config
        x = log_mel(audio.astype(jnp.float32), c)[..., None]                  # (b, mels, frames, 1)
        x = nn.Conv(c.embed_dim, (c.patch, c.patch), (c.stride, c.stride), padding="VALID", precision=HIGHEST,
                    name="patch_embed")(x)                                     # (b, F, T, d)
        b, f, t, d = x.shape
        if t > c.time_patches:
            raise ValueError(f"PaSST takes at most {c.time_patches} time patches (10 s), got {t}")
        freq = self.param("freq_pos_embed", nn.initializers.normal(0.02), (c.freq_patches, d))
        time = self.param("time_pos_embed", nn.initializers.normal(0.02), (c.time_patches, d))
        x = (x + time[None, None, :t] + freq[None, :, None]).reshape(b, f * t, d)
        tokens = self.param("token_pos_embed", nn.initializers.normal(0.02), (2, d))
        cls = self.param("cls_token", nn.initializers.normal(0.02), (d,)) + tokens[0]
        dist = self.param("dist_token", nn.initializers.normal(0.02), (d,)) + tokens[1]
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), jnp.broadcast_to(dist, (b, 1, d)), x], axis=1)
        for i in range(c.depth):
            x = Block(c, name=f"blocks_{i}")(x)
        x = nn.LayerNorm(epsilon=1e-6, name="norm")(x)
        features = (x[:, 0] + x[:, 1]) / 2
        features = nn.LayerNorm(epsilon=1e-5, name="head_norm")(features)
        return nn.Dense(c.num_classes, precision=HIGHEST, name="head")(features)


def variable_shapes(config: PaSSTConfig) -> dict[str, tuple[int, ...]]:
    tree = jax.eval_shape(lambda k: PaSST(config).init(k, jnp.zeros((1, 10 * SAMPLE_RATE))), jax.random.key(0))
    return flat_shapes(tree)
