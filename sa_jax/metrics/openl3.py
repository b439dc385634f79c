"""FD_openl3: the Fréchet distance between OpenL3 embeddings of two sets, as stable-audio-metrics
computes it (its batched, true-stereo path):

each file peak-normalised to -1 dBFS -> resampled to the evaluation rate (soxr HQ; 44.1 kHz by
default) -> each channel resampled to 48 kHz (resampy kaiser_best, OpenL3's own step) -> 1 s windows,
hop 0.5 s, the first centred on 0 (half a window of zeros before the audio, zeros after to a whole
hop) -> OpenL3 (mel256, 512-d; openl3 0.4.2's kapre 0.3.7 front end by default) per channel -> L|R
concatenated per frame (mono duplicated; with channels=1, stereo is averaged instead) -> every frame of
every file one sample -> mean and covariance per set -> `frechet_distance`.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from sa_jax.audio import resample
from sa_jax.errors import AudioError
from sa_jax.metrics.audio import audio_files, read_normalized, resample_kaiser_best
from sa_jax.metrics.batching import BatchedModel, stream
from sa_jax.metrics.frechet import RunningStats, frechet_distance, load_stats

log = logging.getLogger("sa_jax")

HOP_SECONDS = 0.5
EVAL_RATE = 44100


def frame_windows(audio: np.ndarray, hop: int, window: int) -> np.ndarray:
    """(C, S) at the model's rate -> (C, frames, window): openl3's centred framing (window // 2
    zeros first, then zeros to the end of the last whole hop; a clip shorter than a window is one
    zero-padded window)."""
    x = np.pad(audio, ((0, 0), (window // 2, 0)))
    n = x.shape[1]
    extra = window - n if n < window else -(-(n - window) // hop) * hop - (n - window)
    if extra > 0:
        x = np.pad(x, ((0, 0), (0, extra)))
    frames = 1 + (x.shape[1] - window) // hop
    return np.lib.stride_tricks.sliding_window_view(x, window, axis=1)[:, ::hop][:, :frames]


@lru_cache(maxsize=None)
def _apply(config):
    """One apply function per config, so every OpenL3 of a config shares JAX's compiled programs."""
    from sa_jax.models.openl3 import OpenL3 as Network

    network = Network(config)
    return lambda variables, windows: network.apply(variables, windows)


