"""The VAE's training losses: multi-resolution STFT losses (A-weighted, sum/difference and L/R), the
hinge and feature-matching losses of the multi-scale STFT discriminator, and the VAE's KL term.

The STFT losses follow auraloss (and stable-audio-tools' vendored copy of it) term for term:

    STFT(x)       torch.stft semantics: periodic Hann window of win_length centred in n_fft,
                  the signal reflect-padded by n_fft // 2 on each side, one-sided spectrum
    |X|           sqrt(max(re^2 + im^2, eps)), eps = 1e-8
    SC            || |Y| - |X| ||_F / || |Y| ||_F per signal, averaged over signals (stable-audio-tools'
                  copy; `sc_reduction: batch` takes one norm over the whole batch, as auraloss 0.4 does)
    log-mag       mean | log |X| - log |Y| |
    one scale     w_sc * SC + w_log_mag * log-mag + w_lin_mag * mean | |X| - |Y| |
    multi-res     the mean over resolutions
    A-weighting   a 101-tap least-squares FIR fit of the IEC A-weighting curve, applied to both
                  signals (cross-correlation with zero padding, as torch's conv1d) before the STFTs
    sum/diff      (w_sum * MR(L+R) + w_diff * MR(L-R)) / 2

Audio here is channels-last, (batch, time, channels), as inside the models. `input`/`target` keep
auraloss's names; note that the SC term is normalised by the *target*'s magnitude.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.errors import ConfigError
from sa_jax.models.autoencoder import vae_kl
from sa_jax.nn.spectral import stft

# The reference's resolutions: FFT sizes 2048 .. 32, hop 1/4 of the window, window = FFT size.
REFERENCE_FFT_SIZES = (2048, 1024, 512, 256, 128, 64, 32)


@dataclass(frozen=True)
class STFTLossConfig:
    """A multi-resolution STFT loss (stable-audio-tools' `loss_configs.spectral.config`)."""

    fft_sizes: tuple[int, ...] = REFERENCE_FFT_SIZES
    hop_sizes: tuple[int, ...] = tuple(s // 4 for s in REFERENCE_FFT_SIZES)
    win_lengths: tuple[int, ...] = REFERENCE_FFT_SIZES
    perceptual_weighting: bool = True   # the A-weighting FIR pre-filter
    w_sc: float = 1.0                   # spectral convergence
    w_log_mag: float = 1.0              # L1 of log magnitudes
    w_lin_mag: float = 0.0              # L1 of magnitudes
    eps: float = 1e-8                   # magnitude floor (squared magnitude clamp, as auraloss)
    # Spectral convergence per signal then averaged (stable-audio-tools' vendored auraloss, which its
    # trainer uses), or one Frobenius norm over the whole batch (the auraloss 0.4 package).
    sc_reduction: Literal["per_signal", "batch"] = "per_signal"

    def validate(self) -> None:
        n = len(self.fft_sizes)
        if n == 0 or len(self.hop_sizes) != n or len(self.win_lengths) != n:
            raise ConfigError(f"stft: fft_sizes {list(self.fft_sizes)}, hop_sizes {list(self.hop_sizes)} and "
                              f"win_lengths {list(self.win_lengths)} must be non-empty and of equal length")
        for f, h, w in zip(self.fft_sizes, self.hop_sizes, self.win_lengths):
            if f <= 0 or h <= 0 or w <= 0 or w > f:
                raise ConfigError(f"stft: each resolution needs positive sizes and win_length <= fft_size; "
                                  f"got fft {f}, hop {h}, win {w}")
        if self.sc_reduction not in ("per_signal", "batch"):
            raise ConfigError(f"stft: sc_reduction must be 'per_signal' or 'batch', got {self.sc_reduction!r}")
        if self.eps <= 0:
            raise ConfigError(f"stft: eps must be positive, got {self.eps}")


# ---------------------------------------------------------------------------------------------
# A-weighting pre-filter


@functools.lru_cache(maxsize=8)
def a_weighting_taps(sample_rate: int, ntaps: int = 101) -> np.ndarray:
    """FIR taps (float32, length `ntaps`) approximating the A-weighting curve at `sample_rate`:
    the analog IEC filter, discretised by the bilinear transform, its magnitude response sampled at
    512 frequencies and fitted by least squares (scipy.signal.firls), as auraloss does."""
    import scipy.signal

    if ntaps % 2 == 0:
        raise ValueError(f"a_weighting_taps: ntaps must be odd, got {ntaps}")
    if sample_rate <= 0:
        raise ValueError(f"a_weighting_taps: sample_rate must be positive, got {sample_rate}")
    # Pole frequencies (Hz) and the gain that puts 0 dB at 1 kHz.
    f1, f2, f3, f4, gain_1k_db = 20.598997, 107.65265, 737.86223, 12194.217, 1.9997
    # The same float operations in the same order as auraloss, so the taps agree to the bit.
    numerator = [(2 * np.pi * f4) ** 2 * (10 ** (gain_1k_db / 20)), 0, 0, 0, 0]
    quad4 = [1, 4 * np.pi * f4, (2 * np.pi * f4) ** 2]
    quad1 = [1, 4 * np.pi * f1, (2 * np.pi * f1) ** 2]
    denominator = np.polymul(np.polymul(np.polymul(quad4, quad1), [1, 2 * np.pi * f3]), [1, 2 * np.pi * f2])
    b, a = scipy.signal.bilinear(numerator, denominator, fs=sample_rate)
    freqs, response = scipy.signal.freqz(b, a, worN=512, fs=sample_rate)
    taps = scipy.signal.firls(ntaps, freqs, np.abs(response), fs=sample_rate)
    return taps.astype(np.float32)


def a_weight(x: jax.Array, sample_rate: int) -> jax.Array:
    """Filter signals (..., time) with the A-weighting FIR; same length out (zero padding)."""
    taps = jnp.asarray(a_weighting_taps(int(sample_rate)))
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1], 1).astype(jnp.float32)
    pad = taps.shape[0] // 2
    y = jax.lax.conv_general_dilated(flat, taps.reshape(-1, 1, 1), window_strides=(1,), padding=[(pad, pad)],
                                     dimension_numbers=("NWC", "WIO", "NWC"))
    return y.reshape(*lead, -1)


