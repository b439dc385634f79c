"""A synthetic text-to-audio corpus whose audio follows its metadata in measurable ways.

Each clip is a short melody played by one of five additive-synthesis instruments, with:

- instrument (timbre): sine flute, square organ, sawtooth lead, plucked string, bell; they differ in
  harmonic content (spectral centroid, odd/even harmonics, inharmonic partials) and envelope
- key: root pitch class + major/minor; every bar starts on the tonic, most notes are tonic-triad
  notes, and a soft tonic drone sounds underneath, so the chroma peak is the root
- tempo (bpm 60-180) and note density (1, 2 or 4 notes per beat): onsets per second = bpm/60 x npb
- stereo position: constant-power pan to left / center / right (L/R energy ratio)
- loudness: quiet / medium / loud, normalised to an exact RMS level (dBFS)
- percussion: an optional noise click on every beat
- duration: 1-30 s (not whole seconds, so seconds_total's ceiling matters)

`synth_clip(seed, index)` is a pure function of its arguments; `write_corpus` writes the folder
format the pipeline reads (audio/NNNNN.wav + metadata.jsonl). `measure` recovers the attributes
from audio, for tests and for judging a model trained on the corpus.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

SAMPLE_RATE = 44100
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
INSTRUMENTS = {
    # family: (display name, words for descriptions, tags)
    "sine": ("sine flute", ("soft, pure", "mellow", "airy"), ("flute", "sine", "soft")),
    "square": ("square organ", ("hollow", "reedy", "buzzy"), ("organ", "square wave", "electronic")),
    "saw": ("sawtooth lead", ("bright", "brassy", "edgy"), ("synth", "sawtooth", "lead")),
    "pluck": ("plucked string", ("twangy", "percussive", "warm"), ("guitar", "plucked", "acoustic")),
    "bell": ("bell", ("shimmering", "metallic", "ringing"), ("bell", "chime", "metallic")),
}
DENSITY = {"sparse": 1, "moderate": 2, "dense": 4}
STEREO = {"left": -0.7, "center": 0.0, "right": 0.7}
LOUDNESS = {"quiet": -30.0, "medium": -22.0, "loud": -15.0}


def _note(family: str, f0: float, n: int, sr: int) -> np.ndarray:
    """One mono note of `n` samples."""
    t = np.arange(n, dtype=np.float32) / sr
    nyq = sr / 2
    if family == "bell":
        ratios = np.array([1.0, 2.76, 5.40, 8.93], np.float32)
        amps = np.array([1.0, 0.6, 0.35, 0.2], np.float32)
        decays = np.array([2.5, 4.0, 7.0, 10.0], np.float32)
    else:
        hmax = {"sine": 2, "square": 15, "saw": 15, "pluck": 12}[family]
        h = np.arange(1, hmax + 1, dtype=np.float32)
        ratios = h
        if family == "sine":
            amps = np.array([1.0, 0.08], np.float32)
        elif family == "square":
            amps = np.where(h % 2 == 1, 1.0 / h, 0.0).astype(np.float32)
        elif family == "saw":
            amps = (1.0 / h).astype(np.float32)
        else:  # pluck
            amps = (1.0 / h ** 1.3).astype(np.float32)
        decays = (3.0 + 2.0 * h) if family == "pluck" else np.zeros_like(h)
    keep = ratios * f0 < nyq * 0.9
    ratios, amps, decays = ratios[keep], amps[keep], decays[keep]
    phase = (2 * np.pi * f0 * t)[None, :] * ratios[:, None]
    partials = np.sin(phase) * amps[:, None]
    if np.any(decays > 0):
        partials *= np.exp(-decays[:, None] * t[None, :])
    x = partials.sum(axis=0)
    # Envelope: 5 ms attack (15 ms for sine/square/saw "sustained" voices), release to zero.
    att = min(int(sr * (0.003 if family in ("pluck", "bell") else 0.012)), n // 4)
    rel = min(int(sr * 0.02), n // 4)
    env = np.ones(n, np.float32)
    if att:
        env[:att] = np.linspace(0, 1, att, dtype=np.float32)
    if rel:
        env[n - rel:] *= np.linspace(1, 0, rel, dtype=np.float32)
    return (x * env).astype(np.float32)


def _pan_gains(pan: float) -> tuple[float, float]:
    a = (pan + 1) * np.pi / 4
    return math.cos(a), math.sin(a)


def _choose(rng, options):
    return options[int(rng.integers(len(options)))]


def _describe(rng, meta: dict) -> str:
    fam = meta["instrument_family"]
    adj = _choose(rng, INSTRUMENTS[fam][1])
    name = meta["instrument"]
    dens = {"sparse": ("a sparse", "a slow, spacious", "a sparse"),
            "moderate": ("a steady", "a flowing", "a moderate"),
            "dense": ("a busy", "a rapid", "a dense")}[meta["density"]]
    where = {"left": ("panned hard left", "on the left side", "coming from the left"),
             "center": ("centered in the stereo field", "in the center", "panned center"),
             "right": ("panned hard right", "on the right side", "coming from the right")}[meta["stereo"]]
    loud = {"quiet": ("quiet", "soft", "gentle"), "medium": ("moderately loud", "medium volume", "balanced"),
            "loud": ("loud", "powerful", "punchy")}[meta["loudness"]]
    perc = " over a ticking click on every beat" if meta["percussion"] else ""
    templates = (
        "{A} {adj} {name} playing {dens} melody in {key} at {bpm} BPM, {where}, {loud}{perc}.",
        "{Dens} {key} melody on {adj} {name}, {bpm} BPM, {loud} and {where}{perc}.",
        "{Loud} {name} ({adj}) plays {dens} line in {key}, tempo {bpm} BPM, {where}{perc}.",
    )
    tpl = _choose(rng, templates)
    d = _choose(rng, dens)
    l = _choose(rng, loud)
    text = tpl.format(A="An" if adj[0] in "aeiou" else "A", adj=adj, name=name, dens=d, Dens=d[0].upper() + d[1:],
                      key=meta["key"], bpm=meta["bpm"], where=_choose(rng, where), loud=l,
                      Loud=l[0].upper() + l[1:], perc=perc)
    return text


def check_lengths(min_seconds: float, max_seconds: float, whole_seconds: bool = False) -> None:
    """The clip length range `synth_clip` draws from: 0 < min_seconds <= max_seconds, with a whole second in it
    when `whole_seconds` (else the rounded length would fall outside it); ValueError otherwise."""
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need 0 < min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
    if whole_seconds and math.ceil(min_seconds) > math.floor(max_seconds):
        raise ValueError(f"whole_seconds needs a whole number of seconds in [min_seconds, max_seconds] = "
                         f"[{min_seconds}, {max_seconds}]; widen the range to include one")


def synth_clip(seed: int, index: int, sample_rate: int = SAMPLE_RATE,
               min_seconds: float = 1.0, max_seconds: float = 30.0,
               whole_seconds: bool = False) -> tuple[np.ndarray, dict]:
    """Clip `index` of the corpus for `seed`: (audio float32 (2, n), metadata). `whole_seconds` rounds
    the duration to whole seconds (the attributes are unchanged; the description's wording may differ),
    so a clip fills its integer `seconds_total` exactly instead of ending anywhere in its last second."""
    check_lengths(min_seconds, max_seconds, whole_seconds)
    rng = np.random.default_rng([seed, index])
    fam = _choose(rng, tuple(INSTRUMENTS))
    root = int(rng.integers(12))
    mode = _choose(rng, ("major", "minor"))
    bpm = int(rng.integers(60, 181))
    density = _choose(rng, tuple(DENSITY))
    stereo = _choose(rng, tuple(STEREO))
    loudness = _choose(rng, tuple(LOUDNESS))
    percussion = bool(rng.random() < 0.4)
    seconds = round(float(rng.uniform(min_seconds, max_seconds)), 3)
    if whole_seconds:
        seconds = float(min(max(round(seconds), math.ceil(min_seconds)), math.floor(max_seconds)))
    n = max(1, int(round(seconds * sample_rate)))

    npb = DENSITY[density]
    step = 60.0 / bpm / npb                      # seconds per note
    note_len = int(step * 0.8 * sample_rate)     # 80% gate: a gap before every onset
    scale = SCALES[mode]
    base = 60 + root if root < 7 else 48 + root  # tonic between F#3..F#4
    x = np.zeros(n, np.float32)
    notes_per_bar = 4 * npb
    k = 0
    degree = 0
    while True:
        start = int(round(k * step * sample_rate))
        if start >= n:
            break
        if k % notes_per_bar == 0:
            degree = 0
        elif rng.random() < 0.6:
            degree = _choose(rng, (0, 2, 4, 7))  # tonic triad (+ octave)
        else:
            degree = int(np.clip(degree + rng.integers(-2, 3), 0, 7))
        octave, d = divmod(degree, 7)
        midi = base + 12 * octave + scale[d]
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        m = min(note_len, n - start)
        if m > 16:
            x[start:start + m] += _note(fam, f0, m, sample_rate)
        k += 1
    # Tonic drone an octave below, soft, with a slow fade in/out.
    t = np.arange(n, dtype=np.float32) / sample_rate
    f_drone = 440.0 * 2 ** ((base - 12 - 69) / 12)
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t + 1e-3) / 0.05).astype(np.float32)
    x += 0.35 * np.sin(2 * np.pi * f_drone * t).astype(np.float32) * fade
    if percussion:
        click_n = int(0.03 * sample_rate)
        click = rng.standard_normal(click_n).astype(np.float32) * np.exp(
            -np.arange(click_n, dtype=np.float32) / (0.006 * sample_rate)) * 0.8
        beat = 60.0 / bpm
        for b in range(int(seconds / beat) + 1):
            s = int(round(b * beat * sample_rate))
            m = min(click_n, n - s)
            if m > 0:
                x[s:s + m] += click[:m]
    # Exact loudness: RMS of the stereo signal (equal to the mono RMS under constant-power panning,
    # averaged over both channels) set to the target, backed off only if it would clip.
    target_db = LOUDNESS[loudness]
    gl, gr = _pan_gains(STEREO[stereo])
    audio = np.stack([x * gl, x * gr])
    rms = float(np.sqrt(np.mean(audio ** 2))) + 1e-12
    audio *= 10 ** (target_db / 20) / rms
    peak = float(np.max(np.abs(audio)))
    if peak > 0.98:
        audio *= 0.98 / peak
    loud_db = 20 * math.log10(float(np.sqrt(np.mean(audio ** 2))) + 1e-12)
    name = INSTRUMENTS[fam][0]
    meta = {
        "instrument": name, "instrument_family": fam,
        "key": f"{NOTE_NAMES[root]} {mode}", "root": NOTE_NAMES[root], "mode": mode,
        "bpm": bpm, "density": density, "notes_per_beat": npb,
        "stereo": stereo, "pan": STEREO[stereo],
        "loudness": loudness, "loudness_db": round(loud_db, 2),
        "percussion": percussion, "duration_s": round(n / sample_rate, 4),
        "tags": list(INSTRUMENTS[fam][2]) + [mode, loudness] + (["percussion"] if percussion else []),
    }
    meta["description"] = _describe(rng, meta)
    return audio.astype(np.float32), meta


def _write_one(args) -> dict:
    out, seed, i, fmt, min_s, max_s, whole = args
    import soundfile as sf

    audio, meta = synth_clip(seed, i, SAMPLE_RATE, min_s, max_s, whole)
    rel = f"audio/{i:06d}.{fmt}"
    path = Path(out) / rel
    tmp = path.with_name("." + path.name + ".partial")
    sf.write(str(tmp), audio.T, SAMPLE_RATE, subtype="PCM_16", format=fmt.upper())
    os.replace(tmp, path)
    return {"path": rel, **meta}


def write_corpus(out: str | Path, count: int, seed: int = 0, fmt: str = "wav", workers: int = 1,
                 min_seconds: float = 1.0, max_seconds: float = 30.0, whole_seconds: bool = False) -> Path:
    """Write `count` clips to `out/audio/` and their metadata to `out/metadata.jsonl` (`whole_seconds`:
    see `synth_clip`)."""
    if count <= 0:
        raise ValueError(f"count must be at least 1, got {count}")
    if fmt not in ("wav", "flac"):
        raise ValueError(f"format must be 'wav' or 'flac', got {fmt!r}")
    check_lengths(min_seconds, max_seconds, whole_seconds)
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, i, fmt, min_seconds, max_seconds, whole_seconds) for i in range(count)]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            rows = pool.map(_write_one, jobs, chunksize=4)
    else:
        rows = [_write_one(j) for j in jobs]
    tmp = out / ".metadata.jsonl.partial"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, out / "metadata.jsonl")
    return out


# --- measuring the attributes back -------------------------------------------------------------

def measure(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> dict:
    """Attributes recovered from (2, n) audio: pan, loudness, root, mode, onset rate, centroid."""
    audio = np.asarray(audio, np.float32)
    el, er = float(np.sum(audio[0] ** 2)), float(np.sum(audio[1] ** 2))
    pan = (4 / np.pi) * math.atan2(math.sqrt(er), math.sqrt(el)) - 1  # inverse of the pan law
    loud_db = 20 * math.log10(float(np.sqrt(np.mean(audio ** 2))) + 1e-12)
    mono = audio.mean(axis=0)
    spec = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    freqs = np.fft.rfftfreq(len(mono), 1 / sample_rate)
    band = (freqs > 60) & (freqs < 800)
    midi = 69 + 12 * np.log2(freqs[band] / 440.0)
    chroma = np.zeros(12)
    np.add.at(chroma, np.round(midi).astype(int) % 12, spec[band])
    root = int(np.argmax(chroma))
    mode = "major" if chroma[(root + 4) % 12] > chroma[(root + 3) % 12] else "minor"
    centroid = float(np.sum(freqs * spec) / (np.sum(spec) + 1e-12))
    # Onsets: rises of a 5 ms-frame energy envelope.
    hop = int(0.005 * sample_rate)
    frames = len(mono) // hop
    env = np.sqrt(np.mean(mono[:frames * hop].reshape(frames, hop) ** 2, axis=1) + 1e-12)
    db = 20 * np.log10(env)
    rise = db[2:] - db[:-2]
    peaks = np.flatnonzero((rise[1:-1] > 6) & (rise[1:-1] >= rise[:-2]) & (rise[1:-1] > rise[2:]))
    onsets = []
    for p in peaks:
        if not onsets or p - onsets[-1] > int(0.04 * sample_rate / hop):
            onsets.append(p)
    return {"pan": pan, "loudness_db": loud_db, "root": NOTE_NAMES[root], "mode": mode,
            "onsets_per_second": len(onsets) / (len(mono) / sample_rate), "centroid_hz": centroid}
