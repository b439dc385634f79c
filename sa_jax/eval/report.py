"""The report of `sa-jax evaluate` (and the recipe's evaluate stage, and `sa-jax ablate`): timing
accuracy, text adherence and reconstruction of a loaded `StableAudio` against a held-out `sa-jax synth`
folder, as one JSON-able dict with stable key names, and `table(report)`, its Markdown table."""

from __future__ import annotations

import json
import math
import numbers
import time
from pathlib import Path

# Eight prompts in the corpus' prompt forms (key: value fields, bare values, a sentence), every instrument
# among them; the first four are the evaluation's prompts since its start (the shipped-model test uses them).
TIMING_PROMPTS = ("sine flute, C major", "instrument: bell | stereo: left", "plucked string, 120, loud",
                  "key: A minor | instrument: sawtooth lead | density: dense",
                  "square organ, D minor, sparse, quiet", "instrument: plucked string | bpm: 90 | stereo: right",
                  "A metallic bell playing a flowing melody in F major at 140 BPM, in the center.",
                  "key: E major | instrument: square organ | loudness: medium")
# the evaluations a report can hold, in the order they run; `evaluations=` picks some of them
EVALUATIONS = ("reconstruction", "timing", "adherence", "distribution")


def check_evaluations(evaluations, distribution_given: bool = True) -> None:
    """ValueError unless `evaluations` is None (the default set) or a non-empty list of EVALUATIONS, each once;
    "distribution" needs an embedder (clap, openl3 or passt) to be given."""
    if evaluations is None:
        return
    if isinstance(evaluations, str) or not isinstance(evaluations, (list, tuple)) or not evaluations:
        raise ValueError(f"evaluations must be a non-empty list of {', '.join(EVALUATIONS)}, got {evaluations!r}")
    unknown = [e for e in evaluations if e not in EVALUATIONS]
    if unknown or len(set(evaluations)) != len(evaluations):
        wrong = ", ".join(map(repr, unknown)) or "a name given twice"
        raise ValueError(f"evaluations: {wrong} in {list(evaluations)}; each of {', '.join(EVALUATIONS)} at most once")
    if "distribution" in evaluations and not distribution_given:
        raise ValueError("evaluations names 'distribution' but no embedder is given: set clap (a CLAP folder or "
                         "'shipped'), openl3 or passt")


