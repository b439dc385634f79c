"""Audio files in and out: any format soundfile reads (WAV, FLAC, OGG, MP3), any rate, any channel
count in; float32 (channels, samples) at the model's rate out. Writes are atomic."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from sa_jax.errors import AudioError


def check_finite(audio: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(audio)
    if bad.any():
        raise AudioError(f"{what} has {int(bad.sum())} NaN or infinite value(s); all samples must be finite")


def to_channels(audio: np.ndarray, channels: int, what: str = "audio") -> np.ndarray:
    """(C, S) -> (channels, S): mono is copied to every channel, stereo averaged to mono."""
    have = audio.shape[0]
    if have == channels:
        return audio
    if have == 1:
        return np.repeat(audio, channels, axis=0)
    if channels == 1:
        return audio.mean(axis=0, keepdims=True)
    raise AudioError(f"{what} has {have} channels; sa-jax converts mono to {channels} channels, "
                     f"but not {have} channels to {channels}")


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """(C, S) -> (C, ceil(S * target_sr / orig_sr)) with soxr at high quality (librosa's
    "soxr_hq", called directly: importing librosa is slow in every data worker)."""
    if orig_sr == target_sr:
        return audio
    import soxr

    y = soxr.resample(np.ascontiguousarray(audio.T), orig_sr, target_sr, quality="HQ")
    return np.ascontiguousarray(y.T, dtype=np.float32)


def load_audio(path: str | Path, sample_rate: int, channels: int = 2) -> np.ndarray:
    """Read `path` as float32 (channels, samples) at `sample_rate`."""
    audio, sr = read_audio(path)
    audio = to_channels(resample(audio, sr, sample_rate), channels, str(path))
    return np.ascontiguousarray(audio, dtype=np.float32)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read `path` as it is: float32 (channels, samples) and its sample rate; unreadable, empty or
    non-finite audio is an AudioError."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} does not exist")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError or TypeError
        raise AudioError(f"{path} could not be decoded as audio ({e}); "
                         "readable formats are WAV, FLAC, OGG and MP3") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path} has no samples")
    audio = data.T
    check_finite(audio, str(path))
    return audio, sr


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}{path.suffix}"


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write (channels, samples) float audio as a 32-bit float WAV, atomically."""
    import soundfile as sf

    path = Path(path)
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 2:
        raise AudioError(f"audio to write must be (channels, samples), got shape {audio.shape}")
    tmp = _atomic_target(path)
    try:
        sf.write(str(tmp), audio.T, sample_rate, subtype="FLOAT", format="WAV")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_npy(path: str | Path, array: np.ndarray) -> Path:
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
