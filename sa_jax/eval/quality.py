"""Sanity measures of generated audio: level and spectral flatness (is it silent? is it noise?)."""

from __future__ import annotations

import numpy as np


def rms_db(audio: np.ndarray) -> float:
    """RMS level of the whole clip in dBFS (-inf for digital silence)."""
    ms = float(np.mean(np.asarray(audio, np.float64) ** 2))
    return 10 * np.log10(ms) if ms > 0 else float("-inf")


def spectral_flatness(audio: np.ndarray, n_fft: int = 2048) -> float:
    """Mean over frames (hop n_fft / 2, Hann, mono mix, frames above -60 dB of the loudest only) of the
    geometric over the arithmetic mean of the power spectrum: ~1 for white noise, near 0 for tones."""
    x = np.asarray(audio, np.float64)
    x = x.mean(axis=0) if x.ndim == 2 else x
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    hop = n_fft // 2
    frames = 1 + (x.size - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft), axis=-1)) ** 2 + 1e-20
    energy = power.sum(axis=1)
    keep = energy > energy.max() * 1e-6
    p = power[keep]
    return float(np.mean(np.exp(np.mean(np.log(p), axis=1)) / np.mean(p, axis=1)))
