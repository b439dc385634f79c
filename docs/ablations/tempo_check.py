"""#22's study, part 8: does a model follow the two halves of a tempo prompt, the BPM number and the density word?

`sa-jax evaluate` scores tempo as a class (slow / medium / fast) from the onset rate divided by the notes per
beat its prompt named, so a model must follow both the number and the word. This script separates them:

1. The text conditioning: how far apart the text tower puts prompts that differ only in BPM (70 vs 165),
   only in density (sparse vs dense), and only in loudness (quiet vs loud, a word the shipped model
   follows), as the cosine distance between their mean-pooled token states (the layer the U-Net reads).
2. Generations: 3 BPMs x 3 densities x 6 prompt formats x 2 seeds (4 s, 30 steps). Fits
   log(onsets per second) = a log(BPM) + b log(notes per beat) + c by least squares. A model that follows
   both has a = b = 1 (onsets = BPM / 60 x notes per beat); a = 0 means the number is ignored.
3. The ceiling: the same fit on the clips of CORPUS (a `sa-jax synth` folder) with their true BPM and density.

    python docs/ablations/tempo_check.py runs/study/heldout sa_jax/assets/small
    python docs/ablations/tempo_check.py --layers sa_jax/assets/small   # 1. at every hidden state of the tower
"""

import json
import sys
from pathlib import Path

import numpy as np

from sa_jax.audio import read_audio
from sa_jax.data import synth
from sa_jax.pipeline import StableAudio

BPMS = (70, 120, 165)
FORMATS = ("bpm: {bpm} | density: {dens}", "{bpm}, {dens}", "{dens} melody at {bpm} BPM",
           "instrument: bell | bpm: {bpm} | density: {dens}", "plucked string, {bpm}, {dens}",
           "A {dens} line in C major, tempo {bpm} BPM")


def fit(bpm, npb, onsets) -> tuple[float, float, float]:
    """(a, b, r2) of log onsets = a log bpm + b log npb + c."""
    x = np.stack([np.log(bpm), np.log(npb), np.ones(len(bpm))], axis=1)
    y = np.log(np.maximum(onsets, 0.1))
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    r2 = 1 - np.sum((y - x @ coef) ** 2) / np.sum((y - y.mean()) ** 2)
    return float(coef[0]), float(coef[1]), float(r2)


def pooled(model: StableAudio, prompts: list[str]) -> np.ndarray:
    family = model.family
    states, mask = family.text_encoder(prompts)
    h, m = np.asarray(states[family.text_layer]), np.asarray(mask, np.float32)[..., None]
    v = (h * m).sum(1) / m.sum(1)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def conditioning(model: StableAudio) -> None:
    pairs = {
        "BPM 70 vs 165": [(f.format(bpm=70, dens=d), f.format(bpm=165, dens=d))
                          for f in FORMATS for d in synth.DENSITY],
        "density sparse vs dense": [(f.format(bpm=b, dens="sparse"), f.format(bpm=b, dens="dense"))
                                    for f in FORMATS for b in BPMS],
        "loudness quiet vs loud": [(p.format("quiet"), p.format("loud"))
                                   for p in ("loudness: {}", "{}", "bell, {}", "instrument: organ | loudness: {}",
                                             "sawtooth lead, {}", "key: C major | loudness: {}")],
    }
    for name, pp in pairs.items():
        a, b = pooled(model, [p[0] for p in pp]), pooled(model, [p[1] for p in pp])
        print(f"  text states, {name}: cosine distance {float(np.mean(1 - np.sum(a * b, -1))):.4f}")


def generations(model: StableAudio, seeds=(5, 6)) -> None:
    rows = []   # (format index, bpm, notes per beat, onsets per second)
    for bpm in BPMS:
        for dens, npb in synth.DENSITY.items():
            rates = []
            for seed in seeds:
                audio = model.generate([f.format(bpm=bpm, dens=dens) for f in FORMATS], seconds_total=4.0,
                                       steps=30, seed=seed)
                rates += [synth.measure(x[..., :4 * model.sample_rate], model.sample_rate)["onsets_per_second"]
                          for x in audio]
            rows += [(i % len(FORMATS), bpm, npb, r) for i, r in enumerate(rates)]
            print(f"  BPM {bpm:3d} {dens:8s}: asked {bpm / 60 * npb:4.1f} onsets/s, got "
                  + " ".join(f"{r:.1f}" for r in rates))
    rows = np.array(rows)
    a, b, r2 = fit(*rows[:, 1:].T)
    print(f"  all generations: log onsets = {a:.2f} log BPM + {b:.2f} log notes-per-beat + c (r2 {r2:.2f})")
    for i, f in enumerate(FORMATS):
        a, b, r2 = fit(*rows[rows[:, 0] == i, 1:].T)
        print(f"    {f!r:48s} a {a:5.2f}  b {b:5.2f}  r2 {r2:.2f}")


def ceiling(corpus: Path) -> None:
    rows = []
    for line in open(corpus / "metadata.jsonl"):
        meta = json.loads(line)
        audio, sr = read_audio(corpus / meta["path"])
        rows.append((meta["bpm"], meta["notes_per_beat"], synth.measure(audio, sr)["onsets_per_second"]))
    a, b, r2 = fit(*map(np.array, zip(*rows)))
    print(f"  {corpus} ({len(rows)} clips): log onsets = {a:.2f} log BPM + {b:.2f} log notes-per-beat + c "
          f"(r2 {r2:.2f})")


def layers(model: StableAudio) -> None:
    """Part 1 at each hidden state of the text tower (0: the embeddings, -1: the last layer), to see which
    layer separates the prompts most before training a U-Net to read it."""
    used = model.family.text_layer
    states, _ = model.family.text_encoder(["x"])
    for layer in range(-len(states), 0):
        model.family.text_layer = layer
        print(f"layer {layer}" + (" (the U-Net's)" if layer == used else ""))
        conditioning(model)
    model.family.text_layer = used


def main(corpus: str, *models: str) -> None:
    if corpus == "--layers":
        for path in models:
            layers(StableAudio.load(path))
        return
    print("ceiling")
    ceiling(Path(corpus))
    for path in models:
        model = StableAudio.load(path)
        print(path)
        conditioning(model)
        generations(model)


if __name__ == "__main__":
    main(*sys.argv[1:])
