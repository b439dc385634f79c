"""Seams: does audio stitched from windows (long form, continuation, inpainting) click or jump in
level where the windows meet? Measured against the rest of the same piece, so a loud or busy piece
is not mistaken for a bad seam:

* jump ratio: the largest sample-to-sample step |x[n+1] - x[n]| within `radius_ms` of a seam,
  divided by the largest step elsewhere in the piece. A click at a seam makes it > 1.
* level step: |20 log10(rms_after / rms_before)| of the `frame_ms` (50 ms) frames on either side of
  a seam, against the same step between every pair of adjacent 50 ms frames elsewhere (its 95th
  percentile and its maximum). A level jump at a seam makes it stand above them.
Channels are measured separately and the worst taken.
"""

from __future__ import annotations

import numpy as np


def _db_steps(x: np.ndarray, frame: int, floor: float = 1e-5) -> np.ndarray:
    """Level steps (dB) between adjacent `frame`-sample frames of x (channels, samples)."""
    n = x.shape[-1] // frame
    rms = np.sqrt(np.mean(x[:, :n * frame].reshape(x.shape[0], n, frame) ** 2, axis=-1))
    rms = np.maximum(rms, floor)
    return np.abs(20 * np.log10(rms[:, 1:] / rms[:, :-1]))


def seam_stats(audio: np.ndarray, seams, sample_rate: int, radius_ms: float = 25.0,
               frame_ms: float = 50.0) -> dict:
    """The seam measures of `audio` ((channels, samples) or (batch, channels, samples): the worst
    item) at the sample positions `seams`. Returns jump_ratio (worst seam's max step / max step
    elsewhere), seam_level_db and seam_level_db_mean (worst and mean seam level step), level_db_p95,
    level_db_max and level_db_mean (level steps between adjacent frames away from the seams), and
    the seam count."""
    a = np.asarray(audio, np.float64)
    if a.ndim == 2:
        a = a[None]
    seams = [int(s) for s in seams]
    radius = max(1, int(round(radius_ms * sample_rate / 1000)))
    frame = max(1, int(round(frame_ms * sample_rate / 1000)))
    samples = a.shape[-1]
    near = np.zeros(samples - 1, bool)
    for s in seams:
        near[max(0, s - radius):min(samples - 1, s + radius)] = True
    out = {"seams": len(seams), "jump_ratio": 0.0, "seam_level_db": 0.0, "level_db_p95": 0.0, "level_db_max": 0.0,
           "seam_level_db_mean": 0.0, "level_db_mean": 0.0}
    seam_steps, far_steps = [], []
    for x in a:
        step = np.abs(np.diff(x, axis=-1)).max(axis=0)
        rest = step[~near].max() if (~near).any() else 0.0
        seam_step = step[near].max() if near.any() else 0.0
        out["jump_ratio"] = max(out["jump_ratio"], float(seam_step / max(rest, 1e-12)))
        for s in seams:
            if s - frame < 0 or s + frame > samples:
                continue
            both = x[:, s - frame:s + frame]
            seam_steps.append(float(_db_steps(both, frame).max()))
            out["seam_level_db"] = max(out["seam_level_db"], seam_steps[-1])
        # adjacent frame pairs away from every seam (a frame grid offset so no pair straddles one)
        steps = _db_steps(x, frame).max(axis=0)
        centres = (np.arange(steps.size) + 1) * frame
        far = np.all(np.abs(centres[:, None] - np.asarray(seams or [-10 * frame])[None, :]) >= frame, axis=1)
        if far.any():
            out["level_db_p95"] = max(out["level_db_p95"], float(np.percentile(steps[far], 95)))
            out["level_db_max"] = max(out["level_db_max"], float(steps[far].max()))
            far_steps.append(steps[far])
    if seam_steps:
        out["seam_level_db_mean"] = float(np.mean(seam_steps))
    if far_steps:
        out["level_db_mean"] = float(np.mean(np.concatenate(far_steps)))
    return out
