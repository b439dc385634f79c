"""`sa-jax inpaint IN OUT --start S --end E --prompt P` and `sa-jax continue IN OUT --seconds N
--prompt P`: regenerate a region of an audio file, or extend it, with a Stable Audio model
(`StableAudio.inpaint` / `continue_audio`, sa_jax/longform.py). The output (WAV + spectrogram PNG
beside it) is written atomically; the pipeline's log prints a line per window. `sa-jax sample --seconds-total`
past the model's window uses the same long-form path (`generate_long`)."""

from __future__ import annotations

import sys
from pathlib import Path


def _run(args, what: str) -> int:
    from sa_jax.commands.sample import lora_specs, pipeline_log, writable_outputs, write_spectrogram

    out = Path(args.out)
    if out.suffix.lower() != ".wav":
        raise ValueError(f"OUT must be a .wav path, got {out}")
    if what == "inpaint" and not args.start < args.end:
        raise ValueError(f"--start ({args.start:g}) must be before --end ({args.end:g})")
    if what == "continue" and not args.seconds > 0:
        raise ValueError(f"--seconds must be > 0, got {args.seconds:g}")
    from sa_jax.audio import read_audio, write_audio
    from sa_jax.checkpoints.table import allow_nonfinite_weights
    from sa_jax.pipeline import StableAudio

    data, rate = read_audio(args.input)   # before the output check: a missing input writes nothing
    with pipeline_log(), writable_outputs([out]):
        print(f"loading {args.model or 'the shipped small model'}", file=sys.stderr)
        with allow_nonfinite_weights(args.allow_nonfinite_weights):
            model = StableAudio.load(args.model, t5=args.t5, dtype=args.dtype, clap=args.clap,
                                     clap_tokenizer=args.clap_tokenizer, lora=lora_specs(args),
                                     vae_dtype=args.vae_dtype)
        sampling = dict(steps=args.steps, cfg_scale=args.cfg_scale, sampler=args.sampler, seed=args.seed,
                        negative_prompt=args.negative_prompt, resample_passes=args.resample_passes,
                        sigma_min=args.sigma_min, sigma_max=args.sigma_max, rho=args.rho)
        prompts = [args.prompt]
        if what == "inpaint":
            audio = model.inpaint(data, rate, prompts, start=args.start, end=args.end, **sampling)
        else:
            audio = model.continue_audio(data, rate, prompts, seconds=args.seconds,
                                         overlap_seconds=args.overlap_seconds, **sampling)
        wav = write_audio(out, audio[0], model.sample_rate)
        write_spectrogram(wav.with_suffix(".png"), audio[0], model.sample_rate, args.prompt)
        print(f"  {wav} ({audio.shape[-1] / model.sample_rate:.2f} s)", file=sys.stderr)
        return 0


def _common(p) -> None:
    from sa_jax.commands.sample import add_dtype_arguments, add_model_arguments, sigma_options

    p.add_argument("input", metavar="IN", help="audio file (any rate and channel count soundfile reads)")
    p.add_argument("out", metavar="OUT", help="output .wav path (a spectrogram .png is written beside it)")
    p.add_argument("--prompt", required=True, help="text prompt")
    add_model_arguments(p)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--sampler", default=None)
    sigma_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--resample-passes", type=int, default=1,
                   help="RePaint resampling: each step taken N times, jumping back up in between (default 1: none)")
    add_dtype_arguments(p)
    p.add_argument("--allow-nonfinite-weights", action="store_true",
                   help="load weights that hold NaN/inf values (refused by default)")
    p.add_argument("--lora", action="append", default=[], metavar="DIR[:STRENGTH]",
                   help="a LoRA adapter folder added to the model at STRENGTH (default 1); repeatable")


def register(sub) -> None:
    p = sub.add_parser("inpaint", help="regenerate [--start, --end) seconds of an audio file",
                       description="Inpainting: the audio outside [start, end) is kept (through the VAE), the "
                                   "region is generated to fit it and the prompt. The output has the input's length.")
    _common(p)
    p.add_argument("--start", type=float, required=True, help="region start (s)")
    p.add_argument("--end", type=float, required=True, help="region end (s, exclusive)")
    p.set_defaults(func=lambda args: _run(args, "inpaint"))
    p = sub.add_parser("continue", help="extend an audio file by --seconds",
                       description="Continuation: the input (through the VAE) followed by --seconds more, generated "
                                   "window by window with each window's overlap with what is known inpainted.")
    _common(p)
    p.add_argument("--seconds", type=float, required=True, help="seconds to add")
    p.add_argument("--overlap-seconds", type=float, default=None,
                   help="overlap between windows (default: a quarter of the window)")
    p.set_defaults(func=lambda args: _run(args, "continue"))