def evaluate(model, corpus, *, steps: int = 50, cfg_scale: float | None = None, sampler: str | None = None,
             sigma_min: float | None = None, sigma_max: float | None = None, rho: float | None = None,
             timing_lengths: int = 8, timing_prompts=8, per_value: int | None = None, per_attribute: int = 48,
             adherence_seconds: float = 4.0, recon_clips: int = 16, recon_seconds: float = 2.0,
             ceiling_clips: int | None = None, classifier_clips: int = 250, clap=None, openl3=None, passt=None,
             metric_clips: int = 16, evaluations=None, seed: int = 0, batch: int = 8, log=print) -> dict:
    """The evaluations of a loaded `StableAudio` against the corpus folder; returns the report.

    evaluations: which of EVALUATIONS to run (None: reconstruction unless recon_clips is 0, timing,
    adherence, and distribution when an embedder is given); the report has a key for each that ran.

    steps, cfg_scale, sampler, sigma_min, sigma_max, rho: the sampling settings (None: the model's).
    timing_prompts: how many of TIMING_PROMPTS (or a list of prompts), each generated at `timing_lengths`
    whole-second lengths from the corpus's shortest seconds_total to the window (default 8 x 8 = 64).
    per_attribute: adherence generations per attribute at least (48), balanced over its values; per_value
    overrides it with a fixed count per value. ceiling_clips: corpus clips the measurements are applied to
    for the ceilings (None: all); the first `recon_clips` of them are reconstructed (0: no "reconstruction"
    in the report). clap (a CLAP folder, a loaded `Clap`, or "shipped": the shipped small model's own,
    sa_jax/assets/small_clap), openl3, passt (weight files): the distribution metrics of
    `sa_jax.eval.distribution` on `metric_clips` held-out clips, in report["distribution"] (none given: no
    such key). Generation n of each evaluation draws its noise from (seed, n), so `batch` (generations per
    call) changes nothing but speed.
    """
    from sa_jax.config import check_int, check_seed
    from sa_jax.eval import adherence, recon, stats, timing

    # every number checked before the first generation (an evaluation runs for minutes)
    embedders = clap is not None or openl3 is not None or passt is not None
    check_evaluations(evaluations, embedders)
    default = [e for e in EVALUATIONS if (e != "reconstruction" or recon_clips > 0)
               and (e != "distribution" or embedders)]
    run = set(evaluations if evaluations is not None else default)
    if "reconstruction" in run and recon_clips == 0:
        raise ValueError("evaluations names 'reconstruction' but recon_clips is 0: give at least 1 clip")
    prompts = _timing_prompts(timing_prompts)
    counts = {"timing_lengths": (timing_lengths, 1), "per_attribute": (per_attribute, 1),
              "batch": (batch, 1), "recon_clips": (recon_clips, 0), "classifier_clips": (classifier_clips, 2),
              "metric_clips": (metric_clips, 2)}
    if per_value is not None:
        counts["per_value"] = (per_value, 1)
    if ceiling_clips is not None:
        counts["ceiling_clips"] = (ceiling_clips, 1)
    for name, (value, least) in counts.items():
        check_int(value, name, minimum=least)
    check_seed(seed)
    _check_number("adherence_seconds", adherence_seconds, above=0,
                  allowed="a length in seconds > 0 (longer than the window: the window's whole seconds)")
    _check_number("recon_seconds", recon_seconds, above=0.5 / model.sample_rate,
                  allowed=f"a length in seconds of at least one sample (1/{model.sample_rate} s)")
    model.sampling_settings(steps, cfg_scale, sampler, sigma_min, sigma_max, rho)   # as each generation will
    sampling = {"steps": steps, "cfg_scale": cfg_scale, "sampler": sampler, "sigma_min": sigma_min,
                "sigma_max": sigma_max, "rho": rho}
    report = {"model": {"window_seconds": model.window_seconds, "sample_rate": model.sample_rate},
              "settings": {**sampling, "seed": seed, "timing_prompts": len(prompts), "timing_lengths": timing_lengths,
                           "per_value": per_value, "per_attribute": per_attribute,
                           "adherence_seconds": adherence_seconds,
                           "evaluations": [e for e in EVALUATIONS if e in run]},
              "statistics": stats.describe()}
    t0 = time.perf_counter()
    clips = recon.corpus_clips(corpus, ceiling_clips, sample_rate=model.sample_rate,
                               channels=model.autoencoder.io_channels)
    if "reconstruction" in run:     # a sampling-only study leaves it out: it does not change the autoencoder
        report["reconstruction"] = recon.reconstruction_distance(
            model.autoencoder, [a for a, _ in clips[:recon_clips]], recon_seconds)
        log(f"reconstruction: {min(recon_clips, len(clips))} clips in {time.perf_counter() - t0:.1f} s")

    if "timing" in run:
        t0 = time.perf_counter()
        lengths = timing.requested_lengths(model.window_seconds, timing_lengths, low=shortest_seconds_total(corpus))
        report["timing"] = timing.timing_eval(model, prompts, lengths, **sampling, seed=seed, batch=batch)
        report["timing"]["ceiling"] = timing.timing_ceiling(clips, model.sample_rate, model.window_seconds)
        # the same clips through the model's autoencoder: what exact latents would measure
        report["timing"]["ceiling_decoded"] = timing.timing_ceiling(clips, model.sample_rate, model.window_seconds,
                                                                    autoencoder=model.autoencoder)
        report["timing"]["method"] = {"frame_seconds": timing.FRAME_SECONDS, "threshold_db": timing.THRESHOLD_DB,
                                      "reference": "peak frame", "lengths": lengths, "prompts": prompts}
        log(f"timing: {report['timing']['count']} generations in {time.perf_counter() - t0:.1f} s")

    if "adherence" in run:
        t0 = time.perf_counter()
        classifier = adherence.reference_classifier(classifier_clips, seed=12345)
        seconds = min(adherence_seconds, float(int(model.window_seconds)) or model.window_seconds)

        def generate(prompts, first_item):
            return model.generate(prompts, seconds_total=seconds, **sampling, seed=seed, first_item=first_item)
        report["adherence"] = adherence.adherence_eval(generate, model.sample_rate, classifier, per_value=per_value,
                                                       per_attribute=per_attribute, seed=seed, batch=batch)
        report["adherence_oracle"] = adherence.oracle(clips, model.sample_rate, classifier)
        for a in adherence.ATTRIBUTES:
            got, ceiling = report["adherence"].get(a), report["adherence_oracle"].get(a)
            if got is not None and ceiling is not None:
                got.update(ceiling=ceiling["accuracy"], ceiling_low=ceiling["accuracy_low"],
                           ceiling_high=ceiling["accuracy_high"],
                           of_ceiling=got["accuracy"] / ceiling["accuracy"] if ceiling["accuracy"] > 0 else None)
        log(f"adherence: {len(report['adherence']['items'])} generations in {time.perf_counter() - t0:.1f} s")
    if "distribution" in run:
        from sa_jax.eval.distribution import distribution_eval

        report["distribution"] = distribution_eval(model, corpus, clap=_load_clap(clap), openl3=openl3, passt=passt,
                                                   clips=metric_clips, **sampling, seed=seed, batch=batch, log=log)
    return report