# ---------------------------------------------------------------------------------------------
# STFT magnitudes and the STFT losses


def stft_magnitude(x: jax.Array, n_fft: int, hop: int, win_length: int, eps: float = 1e-8) -> jax.Array:
    """sqrt(max(|STFT|^2, eps)) of signals (N, T): (N, n_fft // 2 + 1, frames)."""
    s = stft(x.astype(jnp.float32), n_fft, hop, win_length)
    return jnp.sqrt(jnp.maximum(jnp.real(s) ** 2 + jnp.imag(s) ** 2, eps))


def _terms(x: jax.Array, y: jax.Array, w_sc: float, w_log_mag: float, w_lin_mag: float,
           sc_reduction: str) -> jax.Array:
    """One resolution's loss from magnitudes (N, F, frames) of input and target."""
    loss = jnp.zeros((), jnp.float32)
    if w_sc:
        axes = (-2, -1) if sc_reduction == "per_signal" else None
        sc = jnp.sqrt(jnp.sum((y - x) ** 2, axis=axes)) / jnp.sqrt(jnp.sum(y * y, axis=axes))
        loss = loss + w_sc * jnp.mean(sc)
    if w_log_mag:
        loss = loss + w_log_mag * jnp.mean(jnp.abs(jnp.log(x) - jnp.log(y)))
    if w_lin_mag:
        loss = loss + w_lin_mag * jnp.mean(jnp.abs(x - y))
    return loss


def stft_loss(input: jax.Array, target: jax.Array, n_fft: int, hop: int, win_length: int, *, w_sc: float = 1.0,
              w_log_mag: float = 1.0, w_lin_mag: float = 0.0, eps: float = 1e-8,
              sc_reduction: str = "per_signal") -> jax.Array:
    """One resolution's loss between signal batches (N, T): SC + log-magnitude L1 (+ linear L1)."""
    n = input.shape[0]
    mags = stft_magnitude(jnp.concatenate([input, target]), n_fft, hop, win_length, eps)
    return _terms(mags[:n], mags[n:], w_sc, w_log_mag, w_lin_mag, sc_reduction)


