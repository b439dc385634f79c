"""What the web page's controls mean, without the page: raw control values (`Request`) -> checked
settings (`Settings`) -> the pipeline call and the `sa-jax` command line that makes the same audio.

Which job a request is follows from what is filled in, so a person never picks a mode:
- "Source audio" with "Continue by (s)" > 0: continuation (`StableAudio.continue_audio`);
- "Source audio" otherwise: inpainting of [Inpaint start, Inpaint end) s (`StableAudio.inpaint`);
- "Init audio": a variation (`generate(init_audio=..., init_noise_level=...)`);
- else "Seconds total" up to the model's window: `generate`; past it: long form (`generate_long`),
  as `sa-jax sample` does.
Every bad value is a ConfigError (a ValueError) whose message says what is allowed; the page shows it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import secrets
import shlex
from pathlib import Path

from sa_jax.errors import ConfigError

MAX_BATCH = 8          # output slots on the page; `sa-jax sample`'s default --max-batch, so one jitted call
MAX_STEPS = 1000
SEED_LIMIT = 2**32     # seeds are 0 <= seed < 2**32 everywhere in sa-jax; -1 here draws one


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the page needs to know about the loaded model, and how it was loaded (for the command line)."""

    window_seconds: float
    max_seconds: float              # the longest Seconds total: the timing range (long form) or the window
    samplers: tuple[str, ...]
    sampler: str                    # the model's defaults, the controls' initial values
    steps: int
    cfg_scale: float
    sigma_min: float
    sigma_max: float
    rho: float
    family: str = ""
    load_args: tuple[str, ...] = ()   # --model M --t5 DIR ... as `sa-jax sample` takes them
    loras: tuple[tuple[str, float], ...] = ()   # (adapter folder, strength it was given with)

    @classmethod
    def of(cls, sa, load_args: tuple[str, ...] = (), loras: tuple[tuple[str, float], ...] = ()) -> "ModelInfo":
        from sa_jax.diffusion import SAMPLERS
        from sa_jax.longform import timing_max

        d = sa.defaults
        longest = timing_max(sa.family)
        return cls(window_seconds=sa.window_seconds, max_seconds=max(longest or 0.0, sa.window_seconds),
                   samplers=tuple(s for s in SAMPLERS if not SAMPLERS[s].rectified_flow), sampler=d.sampler,
                   steps=d.steps, cfg_scale=d.cfg_scale, sigma_min=d.sigma_min, sigma_max=d.sigma_max, rho=d.rho,
                   family=sa.family.name, load_args=tuple(load_args), loras=tuple(loras))


@dataclasses.dataclass(frozen=True)
class Request:
    """The page's controls as they arrive (numbers may be None, NaN or floats for integers)."""

    prompt: str = ""
    negative_prompt: str = ""
    seconds_start: float | None = 0.0
    seconds_total: float | None = None
    steps: float | None = None
    cfg_scale: float | None = None
    seed: float | None = -1
    sampler: str | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float | None = None
    batch_size: float | None = 1
    init_audio: str | None = None
    init_noise_level: float | None = 1.0
    source_audio: str | None = None
    inpaint_start: float | None = None
    inpaint_end: float | None = None
    continue_seconds: float | None = 0.0
    lora_scales: tuple[float | None, ...] = ()


