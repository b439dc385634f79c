"""Audio as the reference metrics read it: the files of a set (by id), peak normalisation to -1 dBFS,
and resampy's `kaiser_best` resampler (OpenL3's own step to 48 kHz).

The resampler is resampy 0.2's algorithm (the version openl3 0.4.2 pins): a Kaiser-windowed sinc
(64 zero crossings, beta 14.7697, roll-off 0.94759, tabulated 512 times per crossing and
linearly interpolated in the table). resampy walks output samples one by one in numba; here the
table is evaluated once per phase of the rational rate ratio and applied as one gather + matmul per
chunk of outputs, so it is plain NumPy and matches resampy to float rounding (tests/test_metrics_openl3.py).
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from sa_jax.audio import read_audio
from sa_jax.errors import NoUsableData

log = logging.getLogger("sa_jax")

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
PEAK_DBFS = -1.0    # all three reference metrics first peak-normalise each file to -1 dBFS


def audio_files(source, what: str = "audio set") -> dict[str, Path]:
    """{id: path} of a set: a folder (its audio files, not recursive), a list of files, or a
    {id: path} mapping. The id is the file name without its extension; an empty set or two files
    with one id is an error."""
    if isinstance(source, Mapping):
        files = {str(k): Path(v) for k, v in source.items()}
    else:
        if isinstance(source, (str, Path)):
            folder = Path(source)
            if not folder.is_dir():
                raise FileNotFoundError(f"{what} {folder} is not a folder")
            paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
            if not paths:
                raise NoUsableData(f"{what} {folder} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
        else:
            paths = [Path(p) for p in source]
        files = {}
        for p in paths:
            if p.stem in files:
                raise ValueError(f"{what}: {files[p.stem]} and {p} have the same id '{p.stem}'; ids must be unique")
            files[p.stem] = p
    if not files:
        raise NoUsableData(f"{what} is empty")
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{what}: {len(missing)} file(s) do not exist: {', '.join(missing[:5])}")
    return files


def peak_normalize(audio: np.ndarray, dbfs: float = PEAK_DBFS) -> np.ndarray:
    """Scale so the largest |sample| over all channels is `dbfs` (pyloudnorm.normalize.peak). Silent
    audio stays silent (the reference would divide by zero)."""
    peak = float(np.max(np.abs(audio)))
    if peak == 0.0:
        return audio
    return (audio * (10.0 ** (dbfs / 20.0) / peak)).astype(audio.dtype, copy=False)


def read_normalized(path: str | Path) -> tuple[np.ndarray, int]:
    """A file as float32 (channels, samples) at its own rate, peak-normalised to -1 dBFS."""
    audio, sr = read_audio(path)
    normalized = peak_normalize(audio)
    if normalized is audio:
        log.warning("%s is silent; it is scored as it is", path)
    return normalized, sr


# --------------------------------------------------------------------------------------------
# resampy's kaiser_best

_ZEROS, _TABLE, _BETA, _ROLLOFF = 64, 512, 14.769656459379492, 0.9475937167399596


@lru_cache(maxsize=1)
def kaiser_best_window() -> np.ndarray:
    """The right half of resampy's `kaiser_best` interpolation window (64 * 512 + 1 values)."""
    from scipy.signal.windows import kaiser

    n = _ZEROS * _TABLE
    sinc = _ROLLOFF * np.sinc(_ROLLOFF * np.linspace(0, _ZEROS, num=n + 1, endpoint=True))
    return kaiser(2 * n + 1, _BETA)[n:] * sinc


@lru_cache(maxsize=8)
def _phase_kernels(sr_orig: int, sr_new: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(kernels (p, 2K) over input offsets -(K-1)..K, input index of each phase (p,), K) for the
    p = sr_new / gcd output phases of the ratio."""
    g = math.gcd(sr_orig, sr_new)
    p, q = sr_new // g, sr_orig // g
    ratio = sr_new / sr_orig
    win = kaiser_best_window() * (ratio if ratio < 1 else 1.0)
    delta = np.zeros_like(win)
    delta[:-1] = np.diff(win)
    scale = min(1.0, ratio)
    step = int(scale * _TABLE)
    taps = len(win) // step                  # the most taps on one side
    phase = np.arange(p)
    n_phase = (phase * q) // p
    frac = scale * ((phase * q - n_phase * p) / p)

    def side(frac):
        index = frac * _TABLE
        offset = index.astype(np.int64)
        eta = index - offset
        pos = offset[:, None] + np.arange(taps)[None, :] * step
        ok = np.arange(taps)[None, :] < ((len(win) - offset) // step)[:, None]    # resampy's tap count
        pos = np.where(ok, pos, 0)
        return np.where(ok, win[pos] + eta[:, None] * delta[pos], 0.0)

    left, right = side(frac), side(scale - frac)       # left[i] weighs x[n - i], right[k] x[n + 1 + k]
    kernels = np.concatenate([left[:, ::-1], right], axis=1)
    return kernels, n_phase, taps


def resample_kaiser_best(audio: np.ndarray, sr_orig: int, sr_new: int, chunk: int = 1 << 15) -> np.ndarray:
    """(C, S) -> (C, int(S * sr_new / sr_orig)) as resampy.resample(..., filter='kaiser_best')."""
    audio = np.asarray(audio)
    if sr_orig <= 0 or sr_new <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_orig} -> {sr_new}")
    n_out = int(audio.shape[-1] * (float(sr_new) / sr_orig))
    if n_out < 1:
        raise ValueError(f"{audio.shape[-1]} samples are too few to resample from {sr_orig} to {sr_new} Hz")
    kernels, n_phase, taps = _phase_kernels(int(sr_orig), int(sr_new))
    p, q = len(n_phase), int(sr_orig) // math.gcd(int(sr_orig), int(sr_new))
    x = np.pad(audio.astype(np.float64), ((0, 0), (taps - 1, taps + 1)))
    windows = np.lib.stride_tricks.sliding_window_view(x, 2 * taps, axis=-1)    # (C, S', 2K)
    out = np.empty((audio.shape[0], n_out), np.float64)
    for start in range(0, n_out, chunk):
        t = np.arange(start, min(start + chunk, n_out))
        phase = t % p
        n = (t // p) * q + n_phase[phase]
        out[:, t] = np.einsum("ctk,tk->ct", windows[:, n], kernels[phase])
    return out.astype(audio.dtype if np.issubdtype(audio.dtype, np.floating) else np.float32)


def ids_text(ids: Iterable[str], limit: int = 10) -> str:
    ids = sorted(ids)
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