def multi_resolution_groups(inputs: Sequence[jax.Array], targets: Sequence[jax.Array], cfg: STFTLossConfig,
                            sample_rate: int | None = None) -> list[jax.Array]:
    """auraloss' MultiResolutionSTFTLoss for several groups of signals at once: group i compares
    inputs[i] with targets[i], each (N_i, T), and gets its own loss (the mean over resolutions).
    All signals share one A-weighting pass and one STFT per resolution, which keeps the compiled
    program small (the sum, difference, left and right terms of the VAE loss are four groups)."""
    if len(inputs) != len(targets) or not inputs:
        raise ValueError("multi_resolution_stft_loss: need the same, non-zero number of input and target groups")
    for x, y in zip(inputs, targets):
        if x.shape != y.shape or x.ndim != 2 or x.shape[-1] != inputs[0].shape[-1]:
            raise ValueError(f"multi_resolution_stft_loss: input {x.shape} and target {y.shape} must be equal "
                             "(signals, time) shapes of one length")
    sizes = [x.shape[0] for x in inputs]
    allx = jnp.concatenate([*inputs, *targets]).astype(jnp.float32)
    if cfg.perceptual_weighting:
        if not sample_rate:
            raise ValueError("multi_resolution_stft_loss: A-weighting (perceptual_weighting) needs a sample_rate")
        allx = a_weight(allx, sample_rate)
    bounds = np.cumsum([0, *sizes, *sizes])
    totals = [jnp.zeros((), jnp.float32) for _ in sizes]
    for n_fft, hop, win in zip(cfg.fft_sizes, cfg.hop_sizes, cfg.win_lengths):
        mags = stft_magnitude(allx, n_fft, hop, win, cfg.eps)
        parts = [mags[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        for i in range(len(sizes)):
            totals[i] = totals[i] + _terms(parts[i], parts[len(sizes) + i], cfg.w_sc, cfg.w_log_mag,
                                           cfg.w_lin_mag, cfg.sc_reduction)
    return [t / len(cfg.fft_sizes) for t in totals]


def _signals(audio: jax.Array) -> jax.Array:
    """(batch, time, channels) -> (batch * channels, time)."""
    b, t, c = audio.shape
    return jnp.swapaxes(audio, 1, 2).reshape(b * c, t)


def _check_pair(name: str, input: jax.Array, target: jax.Array) -> None:
    if input.shape != target.shape or input.ndim != 3:
        raise ValueError(f"{name}: input {input.shape} and target {target.shape} must be equal "
                         "(batch, time, channels) shapes")


def multi_resolution_stft_loss(input: jax.Array, target: jax.Array, cfg: STFTLossConfig = STFTLossConfig(),
                               sample_rate: int | None = None) -> jax.Array:
    """auraloss' MultiResolutionSTFTLoss of audio (batch, time, channels): every channel is a
    signal, A-weighted first when `cfg.perceptual_weighting`; the mean over resolutions."""
    _check_pair("multi_resolution_stft_loss", input, target)
    return multi_resolution_groups([_signals(input)], [_signals(target)], cfg, sample_rate)[0]


def sum_and_difference(audio: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Stereo (batch, time, 2) -> mid L+R and side L-R, each (batch, time)."""
    if audio.ndim != 3 or audio.shape[-1] != 2:
        raise ValueError(f"sum_and_difference: needs stereo (batch, time, 2) audio, got shape {audio.shape}")
    return audio[..., 0] + audio[..., 1], audio[..., 0] - audio[..., 1]


def sum_and_difference_stft_loss(input: jax.Array, target: jax.Array, cfg: STFTLossConfig = STFTLossConfig(),
                                 sample_rate: int | None = None, w_sum: float = 1.0,
                                 w_diff: float = 1.0) -> jax.Array:
    """auraloss' SumAndDifferenceSTFTLoss: (w_sum * MR(L+R) + w_diff * MR(L-R)) / 2."""
    _check_pair("sum_and_difference_stft_loss", input, target)
    (xs, xd), (ys, yd) = sum_and_difference(input), sum_and_difference(target)
    s, d = multi_resolution_groups([xs, xd], [ys, yd], cfg, sample_rate)
    return (w_sum * s + w_diff * d) / 2


def reconstruction_losses(reals: jax.Array, decoded: jax.Array, cfg: STFTLossConfig, sample_rate: int,
                          lr_weight: float = 0.5) -> dict[str, jax.Array]:
    """The reference trainer's spectral terms for audio (batch, time, channels): for stereo
    {"mrstft": the sum/difference loss, "stft_left", "stft_right": each channel's multi-resolution
    loss times `lr_weight`}; for mono only "mrstft" (the plain multi-resolution loss).

    stable-audio-tools calls auraloss with (reals, decoded) as (input, target), so the SC term is
    normalised by the decoded signal; this keeps that order."""
    _check_pair("reconstruction_losses", reals, decoded)
    if reals.shape[-1] != 2:
        return {"mrstft": multi_resolution_stft_loss(reals, decoded, cfg, sample_rate)}
    (rs, rd), (ds, dd) = sum_and_difference(reals), sum_and_difference(decoded)
    s, d, left, right = multi_resolution_groups([rs, rd, reals[..., 0], reals[..., 1]],
                                                [ds, dd, decoded[..., 0], decoded[..., 1]], cfg, sample_rate)
    return {"mrstft": (s + d) / 2, "stft_left": lr_weight * left, "stft_right": lr_weight * right}


# ---------------------------------------------------------------------------------------------
# Adversarial losses (the multi-scale STFT discriminator) and KL


def hinge_losses(real_logits: Sequence[jax.Array], fake_logits: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(discriminator loss, generator loss), each the mean over scales of
    relu(1 - D(real)).mean() + relu(1 + D(fake)).mean()  and  -D(fake).mean()."""
    if len(real_logits) != len(fake_logits) or not real_logits:
        raise ValueError("hinge_losses: need the same, non-zero number of real and fake scales")
    dis = sum(jnp.mean(jax.nn.relu(1 - r)) + jnp.mean(jax.nn.relu(1 + f)) for r, f in zip(real_logits, fake_logits))
    gen = sum(-jnp.mean(f) for f in fake_logits)
    n = len(real_logits)
    return dis / n, gen / n


def feature_matching_loss(real_features: Sequence[Sequence[jax.Array]],
                          fake_features: Sequence[Sequence[jax.Array]], normalize: bool = False) -> jax.Array:
    """Mean over scales of the mean over layers of mean |real - fake| (`normalize`: each divided by
    mean |real| + 1e-3, the reference's `normalize_losses`). Real features are not detached: as in
    the reference, the generator's gradient flows into them only through its own input."""
    if len(real_features) != len(fake_features) or not real_features:
        raise ValueError("feature_matching_loss: need the same, non-zero number of real and fake scales")
    total = jnp.zeros((), jnp.float32)
    for reals, fakes in zip(real_features, fake_features):
        if len(reals) != len(fakes):
            raise ValueError("feature_matching_loss: a scale has different numbers of real and fake layers")
        terms = []
        for r, f in zip(reals, fakes):
            d = jnp.mean(jnp.abs(r - f))
            terms.append(d / (jnp.mean(jnp.abs(r)) + 1e-3) if normalize else d)
        total = total + sum(terms) / len(terms)
    return total / len(real_features)


def discriminator_losses(real_out, fake_out, normalize: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """EncodecDiscriminator.loss: (discriminator hinge loss, generator adversarial loss,
    feature-matching distance) from the discriminator's (logits, features) on reals and fakes."""
    (rl, rf), (fl, ff) = real_out, fake_out
    dis, adv = hinge_losses(rl, fl)
    return dis, adv, feature_matching_loss(rf, ff, normalize)


def kl_loss(mean: jax.Array, std: jax.Array) -> jax.Array:
    """The VAE bottleneck's KL to N(0, 1): sum over latent channels (last axis), mean over batch and time."""
    return vae_kl(mean, std)