class OpenL3:
    """A loaded OpenL3 audio embedding model.

        emb = OpenL3.load(path, content_type="music", input_repr="mel256", embedding_size=512)
        e = emb.embed(audio, sample_rate)    # (channels, samples) -> (frames, 2 * 512): L|R per frame
    """

    def __init__(self, config, variables: dict, batch_size: int = 64, hop_seconds: float = HOP_SECONDS):
        config.validate()
        self.config, self.variables = config, variables
        self.hop_seconds = float(hop_seconds)
        self.model = BatchedModel(_apply(config), variables, batch_size)

    @classmethod
    def load(cls, path, content_type: str = "music", input_repr: str = "mel256", embedding_size: int = 512,
             batch_size: int = 64, hop_seconds: float = HOP_SECONDS, frontend: str = "kapre037") -> "OpenL3":
        """From torchopenl3's `.pth.tar` or openl3's Keras `.h5` weights. `frontend`: "kapre037" computes
        the spectrogram as openl3 0.4.2 with kapre 0.3.7 does (what stable-audio-metrics pins, so its
        FD_openl3); "kapre014" as openl3 <= 0.3 and torchopenl3 do (sa_jax.models.openl3)."""
        from sa_jax.checkpoints.openl3 import load_openl3
        from sa_jax.models.openl3 import OpenL3Config

        config = OpenL3Config(input_repr=input_repr, content_type=content_type, embedding_size=embedding_size,
                              frontend=frontend)
        return cls(config, load_openl3(path, config), batch_size, hop_seconds)

    @property
    def name(self) -> str:
        return f"{self.config.name} hop {self.hop_seconds}"

    def windows(self, audio: np.ndarray, sample_rate: int, channels: int = 2) -> list[np.ndarray]:
        """(C, S) audio at `sample_rate` -> one (frames, 48000) array per embedded channel."""
        from sa_jax.models.openl3 import SAMPLE_RATE

        audio = np.asarray(audio, np.float32)
        if audio.ndim == 1:
            audio = audio[None]
        if audio.ndim != 2 or audio.shape[0] not in (1, 2) or audio.shape[1] == 0:
            raise AudioError(f"OpenL3 takes (channels, samples) audio with 1 or 2 channels, got shape {audio.shape}")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 (mono embedding) or 2 (L|R), got {channels}")
        if channels == 1 and audio.shape[0] == 2:
            audio = audio.mean(axis=0, keepdims=True)
        if sample_rate != SAMPLE_RATE:
            audio = resample_kaiser_best(audio, int(sample_rate), SAMPLE_RATE)
        frames = frame_windows(audio, int(self.hop_seconds * SAMPLE_RATE), SAMPLE_RATE)
        return [np.ascontiguousarray(f) for f in frames]

    def embed_windows(self, windows: np.ndarray) -> np.ndarray:
        """(n, 48000) windows -> (n, embedding_size)."""
        return self.model(np.asarray(windows, np.float32))

    @staticmethod
    def join(parts: list[np.ndarray], channels: int) -> np.ndarray:
        """Per-channel (frames, E) embeddings -> (frames, channels * E): L|R, mono duplicated."""
        if channels == 2 and len(parts) == 1:
            parts = parts * 2
        return np.concatenate(parts, axis=1)

    def embed(self, audio: np.ndarray, sample_rate: int, channels: int = 2) -> np.ndarray:
        """(C, S) -> (frames, channels * embedding_size)."""
        return self.join([self.embed_windows(w) for w in self.windows(audio, sample_rate, channels)], channels)

    def embed_files(self, files, sample_rate: int = EVAL_RATE, channels: int = 2, workers: int = 2,
                    progress: Callable[[int], None] | None = None):
        """Yield (id, (frames, channels * E)) for each file of a set (folder, list or {id: path}),
        read as the reference reads them: peak-normalised, then resampled to `sample_rate`."""
        files = audio_files(files)

        def prepare(item):
            _, path = item
            audio, sr = read_normalized(path)
            if audio.shape[0] > 2:
                raise AudioError(f"{path} has {audio.shape[0]} channels; FD_openl3 embeds mono or stereo files")
            return self.windows(resample(audio, sr, sample_rate), sample_rate, channels)

        for (fid, _), parts in stream(list(files.items()), prepare, self.model, workers, progress):
            yield fid, self.join(parts, channels)

    def statistics(self, files, sample_rate: int = EVAL_RATE, channels: int = 2, workers: int = 2,
                   progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """(mu, sigma, frames) over every frame of every file, holding only the running sums."""
        stats = RunningStats()
        for _, e in self.embed_files(files, sample_rate, channels, workers, progress):
            stats.add(e)
        mu, sigma = stats.result()
        return mu, sigma, stats.count

    def stats_name(self, sample_rate: int, channels: int) -> str:
        """What reference statistics made with these settings are called (checked when loading)."""
        return f"{self.name} {sample_rate} Hz {channels} ch"


def set_statistics(source, model, **kwargs):
    """(mu, sigma) of a set: an `.npz` of statistics, a (mu, sigma) pair, or audio files."""
    if isinstance(source, tuple) and len(source) == 2 and not isinstance(source[0], (str, Path)):   # not 2 files
        return np.asarray(source[0], np.float64), np.asarray(source[1], np.float64)
    if isinstance(source, (str, Path)) and str(source).endswith(".npz"):
        return load_stats(source, embedding=model.stats_name(kwargs.get("sample_rate", EVAL_RATE),
                                                             kwargs.get("channels", 2)))
    mu, sigma, _ = model.statistics(source, **kwargs)
    return mu, sigma


def fd_openl3(generated, reference, model: OpenL3, sample_rate: int = EVAL_RATE, channels: int = 2,
              workers: int = 2, progress: Callable[[int], None] | None = None) -> float:
    """FD_openl3 between two sets: each a folder, a list of files, an `.npz` of reference statistics
    (`mu_ref`/`sigma_ref`, as stable-audio-metrics and `sa-jax metrics --save-stats` write them) or a
    (mu, sigma) pair."""
    kw = dict(sample_rate=sample_rate, channels=channels, workers=workers, progress=progress)
    mu_g, sigma_g = set_statistics(generated, model, **kw)
    mu_r, sigma_r = set_statistics(reference, model, **kw)
    return frechet_distance(mu_g, sigma_g, mu_r, sigma_r)
