"""`StableAudio`: prompts and timing -> audio, the public generation API.

    sa = StableAudio.load(path)          # sa-jax checkpoint, stable-audio-tools folder, diffusers folder
    audio = sa.generate(["128 BPM tech house drum loop"], seconds_total=20, seed=0)
    # -> np.ndarray (batch, channels, samples) float32 at sa.sample_rate, trimmed to seconds_total

Generation follows stable-audio-tools' `generate_diffusion_cond`: the prompts and timing become
conditioning; sampling starts from standard normal noise times sigma_max (or, for variations,
the encoded init audio plus that noise, with sigma_max = init_noise_level); a v-objective model
is preconditioned as k-diffusion's VDenoiser; the sigmas are polyexponential ending in 0; every
step evaluates [cond, uncond] in one batched call and mixes them with the CFG scale; the
latents of the whole window are decoded and trimmed to seconds_total.

A model *family* (`sa_jax.families`) is what differs between Stable Audio models: how prompts and
timing become conditioning, what the unconditional branch of CFG sees, the denoiser network, and
reading the formats the model is published in. Two are implemented: Stable Audio Open (`sao`:
T5 + number conditioners + DiT) and the paper's Stable Audio 1.0 (`sa1`: CLAP + integer timing
embeddings + U-Net). This module keeps `StableAudio`: which format a path holds (and so which
loader reads it), the sa-jax checkpoint it saves and reads, and generation.

The whole batch samples together in one jitted loop (`sa_jax.diffusion.sample`). With several
devices the batch is sharded over a 1-D mesh and the parameters are replicated. Every item draws its
noise (the starting noise and the SDE samplers' noise of every step) from its own key, (seed, item
number), so its audio does not depend on how items were batched or over how many devices.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import numbers
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.autoencoder import Autoencoder
from sa_jax.checkpoints import store
from sa_jax.checkpoints.lora import merge_adapters, read_adapters
from sa_jax.config import check_int, check_seed, from_dict, naming, to_dict
from sa_jax.errors import CheckpointError, ConfigError
from sa_jax.families import Loaded, SamplingDefaults, family_class, sa1, sao
from sa_jax.nn import compute_dtype

log = logging.getLogger("sa_jax.pipeline")

MODEL_TYPE = "diffusion_cond"

# --------------------------------------------------------------------------------------------
# The pipeline


def _number(name: str, value, *, minimum: float | None = None, above: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value:g}")
    if above is not None and value <= above:
        raise ValueError(f"{name} must be > {above:g}, got {value:g}")
    return value


def _prompt_list(prompts, what: str = "prompts") -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    try:
        prompts = list(prompts)
    except TypeError:
        raise TypeError(f"{what} must be a string or a list of strings, got {type(prompts).__name__}") from None
    if not prompts:
        raise ValueError(f"the {what} list is empty; give at least one prompt")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{what} must be strings, got {bad[:3]}")
    return prompts


# The small model trained by `sa-jax recipe small` and shipped as package data: StableAudio.load()'s default.
SHIPPED_MODEL = Path(__file__).resolve().parent / "assets" / "small"


def shipped_model() -> Path:
    """The shipped model's folder, or FileNotFoundError saying how to make it when it is absent."""
    if not (SHIPPED_MODEL / "config.yaml").is_file():
        raise FileNotFoundError(
            f"the shipped model is not in this checkout ({SHIPPED_MODEL} is missing): run the recipe, "
            "`sa-jax recipe small --out runs/small`, and copy runs/small/unet/export there, or give a model path")
    return SHIPPED_MODEL


