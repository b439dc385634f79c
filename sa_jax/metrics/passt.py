"""KL_passt: the KL divergence between PaSST's AudioSet label distributions of generated and reference
files paired by id, as stable-audio-metrics computes it:

each file read mono at 32 kHz (downmixed, then soxr HQ), peak-normalised to -1 dBFS; 10 s windows
every 5 s, starting at 0 while start < max(5 s, length - 5 s); a window shorter than 10 s is
zero-padded to 10 s when it is longer than 1.5 s, and used as it is otherwise; PaSST logits averaged
over the windows, then a softmax over the 527 classes; per pair
KL = sum p_gen (log p_gen - log(p_ref + 1e-6)); the mean over pairs.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from sa_jax.audio import read_audio, resample
from sa_jax.errors import MetadataError
from sa_jax.metrics.audio import audio_files, ids_text, peak_normalize
from sa_jax.metrics.batching import BatchedModel, stream

WINDOW_SECONDS, HOP_SECONDS, MIN_PAD_FRACTION = 10, 5, 0.15


def passt_windows(audio: np.ndarray, sample_rate: int = 32000) -> list[np.ndarray]:
    """Mono (samples,) -> the reference's analysis windows (each 10 s, or shorter when unpadded)."""
    window, hop = WINDOW_SECONDS * sample_rate, (WINDOW_SECONDS - HOP_SECONDS) * sample_rate
    out = []
    for start in range(0, max(hop, len(audio) - hop), hop):
        w = audio[start:start + window]
        if len(w) < window and len(w) > int(window * MIN_PAD_FRACTION):
            w = np.pad(w, (0, window - len(w)))
        out.append(w.astype(np.float32))
    return out


@lru_cache(maxsize=None)
def _apply(config):
    """One apply function per config, so every PaSST of a config shares JAX's compiled programs."""
    from sa_jax.models.passt import PaSST as Network

    network = Network(config)
    return lambda variables, audio: network.apply(variables, audio)


