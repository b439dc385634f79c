"""Reading audio for training: probe a file's header cheaply, then decode only the window a crop
needs (seek, read, resample) instead of the whole file.

Whole-file loading for inference lives in `sa_jax.audio` (`load_audio`). This module adds what the
data pipeline needs on top: seekable partial reads, reads from in-memory bytes (TFDS records),
soxr resampling without importing librosa in every worker, the reference's channel rule (mono
copied, extra channels dropped), and a `BadAudio` error carrying a short reason code so skipped
files can be counted by cause.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sa_jax.audio import resample
from sa_jax.errors import BadAudio

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")

# Extra source samples read on each side of a crop before resampling, so the resampler's filter
# has real context at the crop edges (soxr_hq's delay is well under this at any common rate).
_RESAMPLE_MARGIN_S = 0.02


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    frames: int      # length at the file's own rate
    channels: int

    def frames_at(self, sample_rate: int) -> int:
        """Length after resampling to `sample_rate` (the resampler's own output length)."""
        if sample_rate == self.sample_rate:
            return self.frames
        return int(math.ceil(self.frames * sample_rate / self.sample_rate))


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: int | None = None


@contextlib.contextmanager
def _quiet_stderr(on: bool = True):
    """Send file descriptor 2 to /dev/null while libsndfile's MP3 decoder (mpg123) runs: it prints
    its resync notes and errors there itself (dozens of lines for one bad file), and the reason is
    reported as a BadAudio anyway. Counted, so overlapping decodes in threads restore it once."""
    global _quiet_depth, _quiet_saved
    if not on:
        yield
        return
    with _quiet_lock:
        if _quiet_depth == 0:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            null = os.open(os.devnull, os.O_WRONLY)
            _quiet_saved = os.dup(2)
            os.dup2(null, 2)
            os.close(null)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _quiet_saved is not None:
                os.dup2(_quiet_saved, 2)
                os.close(_quiet_saved)
                _quiet_saved = None


def _is_mp3(src) -> bool:
    if isinstance(src, (bytes, bytearray)):
        return src[:3] == b"ID3" or (len(src) > 1 and src[0] == 0xFF and src[1] & 0xE0 == 0xE0)
    return Path(src).suffix.lower() == ".mp3"


def _open(src, what: str, quiet: bool = False):
    """`quiet`: silence the MP3 decoder while opening (probe, at scan time, in the main process; not
    per crop in training, where it would hide other threads' output)."""
    import soundfile as sf

    mp3 = _is_mp3(src)
    try:
        # Paths go to libsndfile as the file system's bytes: a name that is not UTF-8 (a str with
        # surrogate escapes from os.listdir) opens like any other.
        with _quiet_stderr(mp3 and quiet):
            return sf.SoundFile(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else os.fsencode(src))
    except Exception as e:  # LibsndfileError, RuntimeError, TypeError depending on the failure
        if mp3:
            raise BadAudio("unreadable", f"{what} is not a decodable MP3 (no valid MPEG audio frames)") from None
        raise BadAudio("unreadable", f"{what} could not be opened as audio ({e})") from None


def _wav_truncated(path: Path) -> str | None:
    """libsndfile quietly reads a cut-off WAV as a shorter file; compare the size its RIFF header
    declares for the data chunk with the bytes actually there."""
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            cid, clen = struct.unpack("<4sI", f.read(8))
            if cid == b"data":
                have = size - pos - 8
                if clen != 0xFFFFFFFF and clen > have:
                    return f"its header declares {clen} bytes of audio but the file holds {have}"
                return None
            pos += 8 + clen + (clen & 1)
    return None


def probe(src: str | Path | bytes, what: str | None = None) -> AudioInfo:
    """Read only the header: rate, length, channels. Raises BadAudio for files the pipeline
    cannot use (unknown format, unreadable, zero-length, zero rate)."""
    what = what or str(src)[:200]
    if not isinstance(src, (bytes, bytearray)):
        p = Path(src)
        if p.suffix.lower() not in AUDIO_EXTENSIONS:
            raise BadAudio("unknown_format", f"{what}: extension {p.suffix!r} is not one of {AUDIO_EXTENSIONS}")
        if not p.is_file():
            raise BadAudio("missing", f"{what} does not exist")
        if p.stat().st_size == 0:
            raise BadAudio("empty", f"{what} is a zero-byte file")
        if p.suffix.lower() == ".wav":
            why = _wav_truncated(p)
            if why:
                raise BadAudio("truncated", f"{what}: {why}")
    with _open(src, what, quiet=True) as f:
        info = AudioInfo(int(f.samplerate), int(f.frames), int(f.channels))
    if info.sample_rate <= 0:
        raise BadAudio("unreadable", f"{what} reports a sample rate of {info.sample_rate}")
    if info.frames <= 0:
        raise BadAudio("empty", f"{what} has no samples")
    if info.channels <= 0:
        raise BadAudio("unreadable", f"{what} reports {info.channels} channels")
    return info


def to_stereo(audio: np.ndarray, channels: int = 2) -> np.ndarray:
    """(C, S) -> (channels, S) as the reference does it: mono is copied, extra channels dropped
    (for channels=1: averaged)."""
    c = audio.shape[0]
    if c == channels:
        return audio
    if channels == 1:
        return audio.mean(axis=0, keepdims=True)
    if c == 1:
        return np.repeat(audio, channels, axis=0)
    if c > channels:
        return audio[:channels]
    raise BadAudio("channels", f"cannot make {channels} channels from {c}")


def read_window(src: str | Path | bytes, info: AudioInfo, sample_rate: int, offset: int, length: int,
                channels: int = 2, what: str | None = None) -> np.ndarray:
    """Decode `length` samples at `sample_rate` starting at sample `offset` (both at `sample_rate`),
    as float32 (channels, n) with n <= length (shorter only at the end of the file).

    Only the needed stretch of the file is read. Raises BadAudio on decode errors, on files much
    shorter than their header says (truncated), and on NaN/inf samples."""
    what = what or str(src)[:200]
    sr_in = info.sample_rate
    total_out = info.frames_at(sample_rate)
    length = max(0, min(length, total_out - offset))
    if length == 0:
        raise BadAudio("empty", f"{what}: nothing to read at offset {offset} of {total_out}")
    resampling = sr_in != sample_rate
    if not resampling:
        start, stop = offset, offset + length
    else:
        margin = int(math.ceil(_RESAMPLE_MARGIN_S * sr_in))
        # Start on a sample that maps to a whole output sample (a multiple of sr_in / gcd), so the
        # resampled piece lines up exactly with the whole-file resampling.
        step = sr_in // math.gcd(sr_in, sample_rate)
        start = max(0, int(math.floor(offset * sr_in / sample_rate)) - margin)
        start = start // step * step
        stop = min(info.frames, int(math.ceil((offset + length) * sr_in / sample_rate)) + margin)
    try:
        with _open(src, what) as f:
            if start:
                f.seek(start)
            data = f.read(stop - start, dtype="float32", always_2d=True)
    except BadAudio:
        raise
    except Exception as e:
        raise BadAudio("decode_error", f"{what}: decoding failed ({e})") from None
    got = data.shape[0]
    if got < (stop - start) * 0.98 - 2048 or got == 0:
        raise BadAudio("truncated", f"{what}: header says {info.frames} frames but only "
                                    f"{start + got} could be decoded")
    x = np.ascontiguousarray(data.T)
    # One float64 reduction instead of a full boolean mask: NaN/inf propagate into the sum, and
    # float32 magnitudes cannot overflow a float64 sum.
    if not math.isfinite(float(np.sum(x, dtype=np.float64))):
        raise BadAudio("nan", f"{what}: {int((~np.isfinite(x)).sum())} NaN/inf samples in the crop")
    if resampling:
        y = resample(x, sr_in, sample_rate)
        # Sample index in the output of the first sample read: start * ratio.
        first = start * sample_rate // sr_in
        y = y[:, offset - first: offset - first + length]
    else:
        y = x
    if y.shape[1] < length:  # decoder returned slightly less than the header (mp3 padding): pad
        y = np.pad(y, ((0, 0), (0, length - y.shape[1])))
    return to_stereo(y.astype(np.float32, copy=False), channels)


def read_all(src, sample_rate: int, channels: int = 2, what: str | None = None) -> tuple[np.ndarray, AudioInfo]:
    """The whole file at `sample_rate`, float32 (channels, n)."""
    info = probe(src, what)
    n = info.frames_at(sample_rate)
    return read_window(src, info, sample_rate, 0, n, channels, what), info


def peak_db(audio: np.ndarray) -> float:
    peak = max(float(audio.max()), -float(audio.min())) if audio.size else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf
