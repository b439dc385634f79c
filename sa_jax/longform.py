"""Beyond the window: long-form generation, continuation and inpainting (`StableAudio.generate_long`,
`continue_audio`, `inpaint`).

Everything works on one latent *canvas* (batch, latent channels, frames) that is filled window by
window. A window is the model's own length (`window_frames`); it is sampled with RePaint-style
inpainting (`sa_jax.diffusion.sample(known=..., mask=...)`): the frames already on the canvas
(the previous window's overlap, the user's audio) are re-noised to each step's sigma and put back,
so the model generates only the rest, consistent with them. The mask has soft edges: it falls
linearly from 1 to 0 over a few latent frames on the known side of each boundary (`RAMP_FRAMES`
around an inpainted region; a quarter of the overlap between long-form windows, `long_ramp`), so
the new frames blend into the known ones instead of meeting them at a hard cut.

Each window is conditioned on its true place in the piece: `seconds_start` = the window's offset,
`seconds_total` = the whole piece's length (both models were trained on crops of longer files
conditioned this way); both must lie in the family's timing range (`timing_max`). Every window has
the same shapes and the same pytree structure (the first window of a piece has an all-zero mask), so
the jitted sampling loop compiles once and is reused for every window. The finished canvas is
decoded in one go by the chunked decoder (`Autoencoder.decode`), so window seams lie inside the
decoder's context rather than at a decode boundary.

RePaint's "resampling" jumps (re-noising back up a step and sampling it again) are not offered: the
sampler's multistep solvers keep state across steps that a jump would invalidate.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

from sa_jax.audio import check_finite, resample, to_channels
from sa_jax.errors import AudioError, ConfigError

log = logging.getLogger("sa_jax.longform")

RAMP_FRAMES = 4            # latent frames of linear ramp at the edge of an inpainted region
RAMP_FRACTION = 0.25       # long form / continuation: the ramp is this fraction of the overlap (at least RAMP_FRAMES)
OVERLAP_FRACTION = 0.25    # default overlap between windows, as a fraction of the window

Progress = Callable[[int, int, float], None]   # (window index, windows, seconds_start)


def timing_max(family) -> float | None:
    """The largest seconds_total the family's timing conditioning represents (SA1: the integer
    timing table's max; SAO: the seconds_total number conditioner's max_val), or None if unknown."""
    timing_range = getattr(family, "timing_range", None)
    if timing_range is not None:
        return float(timing_range[1])
    cond_config = getattr(family, "cond_config", None)
    total = getattr(cond_config, "seconds_total", None)
    return None if total is None else float(total.max_val)


def check_length(sa, seconds_total: float) -> None:
    hi = timing_max(sa.family)
    if hi is not None and seconds_total > hi:
        raise ConfigError(f"a piece of {seconds_total:g} s is past this model's timing range: its seconds_total "
                          f"conditioning goes up to {hi:g} s; give at most {hi:g} seconds in all")


def prepare_audio(audio, sample_rate, sa, batch: int, what: str = "audio") -> np.ndarray:
    """User audio of any rate and channel count, (samples), (channels, samples) or (batch or 1,
    channels, samples) -> float32 (batch, model channels, samples) at the model's rate."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
        raise ConfigError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        a = a[None]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] == 0 or a.shape[1] == 0:
        raise AudioError(f"{what} must be a non-empty (samples), (channels, samples) or (batch, channels, samples) "
                         f"array, got shape {np.shape(audio)}")
    if a.shape[0] not in (1, batch):
        raise AudioError(f"{what} has batch {a.shape[0]} but there are {batch} prompts; give 1 or {batch}")
    check_finite(a, what)
    out = [to_channels(resample(x, int(sample_rate), sa.sample_rate), sa.autoencoder.io_channels, what) for x in a]
    a = np.stack(out).astype(np.float32)
    return np.ascontiguousarray(np.broadcast_to(a, (batch,) + a.shape[1:]))


def keep_mask(frames: int, keep: np.ndarray, ramp: int | None = None) -> np.ndarray:
    """A soft keep-mask over `frames` latent frames from a boolean `keep`: 1 deep inside the kept
    frames, falling linearly to 0 over the last `ramp` kept frames before each generated frame
    (the generated frames themselves are always 0)."""
    ramp = RAMP_FRAMES if ramp is None else ramp
    keep = np.asarray(keep, bool)
    gen = np.flatnonzero(~keep)
    if gen.size == 0:
        return np.ones(frames, np.float32)
    if gen.size == frames:
        return np.zeros(frames, np.float32)
    idx = np.arange(frames)
    distance = np.min(np.abs(idx[:, None] - gen[None, :]), axis=1)   # frames to the nearest generated frame
    return np.clip(distance / (ramp + 1), 0.0, 1.0).astype(np.float32)


def window_plan(window: int, frames: int, overlap: int, keep: np.ndarray) -> tuple[list[int], list[int]]:
    """Where the windows go: (window starts, seams), in latent frames, for filling frames
    [0, frames) of a canvas of max(frames, window) frames of which `keep` are known. Each window
    starts `overlap` frames before the end of what is done (the last one aligned to the canvas's
    end); a seam is where a window's generated frames begin after known ones."""
    length = max(frames, window)
    keep = np.asarray(keep, bool)
    starts, seams = [], []
    done = int(np.argmin(keep)) if not keep[:frames].all() else frames
    while done < frames:
        start = max(0, min(done - overlap, length - window))
        starts.append(start)
        if done > 0:
            seams.append(done)
        done = start + window
        while done < frames and keep[done]:
            done += 1
    return starts, seams


def plan(sa, seconds_total: float, overlap_seconds: float | None = None,
         known_seconds: float = 0.0) -> tuple[list[int], list[int]]:
    """`window_plan` for a piece of seconds_total whose first known_seconds are given
    (continuation), in latent frames: what generate_long / continue_audio will do."""
    ratio = sa.autoencoder.downsampling_ratio
    frames = max(1, math.ceil(round(seconds_total * sa.sample_rate) / ratio))
    keep = np.zeros(max(frames, sa.window_frames), bool)
    keep[:int(round(known_seconds * sa.sample_rate)) // ratio] = True
    overlap = _overlap_frames(sa, overlap_seconds)
    return window_plan(sa.window_frames, frames, overlap if not known_seconds else max(overlap, 1), keep)


def _sampling(kwargs: dict) -> dict:
    allowed = {"steps", "cfg_scale", "sampler", "seed", "negative_prompt", "sigma_min", "sigma_max", "rho",
               "resample_passes", "first_item"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"unexpected argument(s) {', '.join(unknown)}; "
                        f"sampling arguments: {', '.join(sorted(allowed))}")
    return {"steps": None, "cfg_scale": None, "sampler": None, "seed": 0, "negative_prompt": None,
            "sigma_min": None, "sigma_max": None, "rho": None, "resample_passes": 1, "first_item": 0, **kwargs}


def long_ramp(overlap: int) -> int:
    """The soft mask's ramp between windows: a quarter of the overlap. Measured on the shipped model
    (40 s, overlap 96 frames, 2 seeds x 2 prompts, 50 steps): mean level step at seams 4.4-5.7 dB
    with a 4-frame ramp, 2.1-3.0 dB with 24 frames (the piece's own between 50 ms frames: 2.8 dB)."""
    return max(RAMP_FRAMES, int(round(overlap * RAMP_FRACTION)))


def _window(sa, prompts, canvas, keep, start: int, seconds_total: float, index: int, s: dict,
            ramp: int | None = None) -> np.ndarray:
    """Sample the window [start, start + window_frames) of `canvas` with the frames where `keep`
    is true inpainted as known; returns the window's latents (kept frames equal to the canvas's)."""
    w = sa.window_frames
    known = canvas[:, :, start:start + w]
    mask = keep_mask(w, keep[start:start + w], ramp)[None, None, :]
    seconds_start = start * sa.autoencoder.downsampling_ratio / sa.sample_rate
    return sa._latents(prompts, seconds_start, seconds_total, s["steps"], s["cfg_scale"], s["sampler"], s["seed"],
                       s["negative_prompt"], None, 1.0, s["sigma_min"], s["sigma_max"], s["rho"], None,
                       known=known, mask=mask, resample_passes=s["resample_passes"], window_index=index,
                       first_item=s["first_item"])


def _fill(sa, prompts, canvas, keep, frames: int, seconds_total: float, overlap: int, s: dict,
          progress: Progress | None) -> np.ndarray:
    """Generate every frame of canvas[..., :frames] that `keep` does not hold, left to right, each
    window starting `overlap` frames before the end of what is done (as far back as that is known)."""
    w = sa.window_frames
    starts, _ = window_plan(w, frames, overlap, keep)
    keep = keep.copy()
    for k, start in enumerate(starts):
        seconds_start = start * sa.autoencoder.downsampling_ratio / sa.sample_rate
        if progress is not None:
            progress(k, len(starts), seconds_start)
        log.info("window %d/%d at %.2f s of %.2f s", k + 1, len(starts), seconds_start, seconds_total)
        canvas[:, :, start:start + w] = _window(sa, prompts, canvas, keep, start, seconds_total, k, s,
                                                long_ramp(overlap))
        keep[start:start + w] = True
    return canvas


def _decode(sa, canvas, samples: int) -> np.ndarray:
    audio = sa.autoencoder.decode(canvas)
    return np.ascontiguousarray(audio[:, :, :samples], dtype=np.float32)


def _overlap_frames(sa, overlap_seconds) -> int:
    w = sa.window_frames
    if overlap_seconds is None:
        return int(round(w * OVERLAP_FRACTION))
    from sa_jax.pipeline import _number

    frames = int(round(_number("overlap_seconds", overlap_seconds, minimum=0) * sa.sample_rate
                       / sa.autoencoder.downsampling_ratio))
    if frames >= w:
        raise ConfigError(f"overlap_seconds {overlap_seconds:g} must be shorter than the window of "
                          f"{sa.window_seconds:.2f} s")
    return frames


def generate_long(sa, prompts, seconds_total: float = 180.0, overlap_seconds: float | None = None,
                  progress: Progress | None = None, **sampling) -> np.ndarray:
    from sa_jax.pipeline import _number, _prompt_list

    s = _sampling(sampling)
    prompts = _prompt_list(prompts)
    seconds_total = _number("seconds_total", seconds_total, above=0)
    check_length(sa, seconds_total)
    overlap = _overlap_frames(sa, overlap_seconds)
    ratio = sa.autoencoder.downsampling_ratio
    samples = int(round(seconds_total * sa.sample_rate))
    frames = max(1, math.ceil(samples / ratio))
    canvas = np.zeros((len(prompts), sa.family.latent_channels, max(frames, sa.window_frames)), np.float32)
    keep = np.zeros(canvas.shape[-1], bool)
    canvas = _fill(sa, prompts, canvas, keep, frames, seconds_total, overlap, s, progress)
    return _decode(sa, canvas[:, :, :max(frames, 1)], samples)


def _encode(sa, audio: np.ndarray) -> np.ndarray:
    return sa.autoencoder.encode(audio)   # the posterior mean: the VAE round trip's latents


def continue_audio(sa, audio, sample_rate, prompts, seconds: float = 20.0, overlap_seconds: float | None = None,
                   progress: Progress | None = None, **sampling) -> np.ndarray:
    from sa_jax.pipeline import _number, _prompt_list

    s = _sampling(sampling)
    prompts = _prompt_list(prompts)
    seconds = _number("seconds", seconds, above=0)
    x = prepare_audio(audio, sample_rate, sa, len(prompts))
    ratio = sa.autoencoder.downsampling_ratio
    samples = x.shape[-1] + int(round(seconds * sa.sample_rate))
    if samples - x.shape[-1] < 1:
        raise ConfigError(f"seconds = {seconds:g} adds no sample at {sa.sample_rate} Hz; give seconds > 0")
    seconds_total = samples / sa.sample_rate
    check_length(sa, seconds_total)
    overlap = _overlap_frames(sa, overlap_seconds)
    frames = math.ceil(samples / ratio)
    known = x.shape[-1] // ratio   # whole frames of input; a partial last frame is generated
    if known < 1:
        raise AudioError(f"the audio to continue is {x.shape[-1]} samples long, shorter than one latent frame "
                         f"({ratio} samples at {sa.sample_rate} Hz)")
    canvas = np.zeros((len(prompts), sa.family.latent_channels, max(frames, sa.window_frames)), np.float32)
    canvas[:, :, :known] = _encode(sa, x[:, :, :known * ratio])
    keep = np.zeros(canvas.shape[-1], bool)
    keep[:known] = True
    canvas = _fill(sa, prompts, canvas, keep, frames, seconds_total, max(overlap, 1), s, progress)
    return _decode(sa, canvas[:, :, :frames], samples)


def inpaint(sa, audio, sample_rate, prompts, start: float, end: float, progress: Progress | None = None,
            **sampling) -> np.ndarray:
    from sa_jax.pipeline import _number, _prompt_list

    s = _sampling(sampling)
    prompts = _prompt_list(prompts)
    x = prepare_audio(audio, sample_rate, sa, len(prompts))
    samples = x.shape[-1]
    length = samples / sa.sample_rate
    start = _number("start", start, minimum=0)
    end = _number("end", end, above=0)
    if start >= end:
        raise ConfigError(f"start ({start:g} s) must be before end ({end:g} s)")
    if end > length + 1e-9:
        raise ConfigError(f"the region [{start:g}, {end:g}) s is outside the audio: it is {length:.3f} s long, so "
                          f"0 <= start < end <= {length:.3f}")
    ratio = sa.autoencoder.downsampling_ratio
    frame_s = ratio / sa.sample_rate
    if (end - start) < frame_s:
        raise ConfigError(f"the region [{start:g}, {end:g}) s is shorter than one latent frame ({frame_s * 1000:.1f} "
                          f"ms = {ratio} samples at {sa.sample_rate} Hz); make it at least that long")
    seconds_total = length
    check_length(sa, seconds_total)
    frames = math.ceil(samples / ratio)
    a = int(math.floor(start * sa.sample_rate / ratio))
    b = min(frames, int(math.ceil(end * sa.sample_rate / ratio)))
    w = sa.window_frames
    most = w - 2 * RAMP_FRAMES
    if b - a > most:
        raise ConfigError(f"the region [{start:g}, {end:g}) s is {b - a} latent frames; one inpainting window "
                          f"regenerates at most {most} frames ({most * frame_s:.2f} s)")
    canvas = np.zeros((len(prompts), sa.family.latent_channels, max(frames, w)), np.float32)
    canvas[:, :, :frames] = _encode(sa, x)
    keep = np.ones(canvas.shape[-1], bool)   # past the end: known silence, not generated
    keep[a:b] = False
    # one window, the region in its middle (as far as the canvas allows)
    first = int(min(max(0, (a + b) // 2 - w // 2), canvas.shape[-1] - w))
    if progress is not None:
        progress(0, 1, first * frame_s)
    log.info("window 1/1 at %.2f s of %.2f s", first * frame_s, seconds_total)
    canvas[:, :, first:first + w] = _window(sa, prompts, canvas, keep, first, seconds_total, 0, s)
    return _decode(sa, canvas[:, :, :frames], samples)