@dataclasses.dataclass(frozen=True)
class Settings:
    """A checked request: what runs and what the page reports."""

    mode: str                       # generate | long | variation | inpaint | continue
    prompt: str
    negative_prompt: str | None
    seconds_start: float
    seconds_total: float
    steps: int
    cfg_scale: float
    seed: int
    sampler: str
    sigma_min: float
    sigma_max: float
    rho: float
    batch_size: int
    init_audio: str | None = None
    init_noise_level: float = 1.0
    source_audio: str | None = None
    inpaint_start: float = 0.0
    inpaint_end: float = 0.0
    continue_seconds: float = 0.0
    lora_scales: tuple[float, ...] = ()

    def sampling(self) -> dict:
        """The sampling keywords every pipeline call takes."""
        s = dict(steps=self.steps, cfg_scale=self.cfg_scale, sampler=self.sampler, seed=self.seed,
                 negative_prompt=self.negative_prompt, sigma_min=self.sigma_min, rho=self.rho)
        if self.mode != "variation":   # a variation starts at init_noise_level instead of sigma_max
            s["sigma_max"] = self.sigma_max
        return s

    def command(self, info: ModelInfo) -> str:
        """The `sa-jax` command line that makes the same audio (the same seed and settings; the
        audio files by the names they were uploaded or downloaded with)."""
        sampling = ["--steps", str(self.steps), "--cfg-scale", _num(self.cfg_scale), "--sampler", self.sampler,
                    "--seed", str(self.seed)]
        if self.negative_prompt is not None:
            sampling += ["--negative-prompt", self.negative_prompt]
        sampling += ["--sigma-min", _num(self.sigma_min)]
        if self.mode != "variation":
            sampling += ["--sigma-max", _num(self.sigma_max)]
        sampling += ["--rho", _num(self.rho)]
        model = list(info.load_args)
        for (folder, _), scale in zip(info.loras, self.lora_scales):
            model += ["--lora", f"{folder}:{_num(scale)}"]
        if self.mode in ("inpaint", "continue"):
            source = Path(self.source_audio).name
            if self.mode == "inpaint":
                args = ["sa-jax", "inpaint", source, "inpainted.wav", "--start", _num(self.inpaint_start),
                        "--end", _num(self.inpaint_end)]
            else:
                args = ["sa-jax", "continue", source, "continued.wav", "--seconds", _num(self.continue_seconds)]
            line = shlex.join(args + ["--prompt", self.prompt] + sampling + model)
            if self.batch_size > 1:   # the commands make one item; the page sampled the batch in one call
                line += (f"\n# the command makes one item; this batch of {self.batch_size} was one call of "
                         f"StableAudio.{'inpaint' if self.mode == 'inpaint' else 'continue_audio'} with the "
                         f"prompt {self.batch_size} times")
            return line
        args = ["sa-jax", "sample", "--prompt", self.prompt]
        if self.seconds_start:
            args += ["--seconds-start", _num(self.seconds_start)]
        args += ["--seconds-total", _num(self.seconds_total)] + sampling
        if self.batch_size > 1:
            args += ["--batch-size", str(self.batch_size)]
        if self.mode == "variation":
            args += ["--init-audio", Path(self.init_audio).name, "--init-noise-level", _num(self.init_noise_level)]
        return shlex.join(args + model)


