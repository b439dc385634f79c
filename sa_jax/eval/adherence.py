"""Text adherence on the attributes the synthetic corpus controls (`sa_jax.data.synth`).

Method. For each attribute below, prompts name one of its values (in the corpus' own prompt
forms: `key: value` or the bare value, as `sa_jax.data.metadata.build_prompt` makes them); the
generated clips are measured back from the audio and a clip counts as a match when its measured
value is the prompted one. The score of an attribute is the fraction of matches; chance is
1 / (number of values), what a model that ignores the prompt would score on balanced prompts.
The same measurement applied to the corpus' own clips against their metadata (`oracle`) is the
ceiling the measurement itself allows. Each fraction comes with its 95% Wilson interval and, against
chance, the exact one-sided binomial p-value (`sa_jax.eval.stats`).

- instrument (5 values): nearest class mean of standardised timbre features (log energies of 16
  log-spaced bands 100 Hz-16 kHz of the frame-median power spectrum, so beat clicks do not dominate,
  + spectral flatness), fitted on freshly synthesized reference clips;
- root (12 pitch classes; the prompt names `key: X major|minor`): `synth.measure`'s chroma peak (60-800 Hz);
- mode (major / minor): `synth.measure`, the major third above the root against the minor third;
- tempo (slow < 100 <= medium < 140 <= fast BPM; the prompt names bpm and density): `synth.measure`'s
  onset rate x 60 / the prompted notes per beat, binned;
- stereo (left / center / right): the pan recovered from the L/R energy ratio, nearest of -0.7 / 0 / 0.7;
- loudness (quiet / medium / loud): the RMS level in dBFS, nearest of -30 / -22 / -15.
"""

from __future__ import annotations

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

def instrument_features(audio: np.ndarray, sample_rate: int = synth.SAMPLE_RATE) -> np.ndarray:
    """17 timbre features of (channels, samples) audio: log energies of 16 log-spaced bands
    (100 Hz-16 kHz) of the frame-median power spectrum, relative to their total, + spectral flatness (dB)."""
    mono = np.asarray(audio, np.float64)
    mono = mono.mean(axis=0) if mono.ndim == 2 else mono
    n, hop = 2048, 1024
    if mono.size < n:
        mono = np.pad(mono, (0, n - mono.size))
    frames = 1 + (mono.size - n) // hop
    idx = np.arange(n)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.median(np.abs(np.fft.rfft(mono[idx] * np.hanning(n), axis=-1)) ** 2, axis=0)
    f = np.fft.rfftfreq(n, 1 / sample_rate)
    edges = np.geomspace(100, 16000, 17)
    bands = np.array([spec[(f >= lo) & (f < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])]) + 1e-12
    s = spec[(f > 150) & (f < 6000)] + 1e-12
    flat = np.exp(np.mean(np.log(s))) / np.mean(s)
    return np.concatenate([10 * np.log10(bands / bands.sum()), [10 * np.log10(flat)]])


@dataclass
class InstrumentClassifier:
    """Nearest class mean over standardised `instrument_features`."""

    classes: tuple[str, ...]
    means: np.ndarray
    mu: np.ndarray
    sd: np.ndarray

    @classmethod
    def fit(cls, clips: Sequence[np.ndarray], labels: Sequence[str], sample_rate: int = synth.SAMPLE_RATE):
        x = np.stack([instrument_features(a, sample_rate) for a in clips])
        y = np.asarray(labels)
        classes = tuple(sorted(set(y.tolist())))
        if len(classes) < 2:
            raise ValueError(f"the instrument classifier needs clips of at least 2 instruments, got {classes}")
        mu, sd = x.mean(0), x.std(0) + 1e-6
        z = (x - mu) / sd
        return cls(classes, np.stack([z[y == c].mean(0) for c in classes]), mu, sd)

    def predict(self, audio: np.ndarray, sample_rate: int = synth.SAMPLE_RATE) -> str:
        z = (instrument_features(audio, sample_rate) - self.mu) / self.sd
        return self.classes[int(np.argmin(((self.means - z) ** 2).sum(-1)))]


def reference_classifier(count: int = 150, seed: int = 1, max_seconds: float = 4.0) -> InstrumentClassifier:
    """An instrument classifier fitted on `count` clips synthesized afresh (seed `seed`)."""
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
