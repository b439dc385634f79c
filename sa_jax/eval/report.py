"""The report of `sa-jax evaluate` (and the recipe's evaluate stage, and `sa-jax ablate`): timing
accuracy, text adherence and reconstruction of a loaded `StableAudio` against a held-out `sa-jax synth`
folder, as one JSON-able dict with stable key names, and `table(report)`, its Markdown table."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

TIMING_PROMPTS = ("sine flute, C major", "instrument: bell | stereo: left", "plucked string, 120, loud",
                  "key: A minor | instrument: sawtooth lead | density: dense")


def evaluate(model, corpus, *, steps: int = 50, cfg_scale: float | None = None, timing_lengths: int = 5,
             timing_prompts=TIMING_PROMPTS, per_value: int = 2, adherence_seconds: float = 4.0,
             recon_clips: int = 16, recon_seconds: float = 2.0, classifier_clips: int = 100, seed: int = 0,
             batch: int = 8, log=print) -> dict:
    """All three evaluations of a loaded `StableAudio` against the corpus folder; returns the report."""
    from sa_jax.eval import adherence, recon, timing

    report = {"model": {"window_seconds": model.window_seconds, "sample_rate": model.sample_rate},
              "settings": {"steps": steps, "cfg_scale": cfg_scale, "seed": seed}}
    t0 = time.perf_counter()
    clips = recon.corpus_clips(corpus, recon_clips, sample_rate=model.sample_rate,
                               channels=model.autoencoder.io_channels)
    report["reconstruction"] = recon.reconstruction_distance(model.autoencoder, [a for a, _ in clips], recon_seconds)
    log(f"reconstruction: {len(clips)} clips in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    lengths = timing.requested_lengths(model.window_seconds, timing_lengths, low=shortest_seconds_total(corpus))
    report["timing"] = timing.timing_eval(model, list(timing_prompts), lengths, steps=steps, cfg_scale=cfg_scale,
                                          seed=seed, batch=batch)
    report["timing"]["method"] = {"frame_seconds": timing.FRAME_SECONDS, "threshold_db": timing.THRESHOLD_DB,
                                  "reference": "peak frame", "lengths": lengths}
    log(f"timing: {report['timing']['count']} generations in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    classifier = adherence.reference_classifier(classifier_clips, seed=12345)
    seconds = min(adherence_seconds, float(int(model.window_seconds)) or model.window_seconds)

    def generate(prompts):
        return model.generate(prompts, seconds_total=seconds, steps=steps, cfg_scale=cfg_scale, seed=seed)
    report["adherence"] = adherence.adherence_eval(generate, model.sample_rate, classifier, per_value=per_value,
                                                   seed=seed, batch=batch)
    report["adherence_oracle"] = adherence.oracle(clips, model.sample_rate, classifier)
    log(f"adherence: {len(report['adherence']['items'])} generations in {time.perf_counter() - t0:.1f} s")
    return report


def shortest_seconds_total(corpus) -> float:
    """The shortest seconds_total (a clip's duration rounded up to whole seconds, as training conditions
    on it) in a `sa-jax synth` folder. The timing lengths start there: a model trained on this corpus
    never saw a shorter request (the small recipe's clips are 1-8 s long, so seconds_total >= 2), and its
    answer to an untrained timing embedding measures nothing. Held-out clips come from the same
    generator settings as the training corpus, so they stand in for it."""
    durations = [json.loads(line)["duration_s"] for line in (Path(corpus) / "metadata.jsonl").read_text().splitlines()
                 if line.strip()]
    if not durations:
        raise ValueError(f"{corpus}/metadata.jsonl lists no clips")
    return float(max(1, math.ceil(min(durations))))


def table(report: dict) -> str:
    from sa_jax.eval.adherence import ATTRIBUTES

    t, r = report["timing"], report["reconstruction"]
    lines = ["| metric | value |", "|---|---|",
             f"| timing error, median (s) | {t['median']:.2f} |",
             f"| timing error, 90th percentile (s) | {t['p90']:.2f} |",
             f"| reconstruction STFT distance ({r['count']} clips, {r['seconds']:.2f} s) | {r['stft_distance']:.3f} |",
             f"| reconstruction level error, median (dB) | {r['level_error_db']:.1f} |",
             f"| silence reconstructs to (dBFS) | {r['silence_rms_db']:.1f} |",
             "", "| attribute | generations match | chance | measurement on corpus clips (ceiling) |",
             "|---|---|---|---|"]
    for name, m in report.get("distribution", {}).items():     # sa_jax.eval.distribution
        lines.insert(7, f"| {name} ({m['clips']} generations vs held-out clips) | {m['value']:.4g} |")
    for a in ATTRIBUTES:
        if a in report["adherence"]:
            g, o = report["adherence"][a], report["adherence_oracle"].get(a, {})
            lines.append(f"| {a} | {g['accuracy']:.2f} ({g['count']}) | {g['chance']:.2f} | "
                         f"{o.get('accuracy', float('nan')):.2f} |")
    return "\n".join(lines)
