"""The short-time Fourier transform with torch.stft's semantics, shared by the STFT losses and the
multi-scale STFT discriminator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def hann_window(length: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window's default)."""
    n = np.arange(length)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / length)).astype(np.float32)


def stft(x: jax.Array, n_fft: int, hop: int, win_length: int | None = None, center: bool = True,
         window: np.ndarray | None = None) -> jax.Array:
    """Complex one-sided STFT of signals (N, T) -> (N, n_fft // 2 + 1, frames), as torch.stft
    (reflect padding when `center`; the window, Hann by default, zero-padded to n_fft in the middle)."""
    win_length = n_fft if win_length is None else win_length
    w = hann_window(win_length) if window is None else np.asarray(window, np.float32)
    left = (n_fft - win_length) // 2
    w = np.pad(w, (left, n_fft - win_length - left))
    if center:
        half = n_fft // 2
        if x.shape[-1] <= half:
            raise ValueError(f"stft: a signal of {x.shape[-1]} samples is too short to reflect-pad by {half} "
                             f"(n_fft {n_fft})")
        # reflect padding (no edge repeat), as slices: jnp.pad(mode="reflect") compiles slowly on CPU
        x = jnp.concatenate([x[:, 1:half + 1][:, ::-1], x, x[:, -half - 1:-1][:, ::-1]], axis=1)
    frames = 1 + (x.shape[-1] - n_fft) // hop
    if frames < 1:
        raise ValueError(f"stft: a signal of {x.shape[-1]} samples is shorter than n_fft {n_fft}")
    spec = jnp.fft.rfft(_frames(x, n_fft, hop, frames) * w, axis=-1)     # (N, frames, F)
    return jnp.swapaxes(spec, -1, -2)


def _frames(x: jax.Array, n_fft: int, hop: int, frames: int) -> jax.Array:
    """(N, T) -> (N, frames, n_fft) overlapping windows (a gather: of the framings tried, the one
    XLA compiles fastest on CPU)."""
    index = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
    return x[:, index]
