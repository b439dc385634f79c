"""Timing accuracy as in the paper's appendix C: how long is what the model generated?

The generated length of a clip is where its signal falls to silence under an energy threshold:

- the clip (channels, samples) is mixed to mono and cut into frames of `frame_seconds` (50 ms,
  no overlap; a last partial frame counts as a frame);
- each frame's RMS level in dB is compared with a threshold `threshold_db` **relative to the
  clip's loudest frame** (default -40 dB below it, so a quiet clip and a loud one are judged
  alike; `reference="full_scale"` makes the threshold absolute, in dBFS);
- the last frame above the threshold ends the audio: the generated length is the end of that
  frame, (index + 1) x frame length, in seconds. A clip with no frame above the threshold (or
  digital silence) has length 0.

So a tone followed by silence measures the tone's length rounded up to a whole frame (exact within
one frame). `timing_errors(requested, measured)` gives the median and 90th percentile of the
absolute errors in seconds, the two numbers the paper reports, each with a 95% bootstrap interval
over the generations (`sa_jax.eval.stats`).

To measure a model (`timing_eval`): each prompt is generated at each requested length spread across
the window with `trim=False` (the whole window comes back, so the model itself must fall silent).
Generation n of the evaluation draws its noise from (seed, n) (`StableAudio.generate`'s `first_item`),
so the result does not depend on how the generations are batched. `timing_ceiling` measures corpus
clips of known length the same way: what a model that reproduced its training data would score.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from sa_jax.eval.stats import bootstrap_interval

FRAME_SECONDS = 0.05
THRESHOLD_DB = -40.0


def frame_levels_db(audio: np.ndarray, sample_rate: int, frame_seconds: float = FRAME_SECONDS) -> np.ndarray:
    """RMS level in dBFS of each `frame_seconds` frame of (channels, samples) or (samples,) audio,
    channels averaged (a mono mix). Digital silence is -inf."""
    x = np.asarray(audio, np.float64)
    if x.ndim == 2:
        x = x.mean(axis=0)
    if x.ndim != 1:
        raise ValueError(f"audio must be (channels, samples) or (samples,), got shape {np.shape(audio)}")
    hop = max(1, int(round(frame_seconds * sample_rate)))
    frames = -(-x.size // hop)
    padded = np.zeros(frames * hop)
    padded[:x.size] = x
    counts = np.full(frames, hop, np.float64)
    if frames:
        counts[-1] = x.size - (frames - 1) * hop
    ms = (padded.reshape(frames, hop) ** 2).sum(axis=1) / counts
    with np.errstate(divide="ignore"):
        return 10 * np.log10(ms)


def generated_length(audio: np.ndarray, sample_rate: int, threshold_db: float = THRESHOLD_DB,
                     frame_seconds: float = FRAME_SECONDS, reference: str = "peak") -> float:
    """Seconds until the last frame whose RMS is above the threshold (see the module docstring).
    `reference`: "peak" (threshold relative to the loudest frame) or "full_scale" (dBFS)."""
    if reference not in ("peak", "full_scale"):
        raise ValueError(f"reference must be 'peak' or 'full_scale', got {reference!r}")
    db = frame_levels_db(audio, sample_rate, frame_seconds)
    finite = db[np.isfinite(db)]
    if finite.size == 0:
        return 0.0
    level = threshold_db + (float(finite.max()) if reference == "peak" else 0.0)
    above = np.flatnonzero(db > level)
    if above.size == 0:
        return 0.0
    hop = max(1, int(round(frame_seconds * sample_rate)))
    n = np.asarray(audio).shape[-1]
    return min((int(above[-1]) + 1) * hop, n) / sample_rate


def timing_errors(requested: Sequence[float], measured: Sequence[float]) -> dict:
    """Absolute errors |measured - requested| in seconds: {"median", "p90", "mean", "max", "count"} and
    the 95% bootstrap intervals of the median and the p90 ("median_low", "median_high", "p90_low",
    "p90_high")."""
    r, m = np.asarray(requested, np.float64), np.asarray(measured, np.float64)
    if r.shape != m.shape or r.ndim != 1 or r.size == 0:
        raise ValueError(f"requested and measured must be equal-length non-empty lists, got {r.shape}, {m.shape}")
    err = np.abs(m - r)
    median_low, median_high = bootstrap_interval(err, np.median)
    p90_low, p90_high = bootstrap_interval(err, lambda x, axis: np.percentile(x, 90, axis=axis))
    return {"median": float(np.median(err)), "median_low": median_low, "median_high": median_high,
            "p90": float(np.percentile(err, 90)), "p90_low": p90_low, "p90_high": p90_high,
            "mean": float(err.mean()), "max": float(err.max()), "count": int(err.size)}


def requested_lengths(window_seconds: float, count: int = 8, low: float = 1.0) -> list[float]:
    """`count` whole-second lengths spread evenly over [low, the window], rounded (whole seconds: the
    paper's timing conditioning is integer, and training sees ceil(clip length)). When the range holds
    fewer whole seconds than `count`, a length repeats (2..8 s in 8 lengths: 2, 3, 4, 5, 5, 6, 7, 8):
    the evaluation keeps its number of generations and each repeat draws its own noise."""
    if int(count) < 1:
        raise ValueError(f"the number of timing lengths must be at least 1, got {count}")
    high = max(low, float(np.floor(window_seconds)))
    return sorted(float(round(s)) for s in np.linspace(low, high, int(count)))


def timing_eval(model, prompts: Sequence[str], lengths: Sequence[float], *, steps: int | None = None,
                cfg_scale: float | None = None, sampler: str | None = None, sigma_min: float | None = None,
                sigma_max: float | None = None, rho: float | None = None, seed: int = 0, batch: int = 8,
                **measure) -> dict:
    """Generate every prompt at every requested length (whole window, `trim=False`), measure the
    generated lengths, and return `timing_errors` + "items": [{item, prompt, requested, measured}].
    Item n (lengths outer, prompts inner) draws its noise from (seed, n), whatever `batch` is."""
    items = [(p, float(s)) for s in lengths for p in prompts]
    if not items:
        raise ValueError("timing_eval needs at least one prompt and one length")
    if int(batch) < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    out = []
    start = 0
    while start < len(items):
        # one seconds_total per call: a chunk is consecutive items of one length, at most `batch` of them
        stop = start + 1
        while stop < len(items) and stop - start < batch and items[stop][1] == items[start][1]:
            stop += 1
        prompts_, seconds = [p for p, _ in items[start:stop]], items[start][1]
        audio = model.generate(prompts_, seconds_total=seconds, steps=steps, cfg_scale=cfg_scale, sampler=sampler,
                               sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, seed=seed, first_item=start,
                               trim=False)
        for n, (p, a) in enumerate(zip(prompts_, audio), start):
            out.append({"item": n, "prompt": p, "requested": seconds,
                        "measured": generated_length(a, model.sample_rate, **measure)})
        start = stop
    stats = timing_errors([x["requested"] for x in out], [x["measured"] for x in out])
    return {**stats, "items": out}


def timing_ceiling(clips: Sequence[tuple[np.ndarray, dict]], sample_rate: int, window_seconds: float,
                   autoencoder=None, **measure) -> dict:
    """The measurement on corpus clips of known length: each clip (audio, metadata with "duration_s")
    padded with silence to the window (as a generation with `trim=False` comes back) and measured
    against the seconds_total training conditions it on, ceil(duration) (at most the window).
    `timing_errors` of those: the timing error of a model that reproduced its corpus exactly.

    With `autoencoder`, each padded clip is first encoded and decoded by it: the audio a model plays
    when its latents are exactly the corpus's. Where the decoder plays something above the threshold
    over silence (its floor, or a click at the window's edge), this ceiling shows it."""
    if not clips:
        raise ValueError("timing_ceiling needs at least one corpus clip")
    samples = int(round(window_seconds * sample_rate))
    requested, measured = [], []
    for audio, meta in clips:
        a = np.asarray(audio)[..., :samples]
        a = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, samples - a.shape[-1])])
        if autoencoder is not None:
            a = np.asarray(autoencoder.decode(autoencoder.encode(a[None])))[0][..., :samples]
        requested.append(min(float(max(1, math.ceil(meta["duration_s"]))), window_seconds))
        measured.append(generated_length(a, sample_rate, **measure))
    return timing_errors(requested, measured)
