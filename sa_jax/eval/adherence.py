"""Text adherence on the attributes the synthetic corpus controls (`sa_jax.data.synth`).

Method. For each attribute below, prompts name one of its values (in the corpus' own prompt
forms: `key: value` or the bare value, as `sa_jax.data.metadata.build_prompt` makes them); the
generated clips are measured back from the audio and a clip counts as a match when its measured
value is the prompted one. The score of an attribute is the fraction of matches; chance is
1 / (number of values), what a model that ignores the prompt would score on balanced prompts.
The same measurement applied to the corpus' own clips against their metadata (`oracle`) is the
ceiling the measurement itself allows. Each fraction comes with its 95% Wilson interval and, against
chance, the exact one-sided binomial p-value (`sa_jax.eval.stats`).

- instrument (5 values): a multinomial logistic regression on standardised timbre features of the sounding
  STFT frames (MFCC means and spreads, flatness, centroid, the envelope's level statistics), fitted on
  freshly synthesized reference clips (`reference_classifier`: 250 clips of up to 4 s, seed 12345, a seed
  no test or study corpus uses); it names the instrument of every one of 124 unseen corpus clips (24 of
  seed 1, 100 of seed 2, up to 8 s), where the nearest-class-mean band-energy classifier it replaced named
  0.50 and 0.72 (docs/ablations/README.md, part 4);
- root (12 pitch classes; the prompt names `key: X major|minor`): `synth.measure`'s chroma peak (60-800 Hz);
- mode (major / minor): `synth.measure`, the major third above the root against the minor third;
- tempo (slow < 100 <= medium < 140 <= fast BPM; the prompt names bpm and density): `synth.measure`'s
  onset rate x 60 / the prompted notes per beat, binned;
- stereo (left / center / right): the pan recovered from the L/R energy ratio, nearest of -0.7 / 0 / 0.7;
- loudness (quiet / medium / loud): the RMS level in dBFS, nearest of -30 / -22 / -15.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from sa_jax.data import synth
from sa_jax.eval.stats import binomial_p_above, wilson_interval

TEMPO_BINS = (("slow", 60, 100), ("medium", 100, 140), ("fast", 140, 181))
ATTRIBUTES = ("instrument", "root", "mode", "tempo", "stereo", "loudness")


def tempo_class(bpm: float) -> str:
    """slow / medium / fast by the BPM bins of TEMPO_BINS (below the first bin is slow, above the last fast)."""
    for name, _, hi in TEMPO_BINS:
        if bpm < hi:
            return name
    return TEMPO_BINS[-1][0]


def values_of(attribute: str) -> tuple[str, ...]:
    return {"instrument": tuple(v[0] for v in synth.INSTRUMENTS.values()), "root": synth.NOTE_NAMES,
            "mode": ("major", "minor"), "tempo": tuple(b[0] for b in TEMPO_BINS),
            "stereo": tuple(synth.STEREO), "loudness": tuple(synth.LOUDNESS)}[attribute]


# --- instrument features -----------------------------------------------------------------------

N_FFT, HOP, N_MELS, N_MFCC = 2048, 512, 128, 20
SOUNDING_DB = 40.0      # frames this far below the loudest one (a silent tail, a decoder's floor) are left out


@functools.lru_cache(maxsize=4)
def _mel_filterbank(sample_rate: int):
    """(N_MELS, N_FFT // 2 + 1) triangles evenly spaced on the HTK mel scale from 0 Hz to Nyquist, each of
    unit area, as a sparse matrix (each band spans a few bins; a dense product goes through threaded BLAS,
    which crawls on busy shared cores)."""
    from scipy import sparse

    def mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges = 700.0 * (10 ** (np.linspace(0.0, mel(sample_rate / 2), N_MELS + 2) / 2595.0) - 1.0)
    f = np.fft.rfftfreq(N_FFT, 1.0 / sample_rate)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    triangles = np.maximum(0.0, np.minimum((f - lo) / (mid - lo), (hi - f) / (hi - mid)))
    return sparse.csr_array(triangles * (2.0 / (hi - lo)))


def instrument_features(audio: np.ndarray, sample_rate: int = synth.SAMPLE_RATE) -> np.ndarray:
    """44 timbre features of (channels, samples) audio, over the Hann STFT frames (2048 / hop 512, centred,
    zero-padded) within SOUNDING_DB of the loudest: the means and standard deviations of 20 MFCCs (DCT-II
    of the 128-band mel power in dB, floored 80 dB below its peak), the log of the mean spectral flatness
    and of the mean spectral centroid, and the mean and standard deviation of the frame level (dB relative
    to the loudest frame: the notes' envelope). Finite for any finite input, silence and clips shorter than
    one frame included. NumPy and SciPy only: importing librosa here would register its lazy `resampy`
    module, which breaks a later torch import in the same process where resampy cannot be imported."""
    from scipy import fft, signal

    mono = np.asarray(audio, np.float64)
    mono = mono.mean(axis=0) if mono.ndim == 2 else mono
    padded = np.pad(mono, (N_FFT // 2, N_FFT // 2 + max(0, N_FFT - mono.size)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(fft.rfft(frames * signal.get_window("hann", N_FFT), axis=-1)) ** 2    # (frames, bins)
    level = power.sum(1)
    sounding = level > level.max() * 10 ** (-SOUNDING_DB / 10)
    if sounding.sum() > 4:      # with 4 or fewer sounding frames (silence, one click) every frame counts
        power, level = power[sounding], level[sounding]
    mel_db = 10 * np.log10(np.maximum(_mel_filterbank(sample_rate) @ power.T, 1e-10))     # (bands, frames)
    mfcc = fft.dct(np.maximum(mel_db, mel_db.max() - 80.0), type=2, norm="ortho", axis=0)[:N_MFCC]
    floored = np.maximum(power, 1e-10)
    flatness = np.exp(np.log(floored).mean(1)) / floored.mean(1)
    magnitude = np.sqrt(power)
    f = np.fft.rfftfreq(N_FFT, 1.0 / sample_rate)
    centroid = (magnitude @ f) / np.maximum(magnitude.sum(1), 1e-20)
    envelope = 10 * np.log10(level / max(level.max(), 1e-20) + 1e-9)
    return np.concatenate([mfcc.mean(1), mfcc.std(1), [np.log(flatness.mean() + 1e-12),
                                                       np.log(centroid.mean() + 1e-3), envelope.mean(),
                                                       envelope.std()]])


def _softmax_regression(z: np.ndarray, y: np.ndarray, n_classes: int, l2: float) -> np.ndarray:
    """Weights (features + 1, classes) of a multinomial logistic regression on standardised features `z`
    and class indices `y`: summed cross-entropy + l2 / 2 * |weights|^2 (the bias row unpenalised),
    minimised by L-BFGS from zero, so the same data always give the same weights."""
    from scipy.optimize import minimize

    x = np.concatenate([z, np.ones((len(z), 1))], axis=1)
    onehot = np.eye(n_classes)[y]
    penalised = np.ones((x.shape[1], 1))
    penalised[-1] = 0.0

    def loss_and_grad(flat):
        w = flat.reshape(x.shape[1], n_classes)
        logits = x @ w
        logits -= logits.max(1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        loss = -(onehot * log_p).sum() + 0.5 * l2 * ((w * penalised) ** 2).sum()
        grad = x.T @ (np.exp(log_p) - onehot) + l2 * w * penalised
        return loss, grad.ravel()

    fit = minimize(loss_and_grad, np.zeros(x.shape[1] * n_classes), jac=True, method="L-BFGS-B",
                   options={"maxiter": 2000})
    return fit.x.reshape(x.shape[1], n_classes)


@dataclass
class InstrumentClassifier:
    """Multinomial logistic regression (L2) over standardised `instrument_features`."""

    classes: tuple[str, ...]
    weights: np.ndarray         # (features + 1 for the bias, classes)
    mu: np.ndarray
    sd: np.ndarray

    L2 = 1.0                    # the penalty on the weights: the summed loss's scale, as scikit-learn's C = 1

    @classmethod
    def fit(cls, clips: Sequence[np.ndarray], labels: Sequence[str], sample_rate: int = synth.SAMPLE_RATE):
        y = np.asarray(labels)
        classes = tuple(sorted(set(y.tolist())))
        if len(classes) < 2:
            raise ValueError(f"the instrument classifier needs clips of at least 2 instruments, got {classes}")
        if len(clips) != len(y):
            raise ValueError(f"got {len(clips)} clips but {len(y)} labels; one label per clip")
        x = np.stack([instrument_features(a, sample_rate) for a in clips])
        mu, sd = x.mean(0), x.std(0) + 1e-6
        index = np.searchsorted(np.asarray(classes), y)
        return cls(classes, _softmax_regression((x - mu) / sd, index, len(classes), cls.L2), mu, sd)

    def scores(self, audio: np.ndarray, sample_rate: int = synth.SAMPLE_RATE) -> np.ndarray:
        """The logits of `audio` per class of `classes`."""
        z = (instrument_features(audio, sample_rate) - self.mu) / self.sd
        return np.append(z, 1.0) @ self.weights

    def predict(self, audio: np.ndarray, sample_rate: int = synth.SAMPLE_RATE) -> str:
        return self.classes[int(np.argmax(self.scores(audio, sample_rate)))]


def reference_classifier(count: int = 250, seed: int = 12345, max_seconds: float = 4.0) -> InstrumentClassifier:
    """An instrument classifier fitted on `count` clips synthesized afresh (seed `seed`, durations 1 s to
    `max_seconds`); the defaults are `sa-jax evaluate`'s. Fitting 250 clips takes a few seconds."""
    clips, labels = [], []
    for i in range(count):
        a, m = synth.synth_clip(seed, i, max_seconds=max_seconds)
        clips.append(a)
        labels.append(m["instrument"])
    return InstrumentClassifier.fit(clips, labels)


# --- measuring one attribute -------------------------------------------------------------------

def measured_value(attribute: str, audio: np.ndarray, sample_rate: int, context: dict,
                   classifier: InstrumentClassifier | None = None, m: dict | None = None) -> str:
    """The value of `attribute` measured from `audio`. `context` gives what the measurement needs
    from the prompt (tempo: `notes_per_beat`); `m` is `synth.measure(audio)` if already computed."""
    if attribute == "instrument":
        if classifier is None:
            raise ValueError("measuring the instrument needs an InstrumentClassifier")
        return classifier.predict(audio, sample_rate)
    m = m if m is not None else synth.measure(audio, sample_rate)
    if attribute == "root":
        return m["root"]
    if attribute == "mode":
        return m["mode"]
    if attribute == "tempo":
        return tempo_class(m["onsets_per_second"] * 60.0 / float(context["notes_per_beat"]))
    if attribute == "stereo":
        return min(synth.STEREO, key=lambda k: abs(synth.STEREO[k] - m["pan"]))
    if attribute == "loudness":
        return min(synth.LOUDNESS, key=lambda k: abs(synth.LOUDNESS[k] - m["loudness_db"]))
    raise ValueError(f"unknown attribute {attribute!r}; known: {', '.join(ATTRIBUTES)}")


def metadata_value(attribute: str, meta: dict) -> str:
    """The value of `attribute` in a corpus clip's metadata."""
    if attribute == "tempo":
        return tempo_class(meta["bpm"])
    key = {"instrument": "instrument", "root": "root", "mode": "mode", "stereo": "stereo", "loudness": "loudness"}
    return str(meta[key[attribute]])


def _summary(hits: dict) -> dict:
    """{attribute: {accuracy, accuracy_low, accuracy_high (95% Wilson), matches, count, chance, p_value
    (P(matches >= this) at chance)}} of {attribute: [matched?, ...]}."""
    out = {}
    for a, h in hits.items():
        k, n, chance = int(np.sum(h)), len(h), 1.0 / len(values_of(a))
        low, high = wilson_interval(k, n)
        out[a] = {"accuracy": k / n, "accuracy_low": low, "accuracy_high": high, "matches": k, "count": n,
                  "chance": chance, "p_value": binomial_p_above(k, n, chance)}
    return out


def oracle(clips: Sequence[tuple[np.ndarray, dict]], sample_rate: int = synth.SAMPLE_RATE,
           classifier: InstrumentClassifier | None = None, attributes: Sequence[str] = ATTRIBUTES) -> dict:
    """The measurement applied to corpus clips against their own metadata: {attribute: {accuracy,
    chance, count}}, the ceiling of `adherence_eval`."""
    hits = defaultdict(list)
    for audio, meta in clips:
        m = synth.measure(audio, sample_rate)
        for a in attributes:
            got = measured_value(a, audio, sample_rate, meta, classifier, m)
            hits[a].append(got == metadata_value(a, meta))
    return _summary(hits)


# --- prompts and a model -------------------------------------------------------------------------

def prompt_for(attribute: str, value: str, rng: np.random.Generator) -> tuple[str, dict]:
    """A prompt naming `value` of `attribute` (plus what its measurement needs), and that context."""
    key_value = bool(rng.random() < 0.5)

    def join(fields):
        return " | ".join(f"{k}: {v}" for k, v in fields) if key_value else ", ".join(str(v) for _, v in fields)

    if attribute == "instrument":
        return join([("instrument", value)]), {}
    if attribute in ("root", "mode"):
        root = value if attribute == "root" else synth.NOTE_NAMES[int(rng.integers(12))]
        mode = value if attribute == "mode" else ("major", "minor")[int(rng.integers(2))]
        return join([("key", f"{root} {mode}")]), {}
    if attribute == "tempo":
        lo, hi = {b[0]: (b[1], b[2]) for b in TEMPO_BINS}[value]
        bpm = int(rng.integers(lo + 5, hi - 5))   # away from the bin edges
        density = tuple(synth.DENSITY)[int(rng.integers(len(synth.DENSITY)))]
        return join([("bpm", bpm), ("density", density)]), {"notes_per_beat": synth.DENSITY[density]}
    if attribute in ("stereo", "loudness"):
        return join([(attribute, value)]), {}
    raise ValueError(f"unknown attribute {attribute!r}; known: {', '.join(ATTRIBUTES)}")


def values_per_attribute(attribute: str, per_attribute: int) -> int:
    """Prompts per value so that `attribute` gets at least `per_attribute` generations, its values balanced
    (48: instrument 5 x 10, root 12 x 4, mode 2 x 24, tempo / stereo / loudness 3 x 16)."""
    return max(1, math.ceil(per_attribute / len(values_of(attribute))))


def adherence_eval(generate: Callable[[list[str], int], np.ndarray], sample_rate: int,
                   classifier: InstrumentClassifier, attributes: Sequence[str] = ATTRIBUTES,
                   per_value: int | None = None, per_attribute: int = 48, seed: int = 0, batch: int = 8) -> dict:
    """Prompts naming each value of each attribute, `per_value` times each (None: enough for
    `per_attribute` generations per attribute, `values_per_attribute`); `generate(prompts, first_item)`
    returns (batch, channels, samples) audio at `sample_rate` for generations first_item, first_item + 1, ...
    of the evaluation (each draws its noise from its own number, so batching does not change them).
    Returns `_summary` per attribute plus "items" (item, prompt, attribute, wanted, measured)."""
    if int(batch) < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if per_value is not None and int(per_value) < 1:
        raise ValueError(f"per_value must be at least 1 (or None: from per_attribute), got {per_value}")
    if per_value is None and int(per_attribute) < 1:
        raise ValueError(f"per_attribute must be at least 1, got {per_attribute}")
    rng = np.random.default_rng(seed)
    jobs = []
    for a in attributes:
        repeats = int(per_value) if per_value is not None else values_per_attribute(a, int(per_attribute))
        for v in values_of(a):
            for _ in range(repeats):
                prompt, ctx = prompt_for(a, v, rng)
                jobs.append((a, v, prompt, ctx))
    hits, items = defaultdict(list), []
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        audio = generate([p for _, _, p, _ in chunk], i)
        for n, ((a, v, p, ctx), clip) in enumerate(zip(chunk, audio), i):
            got = measured_value(a, clip, sample_rate, ctx, classifier)
            hits[a].append(got == v)
            items.append({"item": n, "attribute": a, "prompt": p, "wanted": v, "measured": got})
    return {**_summary(hits), "items": items}