def _check_number(name: str, value, *, above: float | None, allowed: str) -> None:
    """ValueError naming the argument and what it allows unless `value` is a finite real number > `above`."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value))
            or (above is not None and value <= above)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _load_clap(clap):
    """A loaded `Clap` as it is; "shipped": the shipped small model's CLAP; a path: Clap.load(path)."""
    if clap is None or not isinstance(clap, (str, Path)):
        return clap
    from sa_jax.encoders import Clap
    from sa_jax.metrics.clap import default_clap

    return default_clap(None) if str(clap) == "shipped" else Clap.load(clap)


def _timing_prompts(timing_prompts) -> list[str]:
    """A count (the first N of TIMING_PROMPTS) or a list of prompts."""
    if isinstance(timing_prompts, (int, float)) and not isinstance(timing_prompts, bool):
        if timing_prompts != int(timing_prompts) or not 1 <= timing_prompts <= len(TIMING_PROMPTS):
            raise ValueError(f"timing_prompts must be a whole number from 1 to {len(TIMING_PROMPTS)} (the built-in "
                             f"timing prompts) or a list of prompts, got {timing_prompts!r}")
        return list(TIMING_PROMPTS[:int(timing_prompts)])
    if isinstance(timing_prompts, str) or not timing_prompts or not all(
            isinstance(p, str) and p.strip() for p in timing_prompts):
        raise ValueError(f"timing_prompts must be a count or a non-empty list of non-empty prompts, got "
                         f"{timing_prompts!r}")
    return list(timing_prompts)


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
    """The report as two Markdown tables: the numbers with their 95% intervals and ceilings, then text
    adherence per attribute (fraction matched, interval, chance, p-value against chance, ceiling)."""
    from sa_jax.eval.adherence import ATTRIBUTES

    t, r = report.get("timing"), report.get("reconstruction")
    ceiling, decoded = (t or {}).get("ceiling", {}), (t or {}).get("ceiling_decoded", {})

    def interval(d, key, digits=2):
        low, high = d.get(f"{key}_low"), d.get(f"{key}_high")
        return "" if low is None or high is None else f"{low:.{digits}f}-{high:.{digits}f}"

    def number(d, key, digits=2):
        return "" if d.get(key) is None else f"{d[key]:.{digits}f}"

    def ceilings(key):
        return f"{number(ceiling, key)}; {number(decoded, key)}" if decoded else number(ceiling, key)

    lines = ["| metric | value | 95% interval | ceiling (corpus clips; through the autoencoder) |", "|---|---|---|---|"]
    if t is not None:
        count = f", {t['count']} generations" if "count" in t else ""
        lines += [f"| timing error, median (s{count}) | {t['median']:.2f} | {interval(t, 'median')} | "
                  f"{ceilings('median')} |",
                  f"| timing error, 90th percentile (s) | {t['p90']:.2f} | {interval(t, 'p90')} | {ceilings('p90')} |"]
    for name, m in report.get("distribution", {}).items():     # sa_jax.eval.distribution
        lines.append(f"| {name} ({m['clips']} generations vs held-out clips) | {m['value']:.4g} | | |")
    if r is not None:
        lines += [f"| reconstruction STFT distance ({r['count']} clips, {r['seconds']:.2f} s) | "
                  f"{r['stft_distance']:.3f} | | |",
                  f"| reconstruction level error, median (dB) | {r['level_error_db']:.1f} | | |",
                  f"| silence reconstructs to (dBFS) | {r['silence_rms_db']:.1f} | | |"]
    if "adherence" not in report:
        return "\n".join(lines)
    lines += ["", "| attribute | generations match | 95% interval | chance | p (vs chance) | ceiling (corpus clips) "
              "| of ceiling |", "|---|---|---|---|---|---|---|"]
    for a in ATTRIBUTES:
        if a in report["adherence"]:
            g, o = report["adherence"][a], report["adherence_oracle"].get(a, {})
            p = "" if g.get("p_value") is None else f"{g['p_value']:.2g}"
            matched = f"{g['accuracy']:.2f} ({g.get('matches', '?')}/{g['count']})"
            lines.append(f"| {a} | {matched} | {interval(g, 'accuracy')} | {g['chance']:.2f} | {p} | "
                         f"{o.get('accuracy', float('nan')):.2f} "
                         f"({o.get('count', '?')}) | {number(g, 'of_ceiling')} |")
    return "\n".join(lines)