def _num(value: float) -> str:
    """A number as typed back: 2.0 -> "2", 0.3 -> "0.3" (repr: no digits lost)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _number(label: str, value, allowed: str) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(f"{label} is empty: give a number ({allowed})")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(float(value)):
        raise ConfigError(f"{label} must be a number ({allowed}), got {value!r}")
    return float(value)


def _integer(label: str, value, lo: int, hi: int) -> int:
    allowed = f"a whole number from {lo} to {hi}"
    v = _number(label, value, allowed)
    if v != int(v) or not lo <= v <= hi:
        raise ConfigError(f"{label} must be {allowed}, got {v:g}")
    return int(v)


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def resolve(req: Request, info: ModelInfo) -> Settings:
    """Check every control and decide the job; a ConfigError says which control and what is allowed."""
    prompt = _text(req.prompt)
    if not prompt:
        raise ConfigError("Prompt is empty: describe the audio to generate")
    negative = _text(req.negative_prompt) or None
    window, longest = info.window_seconds, info.max_seconds
    longer = (f"up to {longest:g} s in long form (overlapping windows)" if longest > window + 1e-9
              else "this model has no long form")
    total = _number("Seconds total", req.seconds_total, f"more than 0 and at most {longest:g} s")
    if not 0 < total <= longest + 1e-9:
        raise ConfigError(f"Seconds total {total:g} is out of range: give more than 0 and at most {longest:g} s "
                          f"(the model's window is {window:.2f} s; {longer})")
    start = _number("Seconds start", req.seconds_start, f"from 0 to below Seconds total {total:g}")
    if not 0 <= start < total:
        raise ConfigError(f"Seconds start {start:g} is out of range: give 0 or more and less than Seconds total "
                          f"({total:g} s)")
    steps = _integer("Steps", req.steps, 1, MAX_STEPS)
    cfg = _number("CFG scale", req.cfg_scale, "0 or more; 1 is no guidance")
    if cfg < 0:
        raise ConfigError(f"CFG scale must be 0 or more (1 is no guidance), got {cfg:g}")
    seed = _integer("Seed", req.seed, -1, SEED_LIMIT - 1)
    if seed == -1:
        seed = secrets.randbelow(SEED_LIMIT)
    sampler = _text(req.sampler)
    if sampler not in info.samplers:
        raise ConfigError(f"Sampler {sampler!r} is not one this model can use; choose one of "
                          f"{', '.join(info.samplers)}")
    sigma_min = _number("Sigma min", req.sigma_min, "more than 0")
    sigma_max = _number("Sigma max", req.sigma_max, "more than Sigma min")
    rho = _number("Rho", req.rho, "more than 0")
    if sigma_min <= 0 or rho <= 0:
        raise ConfigError(f"Sigma min and Rho must be more than 0, got {sigma_min:g} and {rho:g}")
    if sigma_max <= sigma_min:
        raise ConfigError(f"Sigma max ({sigma_max:g}) must be more than Sigma min ({sigma_min:g})")
    batch = _integer("Batch size", req.batch_size, 1, MAX_BATCH)
    scales = tuple(_number(f"LoRA strength {i + 1}", s, "a number; 1 is the adapter as trained, 0 is off")
                   for i, s in enumerate(req.lora_scales))
    common = dict(prompt=prompt, negative_prompt=negative, seconds_start=start, seconds_total=total, steps=steps,
                  cfg_scale=cfg, seed=seed, sampler=sampler, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho,
                  batch_size=batch, lora_scales=scales)

    if req.init_audio and req.source_audio:
        raise ConfigError("both Init audio (variations) and Source audio (inpainting, continuation) are set; "
                          "clear one of them")
    if req.source_audio:
        more = _number("Continue by (s)", req.continue_seconds or 0.0, "0 for inpainting, more to continue")
        if more < 0:
            raise ConfigError(f"Continue by (s) must be 0 (inpaint instead) or more, got {more:g}")
        if more > 0:
            return Settings(mode="continue", source_audio=req.source_audio, continue_seconds=more, **common)
        if req.inpaint_start is None or req.inpaint_end is None:
            raise ConfigError("Source audio is set: give Inpaint start and Inpaint end (seconds) to regenerate "
                              "that region, or Continue by (s) to extend it")
        a = _number("Inpaint start", req.inpaint_start, "0 or more")
        b = _number("Inpaint end", req.inpaint_end, "more than Inpaint start")
        if not 0 <= a < b:
            raise ConfigError(f"the inpainting region must have 0 <= Inpaint start < Inpaint end, got "
                              f"{a:g} to {b:g} s")
        return Settings(mode="inpaint", source_audio=req.source_audio, inpaint_start=a, inpaint_end=b, **common)
    long_form = total > window + 1e-9
    if req.init_audio:
        level = _number("Init noise level", req.init_noise_level, f"more than Sigma min ({sigma_min:g})")
        if level <= sigma_min:
            raise ConfigError(f"Init noise level ({level:g}) must be more than Sigma min ({sigma_min:g}): it is "
                              "the noise sampling starts from (low: close to the init audio)")
        if long_form:
            raise ConfigError(f"Seconds total {total:g} is past the model's window of {window:.2f} s (long form), "
                              "which takes no Init audio: shorten it, or use Source audio with Continue by (s)")
        return Settings(mode="variation", init_audio=req.init_audio, init_noise_level=level, **common)
    if long_form and start:
        raise ConfigError(f"Seconds total {total:g} is past the model's window of {window:.2f} s, so it uses long "
                          "form, which sets each window's own start: Seconds start must be 0")
    return Settings(mode="long" if long_form else "generate", **common)