class StableAudio:
    """A loaded text-to-audio model: a family (conditioning + denoiser), its autoencoder, the
    sampling window and default sampling settings."""

    def __init__(self, family, autoencoder: Autoencoder, sample_size: int,
                 defaults: SamplingDefaults = SamplingDefaults()):
        if autoencoder.latent_dim != family.latent_channels:
            raise CheckpointError(f"the autoencoder has {autoencoder.latent_dim} latent channels but the "
                                  f"denoiser takes {family.latent_channels}")
        self.family, self.autoencoder, self.defaults = family, autoencoder, defaults
        self.window_frames = int(sample_size) // autoencoder.downsampling_ratio
        if self.window_frames < 1:
            raise CheckpointError(f"sample_size {sample_size} is shorter than one latent frame "
                                  f"({autoencoder.downsampling_ratio} samples)")

    # --- facts ---------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.autoencoder.sample_rate

    @property
    def window_samples(self) -> int:
        return self.window_frames * self.autoencoder.downsampling_ratio

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    # --- loading and saving --------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None, t5: str | Path | None = None, dtype: str = "float32",
             clap: str | Path | None = None, clap_tokenizer: str | Path | None = None,
             lora: Sequence[str | Path | tuple[str | Path, float]] | None = None,
             vae_dtype: str = "float32") -> "StableAudio":
        """Load a model from
        * nothing (`path=None`): the small model shipped with sa-jax (`SHIPPED_MODEL`, trained by
          `sa-jax recipe small` on the synthetic corpus);
        * an sa-jax checkpoint directory (`sa-jax convert` output: config.yaml, params/, tokenizer/);
        * a diffusers `StableAudioPipeline` folder (transformer/, projection_model/, text_encoder/,
          tokenizer/, vae/; scheduler/ is read only for sigma_min / sigma_max);
        * a stable-audio-tools folder (model_config.json + model.safetensors or .ckpt); its T5 is
          not in that file and comes from `t5` (a local Hugging Face T5 folder with config.json,
          weights and tokenizer files), or from a `t5/` folder inside it. A Stable Audio 1.0
          (paper, `adp_cfg_1d`) folder takes its CLAP model from `clap` (a LAION `.pt`, with a local
          RoBERTa tokenizer folder as `clap_tokenizer`, or a transformers ClapModel folder).
        `dtype` ("float32" or "bfloat16"): "bfloat16" holds the denoiser's and the text encoder's weights in
        bfloat16 (half their memory; `Family.hold_weights`) and runs the denoiser in bfloat16 (cuDNN flash
        attention on a GPU). `vae_dtype`: the autoencoder's compute dtype, float32 by default whatever
        `dtype` is: the decoder is one pass per generation and the audio's precision is decided there
        (bench/RESULTS.md, bfloat16 inference); its weights stay float32.
        `lora`: LoRA adapter folders (what a LoRA run exports), each a folder or (folder, strength),
        added to the weights in order at alpha / rank * strength (sa_jax.checkpoints.lora.merge_adapters;
        an adapter of another family or model is an error, one trained on other weights a warning);
        strength 0 leaves the model exactly as without it.
        """
        compute_dtype(dtype)   # checked before anything is read
        compute_dtype(vae_dtype)
        adapters = read_adapters(lora) if lora else []   # before the base: a bad adapter fails fast
        path = shipped_model() if path is None else Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; StableAudio.load takes a folder: an sa-jax checkpoint, a "
                                  "diffusers StableAudioPipeline folder, or a stable-audio-tools folder with "
                                  "model_config.json and model.safetensors")
        start = time.perf_counter()
        if store.is_checkpoint(path):
            model = cls(*_load_sajax(path, dtype))
        elif (path / "model_index.json").is_file() or (path / "transformer").is_dir():
            model = cls(*sao.load_diffusers(path, dtype))
        elif (path / "model_config.json").is_file():
            model = cls(*_load_sat(path, t5, dtype, clap, clap_tokenizer))
        else:
            raise CheckpointError(f"{path} is not a model folder sa-jax knows: expected an sa-jax checkpoint "
                                  "(config.yaml + params/), a diffusers StableAudioPipeline folder (transformer/, "
                                  "vae/, ...) or a stable-audio-tools folder (model_config.json + weights)")
        if adapters:   # in float32, before any cast to bfloat16
            family = model.family
            family.set_trainable(merge_adapters(family.trainable(), family.name, adapters, base=str(path)))
        if dtype != "float32":
            model.family.hold_weights(dtype)
        if model.autoencoder.dtype != vae_dtype:
            ae = model.autoencoder
            model.autoencoder = Autoencoder(ae.config, ae.params, vae_dtype)
        log.info("loaded %s (%s, window %.2f s at %d Hz) in %.1f s", path, model.family.name,
                 model.window_seconds, model.sample_rate, time.perf_counter() - start)
        return model

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write an sa-jax checkpoint directory that `StableAudio.load` reads without the source."""
        if self.family.weights_dtype != "float32":
            raise ConfigError(f"this model holds its weights in {self.family.weights_dtype} (loaded with dtype="
                              f"{self.family.weights_dtype!r}): saving would write the rounded weights; load it "
                              "with dtype='float32' to save it")
        config = {"model_type": MODEL_TYPE, "family": self.family.name, "sample_rate": self.sample_rate,
                  "sample_size": self.window_samples, "sampling": to_dict(self.defaults),
                  "autoencoder": to_dict(self.autoencoder.config), **self.family.config_sections()}
        params = jax.device_get({"autoencoder": self.autoencoder.params, **self.family.params()})
        # The tokenizer goes into the new folder before store.save moves it into place, so an
        # interrupted save leaves nothing that looks finished.
        return store.save(path, config, params, overwrite=overwrite, extra=self.family.save_files)

    # --- generation ----------------------------------------------------------------------------
    def generate(self, prompts: str | Sequence[str], seconds_start: float = 0, seconds_total: float | None = None,
                 steps: int | None = None, cfg_scale: float | None = None, sampler: str | None = None,
                 seed: int = 0, negative_prompt: str | None = None, init_audio: np.ndarray | None = None,
                 init_noise_level: float = 1.0, sigma_min: float | None = None, sigma_max: float | None = None,
                 rho: float | None = None, init_noise: np.ndarray | None = None, trim: bool = True,
                 on_step: StepCallback | None = None, first_item: int = 0) -> np.ndarray:
        """Audio for `prompts`: float32 (batch, channels, samples) at `sample_rate`, trimmed to
        `seconds_total` (None: the whole window; trim=False: the whole window whatever
        seconds_total, to see where the model fell silent, as the paper's timing analysis does).
        The arguments are those of `generate_latents`, whose latents are decoded here.
        """
        latents = self.generate_latents(
            prompts, seconds_start, seconds_total, steps, cfg_scale, sampler, seed, negative_prompt, init_audio,
            init_noise_level, sigma_min, sigma_max, rho, init_noise, on_step=on_step, first_item=first_item)
        t0 = time.perf_counter()
        audio = self.autoencoder.decode(latents)
        log.info("decoded in %.2f s", time.perf_counter() - t0)
        seconds = self.window_seconds if seconds_total is None else float(seconds_total)
        samples = min(int(round(seconds * self.sample_rate)), audio.shape[-1]) if trim else audio.shape[-1]
        return np.ascontiguousarray(audio[:, :, :samples], dtype=np.float32)

    # --- beyond the window (sa_jax.longform) --------------------------------------------------
    # Each takes generate's sampling arguments as keywords: steps, cfg_scale, sampler, seed,
    # negative_prompt, sigma_min, sigma_max, rho, first_item; and returns float32 (batch, channels, samples) at
    # sample_rate. Input audio may have any rate and channel count (resampled, made stereo).
    def generate_long(self, prompts: str | Sequence[str], seconds_total: float = 180.0,
                      overlap_seconds: float | None = None, progress=None, **sampling) -> np.ndarray:
        """Audio of any length (within the family's timing range): windows overlapping by
        `overlap_seconds` (None: a quarter of the window), each conditioned on its own seconds_start
        and the piece's seconds_total, each inpainting its overlap with the previous one.
        `progress(window, windows, seconds_start)` is called before each window."""
        from sa_jax import longform

        return longform.generate_long(self, prompts, seconds_total, overlap_seconds, progress, **sampling)

    def continue_audio(self, audio: np.ndarray, sample_rate: int, prompts: str | Sequence[str],
                       seconds: float = 20.0, overlap_seconds: float | None = None, progress=None,
                       **sampling) -> np.ndarray:
        """The input (VAE round trip) followed by `seconds` more: long form seeded with the encoded
        input as the known prefix."""
        from sa_jax import longform

        return longform.continue_audio(self, audio, sample_rate, prompts, seconds, overlap_seconds, progress,
                                       **sampling)

    def inpaint(self, audio: np.ndarray, sample_rate: int, prompts: str | Sequence[str], start: float,
                end: float, progress=None, **sampling) -> np.ndarray:
        """The input (VAE round trip) with [start, end) seconds regenerated; the same length."""
        from sa_jax import longform

        return longform.inpaint(self, audio, sample_rate, prompts, start, end, progress, **sampling)

    def generate_latents(self, prompts: str | Sequence[str], seconds_start: float = 0,
                         seconds_total: float | None = None, steps: int | None = None, cfg_scale: float | None = None,
                         sampler: str | None = None, seed: int = 0, negative_prompt: str | None = None,
                         init_audio: np.ndarray | None = None, init_noise_level: float = 1.0,
                         sigma_min: float | None = None, sigma_max: float | None = None, rho: float | None = None,
                         init_noise: np.ndarray | None = None, on_step: StepCallback | None = None,
                         first_item: int = 0) -> np.ndarray:
        """The sampled latents of the whole window, float32 (batch, latent channels, window frames),
        before decoding (`generate` decodes them).

        seconds_start / seconds_total: the timing conditioning (the clip's offset in, and the total
        length of, the audio it imitates); seconds_total may not exceed the model's window.
        steps, cfg_scale, sampler, sigma_min, sigma_max, rho: None takes the model's defaults
        (`self.defaults`). seed: with `first_item`, draws the initial noise and the SDE noise: the
        prompts are items first_item, first_item + 1, ... of a run, and item n's noise comes from
        (seed, n) alone, so a list of prompts split over several calls (first_item counting on) gives
        each prompt the audio one call gives it, whatever the batch size or device count. The seed also
        draws the init-audio posterior sample, one for the whole run. negative_prompt: its conditioning
        replaces the zeroed one of CFG's unconditional branch. init_audio: (channels, samples) or
        (batch, channels, samples) at `sample_rate` for variations: encoded, then sampling starts at
        sigma_max = init_noise_level. init_noise: (batch, latent channels, window frames) standard
        normal noise to start from instead of the seed's. on_step: `on_step(step, steps)` is called from
        inside the jitted sampling loop as each step begins (step = steps taken so far) and once with
        (steps, steps) at the end (a progress bar; see `_StepReporter`).
        """
        window = self.window_seconds
        seconds_total = window if seconds_total is None else _number("seconds_total", seconds_total, above=0)
        if seconds_total > window + 1e-9:
            raise ValueError(f"seconds_total {seconds_total:g} is longer than the model's window of {window:.2f} s "
                             f"({self.window_samples} samples at {self.sample_rate} Hz); for longer audio use "
                             f"generate_long (windows overlapping and inpainted; `sa-jax sample` does it by itself)")
        return self._latents(prompts, seconds_start, seconds_total, steps, cfg_scale, sampler, seed, negative_prompt,
                             init_audio, init_noise_level, sigma_min, sigma_max, rho, init_noise, on_step=on_step,
                             first_item=first_item)

    def sampling_settings(self, steps=None, cfg_scale=None, sampler=None, sigma_min=None, sigma_max=None, rho=None,
                          *, init_noise_level=None) -> dict:
        """The sampling settings `generate` uses, resolved (None: the model's, `self.defaults`) and checked:
        {steps, cfg_scale, sampler (its canonical name), sigma_min, sigma_max, rho}, or a ValueError that
        names the bad one and what it allows. With `init_noise_level` (variations of init audio) sampling
        starts there instead, as sigma_max, which must then be None."""
        from sa_jax.diffusion import SAMPLER_ALIASES, SAMPLERS

        d = self.defaults
        steps = d.steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        cfg_scale = _number("cfg_scale", d.cfg_scale if cfg_scale is None else cfg_scale)
        sampler = d.sampler if sampler is None else sampler
        name = SAMPLER_ALIASES.get(sampler, sampler)
        if name not in SAMPLERS or SAMPLERS[name].rectified_flow:
            valid = [s for s in SAMPLERS if not SAMPLERS[s].rectified_flow]
            raise ValueError(f"sampler {sampler!r} cannot sample this {self.family.objective}-objective model; "
                             f"valid samplers: {', '.join(valid)}")
        rho = _number("rho", d.rho if rho is None else rho, above=0)
        sigma_min = _number("sigma_min", d.sigma_min if sigma_min is None else sigma_min, above=0)
        if init_noise_level is not None:
            if sigma_max is not None:
                raise ValueError("with init_audio the starting noise level is init_noise_level; do not pass sigma_max")
            sigma_max = _number("init_noise_level", init_noise_level, above=0)
        sigma_max = _number("sigma_max", d.sigma_max if sigma_max is None else sigma_max, above=0)
        if sigma_max <= sigma_min:
            what = "sigma_max" if init_noise_level is None else "init_noise_level"
            raise ValueError(f"{what} ({sigma_max:g}) must exceed sigma_min ({sigma_min:g})")
        return {"steps": int(steps), "cfg_scale": cfg_scale, "sampler": name, "sigma_min": sigma_min,
                "sigma_max": sigma_max, "rho": rho}

    def _latents(self, prompts, seconds_start, seconds_total, steps, cfg_scale, sampler, seed, negative_prompt,
                 init_audio, init_noise_level, sigma_min, sigma_max, rho, init_noise, *, known=None, mask=None,
                 resample_passes: int = 1, window_index: int | None = None,
                 on_step: StepCallback | None = None, first_item: int = 0) -> np.ndarray:
        """`generate_latents` without the window check on seconds_total (long form conditions each
        window on the whole piece's length). known, mask: RePaint inpainting (`sa_jax.diffusion.sample`),
        (batch, latent channels, window frames) and a mask broadcasting to it, 1 = keep; a family with an
        `inpaint_inputs(known, mask) -> dict` (when its `has_inpaint_inputs`) gets that extra conditioning in both CFG
        branches (the inpainting-trained models' inputs). window_index: folded into the seed's key, so
        every window of one piece draws its own noise; first_item: the number of the first prompt in the run
        (item n draws its noise from (seed, window, n))."""
        from sa_jax.diffusion import cfg_model, get_sigmas, sample, start_latents, v_denoiser

        prompts = _prompt_list(prompts)
        batch = len(prompts)
        seconds_total = _number("seconds_total", seconds_total, above=0)
        seconds_start = _number("seconds_start", seconds_start, minimum=0)
        if seconds_start >= seconds_total:
            raise ValueError(f"seconds_start ({seconds_start:g}) must be less than seconds_total ({seconds_total:g})")
        seed = check_seed(seed)   # 0 <= seed < 2**32; ConfigError (a ValueError) otherwise
        first_item = check_int(first_item, "first_item", minimum=0)
        if first_item + batch > 2**32:
            raise ValueError(f"first_item {first_item} + {batch} prompts passes 2**32, the most items a seed numbers")
        settings = self.sampling_settings(steps, cfg_scale, sampler, sigma_min, sigma_max, rho,
                                          init_noise_level=None if init_audio is None else init_noise_level)
        steps, cfg_scale, name, sigma_min, sigma_max, rho = (
            settings[k] for k in ("steps", "cfg_scale", "sampler", "sigma_min", "sigma_max", "rho"))

        key = jax.random.key(int(seed))
        if window_index is not None:
            key = jax.random.fold_in(key, window_index)
        k_noise, k_sampler, k_init = jax.random.split(key, 3)
        shape = (batch, self.family.latent_channels, self.window_frames)
        # one key per item, (seed, item number): an item's noise does not depend on its batch
        items = np.arange(first_item, first_item + batch, dtype=np.uint32)
        k_sampler = jax.vmap(jax.random.fold_in, (None, 0))(k_sampler, items)
        if init_noise is None:
            noise = jax.vmap(lambda k: jax.random.normal(k, shape[1:], jnp.float32))(
                jax.vmap(jax.random.fold_in, (None, 0))(k_noise, items))
        else:
            noise = np.asarray(init_noise, np.float32)
            if noise.shape != shape:
                raise ValueError(f"init_noise must have shape (batch, latent channels, window frames) = {shape}, "
                                 f"got {noise.shape}")
            if not np.all(np.isfinite(noise)):
                raise ValueError("init_noise has NaN or infinite values")
            noise = jnp.asarray(noise)
        init = None if init_audio is None else self._init_latents(init_audio, batch, int(jax.random.randint(
            k_init, (), 0, 2**31 - 1)))

        t0 = time.perf_counter()
        cond = self.family.condition(prompts, seconds_start, seconds_total)
        negative = None
        if negative_prompt is not None:
            if not isinstance(negative_prompt, str):
                raise TypeError(f"negative_prompt must be a string, got {type(negative_prompt).__name__}")
            negative = self.family.condition([negative_prompt] * batch, seconds_start, seconds_total)
        uncond = self.family.unconditional(cond, negative)
        # only inpainting-trained checkpoints (family.has_inpaint_inputs) take these inputs; others refuse them
        hook = self.family.inpaint_inputs if self.family.has_inpaint_inputs else None
        extra = hook(known, mask) if (hook is not None and known is not None) else None
        if extra:
            cond, uncond = {**cond, **extra}, {**uncond, **extra}
        log.info("conditioned %d prompt(s) in %.2f s", batch, time.perf_counter() - t0)

        sigmas = get_sigmas("polyexponential", steps, sigma_min, sigma_max, rho)
        x = start_latents(noise, sigmas[0], init)
        network, (x, cond, uncond) = _place(self.family.network(), (x, cond, uncond), batch)
        guided = cfg_model(network, cond, uncond, cfg_scale, rescale=self.family.cfg_rescale, rescale_axis=1,
                           objective=self.family.objective)
        denoiser = v_denoiser(guided)
        t0 = time.perf_counter()
        if known is not None:
            known, mask = _place(None, (jnp.asarray(known, x.dtype), jnp.broadcast_to(
                jnp.asarray(mask, x.dtype), x.shape)), batch)[1]
        with _StepReporter(on_step, sigmas) as listener:
            if listener is not None:
                denoiser = _ReportingDenoiser(denoiser, listener)
            latents = sample(denoiser, x, sigmas, name, key=k_sampler, known=known, mask=mask,
                             resample_passes=resample_passes)
            latents = np.asarray(jax.device_get(latents))
        if on_step is not None:
            on_step(steps, steps)
        log.info("sampled %d x %d latent frames, %d steps (%s, cfg %g) in %.2f s", batch, self.window_frames, steps,
                 name, cfg_scale, time.perf_counter() - t0)
        if not np.all(np.isfinite(latents)):
            raise FloatingPointError("sampling produced NaN or infinite latents (try float32, fewer steps or a lower "
                                     "cfg_scale)")
        return latents

    def _init_latents(self, init_audio, batch: int, seed: int) -> jax.Array:
        """Init audio (channels, samples) or (batch, channels, samples), cropped or zero-padded to
        the window, encoded (a posterior draw, as the reference's pretransform does)."""
        audio = np.asarray(init_audio, np.float32)
        if audio.ndim == 2:
            audio = audio[None]
        if audio.ndim != 3 or audio.shape[-1] == 0:
            raise ValueError(f"init_audio must be a non-empty (channels, samples) or (batch, channels, samples) "
                             f"array at {self.sample_rate} Hz, got shape {audio.shape}")
        if audio.shape[0] not in (1, batch):
            raise ValueError(f"init_audio has batch {audio.shape[0]} but there are {batch} prompts; give 1 or {batch}")
        n = self.window_samples
        audio = audio[:, :, :n]
        if audio.shape[-1] < n:
            audio = np.pad(audio, ((0, 0), (0, 0), (0, n - audio.shape[-1])))
        latents = self.autoencoder.encode(audio, sample=True, seed=seed)
        return jnp.asarray(np.broadcast_to(latents, (batch,) + latents.shape[1:]))


StepCallback = Callable[[int, int], None]   # (steps taken, steps)


class _StepReporter:
    """Per-step progress from inside the jitted sampling loop. The denoiser is wrapped in
    `_ReportingDenoiser`, which makes a host callback (`jax.debug.callback`) each time the sampler
    evaluates it, passing the sigma; the host side turns the sigma into the number of steps taken.
    The listener is found through an integer id that is a traced argument, not a constant, so one
    compiled loop serves every caller; without on_step the loop has no callback at all (and is the
    same program as before)."""

    _listeners: dict[int, tuple[StepCallback, np.ndarray]] = {}
    _ids = itertools.count()
    _lock = threading.Lock()

    def __init__(self, on_step: StepCallback | None, sigmas):
        self.on_step, self.sigmas, self.id = on_step, np.asarray(sigmas), None

    def __enter__(self) -> jax.Array | None:
        if self.on_step is None:
            return None
        with self._lock:
            self.id = next(self._ids) % 2**31
            self._listeners[self.id] = (self.on_step, self.sigmas)
        return jnp.asarray(self.id, jnp.int32)

    def __exit__(self, *exc) -> None:
        if self.id is not None:
            with self._lock:
                self._listeners.pop(self.id, None)

    @classmethod
    def report(cls, listener, sigma) -> None:
        entry = cls._listeners.get(int(listener))
        if entry is None:
            return
        on_step, sigmas = entry
        taken = int(np.sum(sigmas[:-1] > np.float32(sigma)))   # an evaluation at sigmas[i]: i steps taken
        try:
            on_step(min(taken, len(sigmas) - 1), len(sigmas) - 1)
        except Exception:   # a broken progress display must not stop sampling
            log.exception("on_step callback failed")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)  # a pytree (the listener id is a leaf), like the diffusion wrappers
class _ReportingDenoiser:
    denoiser: Any
    listener: jax.Array

    def __call__(self, x, sigma):
        jax.debug.callback(_StepReporter.report, self.listener, jnp.reshape(sigma, (-1,))[0])
        return self.denoiser(x, sigma)


def _place(network, batch_trees, batch: int):
    """With several devices: shard the batch over a 1-D mesh of as many devices as divide it
    evenly (8 devices: a batch of 8 or 16 uses all, a batch of 6 uses 6, a batch of 1 one) and
    replicate the network's parameters. The batch is never padded, so shapes, and with them the
    sampler's noise, do not depend on the device count: the same seed gives the same audio."""
    devices = jax.devices()
    n = max(k for k in range(1, min(len(devices), batch) + 1) if batch % k == 0)
    if n == 1:
        return network, batch_trees
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(devices[:n]), ("batch",))
    shard = NamedSharding(mesh, PartitionSpec("batch"))
    network = jax.device_put(network, NamedSharding(mesh, PartitionSpec()))
    return network, jax.tree_util.tree_map(lambda a: jax.device_put(jnp.asarray(a), shard), batch_trees)


# --------------------------------------------------------------------------------------------
# Loaders


def _load_sajax(path: Path, dtype: str) -> Loaded:
    """An sa-jax checkpoint folder, as `StableAudio.save` writes it; the family by its `family:` name."""
    from sa_jax.models.autoencoder import config_from_dict

    config = store.read_config(path)
    if config["model_type"] != MODEL_TYPE:
        raise CheckpointError(f"{path} is an sa-jax {config['model_type']!r} checkpoint, not a text-to-audio "
                              f"model ({MODEL_TYPE}); load it with the class for that model")
    family = family_class(config.get("family", "sao"), path)
    for key in ("autoencoder", "sample_size"):
        if key not in config:
            raise CheckpointError(f"{path / store.CONFIG_FILE} has no {key!r}")
    with naming(path / store.CONFIG_FILE):   # a value of the wrong type names the file and the key
        sample_size = check_int(config["sample_size"], "sample_size", minimum=1)
        ae_config = config_from_dict(config["autoencoder"])
        defaults = from_dict(SamplingDefaults, config.get("sampling", {}), "sampling")
    params = store.load_params(path)
    with naming(path / store.CONFIG_FILE):
        network = family.from_checkpoint(config, params, path, dtype)
    return Loaded(network, Autoencoder(ae_config, params["autoencoder"], dtype), sample_size, defaults)


def _load_sat(path: Path, t5, dtype: str, clap, clap_tokenizer) -> Loaded:
    """A stable-audio-tools folder: the paper's family when its diffusion is `adp_cfg_1d`, else SAO."""
    from sa_jax.checkpoints import sat_config

    model_config = sat_config.read(path / "model_config.json")
    if model_config["model"].get("diffusion", {}).get("type") == "adp_cfg_1d":
        return sa1.load_sat(path, model_config, clap, clap_tokenizer, dtype)
    return sao.load_sat(path, model_config, t5, dtype)