class PaSST:
    """A loaded PaSST tagger: `probabilities(audio)` -> (527,) label distribution."""

    def __init__(self, config, variables: dict, batch_size: int = 16):
        self.config, self.variables = config, variables
        self.model = BatchedModel(_apply(config), variables, batch_size)

    @classmethod
    def load(cls, path, batch_size: int = 16, config=None) -> "PaSST":
        """From hear21passt's `.pt` (passt_s_swa_p16_128_ap476; `config` only for other sizes)."""
        from sa_jax.checkpoints.passt import load_passt
        from sa_jax.models.passt import PaSSTConfig

        config = config or PaSSTConfig()
        return cls(config, load_passt(path, config), batch_size)

    def logits(self, windows: list[np.ndarray]) -> np.ndarray:
        """(n, 527) logits of the windows: the 10 s ones batched together, a short (unpadded) one alone."""
        full = [w for w in windows if len(w) == WINDOW_SECONDS * 32000]
        out = [self.model(np.stack(full))] if full else []
        out += [self.model(w[None]) for w in windows if len(w) != WINDOW_SECONDS * 32000]
        return np.concatenate(out)

    @staticmethod
    def to_probabilities(logits: np.ndarray) -> np.ndarray:
        """Window logits (n, 527) -> the softmax of their mean, in float64."""
        mean = np.asarray(logits, np.float64).mean(axis=0)
        e = np.exp(mean - mean.max())
        return e / e.sum()

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Mono (samples,) at 32 kHz, already normalised -> (527,)."""
        return self.to_probabilities(self.logits(passt_windows(audio)))

    def file_probabilities(self, files, workers: int = 2,
                           progress: Callable[[int], None] | None = None):
        """Yield (id, (527,)) for each file of a set; full windows of many files share device calls."""
        files = audio_files(files)
        full = WINDOW_SECONDS * 32000
        short: dict[str, list[np.ndarray]] = {}
        lock = threading.Lock()

        def prepare(item):
            fid, path = item
            windows = passt_windows(read_passt_audio(path))
            if any(len(w) != full for w in windows):      # a file under 1.5 s: its one window runs alone
                with lock:
                    short[fid] = windows
                return [np.zeros((0, full), np.float32)]
            return [np.stack(windows)]

        for (fid, _), (logits,) in stream(list(files.items()), prepare, self.model, workers, progress):
            if fid in short:
                logits = self.model(np.stack(short.pop(fid)))
            yield fid, self.to_probabilities(logits)


def read_passt_audio(path) -> np.ndarray:
    """librosa.load(path, sr=32000, mono=True) then peak -1 dBFS: (samples,) float32."""
    audio, sr = read_audio(path)
    return peak_normalize(resample(audio.mean(axis=0, keepdims=True), sr, 32000)[0])


def kl_divergence(p_gen: np.ndarray, p_ref: np.ndarray) -> float:
    """sum p_gen (log p_gen - log(p_ref + 1e-6)) (torch's kl_div(log(p_ref + 1e-6), p_gen, 'sum'))."""
    p_gen, p_ref = np.asarray(p_gen, np.float64), np.asarray(p_ref, np.float64)
    terms = np.where(p_gen > 0, p_gen * (np.log(np.where(p_gen > 0, p_gen, 1.0)) - np.log(p_ref + 1e-6)), 0.0)
    return float(terms.sum())


def load_reference_probabilities(path, classes: int = 527) -> dict[str, np.ndarray]:
    """{id: (classes,) float64} from stable-audio-metrics' reference probabilities (`.pkl`: a pickled dict
    of id -> torch tensor or NumPy array, as its `passt_kld` saves them), read without running code
    (sa_jax.metrics.pickles). Ids are matched as strings (the file names)."""
    from sa_jax.errors import CheckpointError
    from sa_jax.metrics.pickles import safe_load

    what = f"KL_passt reference probabilities {path}"
    data = safe_load(path, what)
    if not isinstance(data, dict) or not data:
        raise CheckpointError(f"{what} should hold a non-empty dict of id -> {classes} probabilities, "
                              f"got {type(data).__name__}{' (empty)' if isinstance(data, dict) else ''}")
    out = {}
    for key, p in data.items():
        p = np.asarray(p, np.float64) if isinstance(p, (np.ndarray, list, tuple)) else None
        if p is None or p.shape != (classes,) or not np.isfinite(p).all() or (p < 0).any() \
                or abs(p.sum() - 1.0) > 1e-3:
            raise CheckpointError(f"{what}: the entry of id {key!r} is not a distribution over {classes} "
                                  "AudioSet classes (non-negative, summing to 1)")
        if str(key) in out:
            raise CheckpointError(f"{what}: id {str(key)!r} appears twice")
        out[str(key)] = p
    return out


def kl_passt_report(generated, reference, model: PaSST, workers: int = 2,
                    progress: Callable[[int], None] | None = None) -> dict:
    """{'value': mean KL over pairs, 'pairs': n}. Every generated id needs a reference of that id: a
    file, or an entry of stable-audio-metrics' reference probabilities (`reference` a `.pkl`)."""
    gen = audio_files(generated, "generated set")
    from_pickle = isinstance(reference, (str, Path)) and str(reference).endswith(".pkl")
    ref = (load_reference_probabilities(reference, model.config.num_classes) if from_pickle
           else audio_files(reference, "reference set"))
    missing = [k for k in gen if k not in ref]
    if missing:
        raise MetadataError(f"{len(missing)} of {len(gen)} generated ids have no reference "
                            f"{'entry in ' + str(reference) if from_pickle else 'file'}: {ids_text(missing)} "
                            "(KL_passt pairs files by name without extension)")
    p_ref = ref if from_pickle else dict(model.file_probabilities({k: ref[k] for k in gen}, workers, progress))
    kls = [kl_divergence(p, p_ref[fid]) for fid, p in model.file_probabilities(gen, workers, progress)]
    return {"value": float(np.mean(kls)), "pairs": len(kls)}


def kl_passt(generated, reference, model: PaSST, workers: int = 2,
             progress: Callable[[int], None] | None = None) -> float:
    """KL_passt between two sets (folders, file lists or {id: path}) paired by id; `reference` may also
    be stable-audio-metrics' reference probabilities (a `.pkl`)."""
    return kl_passt_report(generated, reference, model, workers, progress)["value"]
