"""`sa-jax sample PROMPT... --model M`: text-to-audio generation to WAV files, with a spectrogram
PNG beside each.

Every prompt is sampled `--batch-size` times (variations of one prompt, as stable-audio-tools'
batch size); all (prompt, variation) items go through `StableAudio.generate` in batches of at most
`--max-batch`, sharded over the devices present. Item n of the run (prompt by prompt, variation by
variation) draws its noise from (--seed, n), so each file's audio is the same whatever --max-batch and
the device count. Files are written atomically.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from pathlib import Path


def read_prompts(args) -> list[str]:
    prompts = list(args.prompts) + list(getattr(args, "prompt", None) or [])
    if args.prompts_file:
        from sa_jax.config import read_text

        path = Path(args.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file {path} does not exist")
        lines = [line.strip() for line in read_text(path, "prompts file").splitlines()]   # not UTF-8: file, line
        prompts += [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError("no prompts: give PROMPT arguments, --prompt TEXT, or --prompts-file (one prompt per line)")
    return prompts


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def output_paths(out: str, items: list[tuple[int, str, int]], batch_size: int) -> list[Path]:
    """A .wav path per (prompt index, prompt, variation): `out` itself when it names one .wav file
    and there is one item, `out` stem + index when it names a .wav and there are several, else
    files in the folder `out`."""
    out_path = Path(out)
    if out_path.suffix.lower() == ".wav":
        if len(items) == 1:
            return [out_path]
        return [out_path.with_name(f"{out_path.stem}_{n:03d}.wav") for n in range(len(items))]
    names = []
    for i, prompt, k in items:
        suffix = f"_{k}" if batch_size > 1 else ""
        names.append(out_path / f"{i:03d}_{_slug(prompt)}{suffix}.wav")
    return names


def check_writable(paths: list[Path]) -> list[Path]:
    """Before any loading or sampling: every output folder exists as a folder (created here when it
    does not) and a file can be written in it, and no output path is an existing folder. A
    ValueError naming the path otherwise. Returns the folders it created, deepest first."""
    import os
    import uuid

    created: list[Path] = []
    for folder in sorted({p.parent for p in paths}):
        for above in (folder, *folder.parents):   # the nearest existing path must be a folder
            if above.exists() or above.is_symlink():
                if not above.is_dir():
                    raise ValueError(f"--out: {above} exists and is not a folder; choose a folder or a .wav path")
                break
            created.append(above)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".sa-jax-write-test-{uuid.uuid4().hex[:8]}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise ValueError(f"--out: cannot write in {folder}: {e.strerror or e}") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"--out: cannot write in {folder}: permission denied")
    for path in paths:
        if path.is_dir():
            raise ValueError(f"--out: {path} is a folder; it cannot be replaced by an audio file")
    return created


def write_spectrogram(path: Path, audio, sample_rate: int, title: str) -> Path:
    """A log-magnitude spectrogram (channels averaged) as a PNG, written atomically."""
    import os
    import uuid

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mono = np.asarray(audio, np.float32).mean(axis=0)
    n_fft = 2048 if mono.size >= 2048 else max(16, 1 << (max(mono.size, 2).bit_length() - 1))
    hop = n_fft // 4
    frames = max(1, 1 + (mono.size - n_fft) // hop) if mono.size >= n_fft else 1
    padded = np.pad(mono, (0, max(0, n_fft + (frames - 1) * hop - mono.size)))
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(padded[idx] * np.hanning(n_fft), axis=-1)).T
    db = 20 * np.log10(np.maximum(spec, 1e-8))
    db = np.maximum(db, db.max() - 90)
    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    ax.imshow(db, origin="lower", aspect="auto", cmap="magma",
              extent=(0, mono.size / sample_rate, 0, sample_rate / 2 / 1000))
    ax.set_xlabel("seconds")
    ax.set_ylabel("kHz")
    ax.set_title(title[:90], fontsize=9)
    fig.tight_layout()
    tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}.png"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def writable_outputs(paths: list[Path]):
    """`check_writable` before the work; a run that fails leaves no empty output folder it made."""
    created = check_writable(paths)
    try:
        yield
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                pass
        raise


@contextlib.contextmanager
def pipeline_log():
    """The pipeline's log (a line per stage and per long-form window) on stderr while a command runs."""
    handler = logging.StreamHandler(sys.stderr)
    logger = logging.getLogger("sa_jax")
    logger.addHandler(handler)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    # absl's logging (imported by orbax) gives the root logger a handler of its own: without this, every line
    # would print twice, once as "INFO:sa_jax...:" through the root
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def lora_specs(args) -> list[tuple[str, float]]:
    """--lora DIR[:STRENGTH] (repeatable) as StableAudio.load's `lora`; LoraError for a bad strength."""
    from sa_jax.checkpoints.lora import parse_spec

    return [parse_spec(text) for text in getattr(args, "lora", None) or []]


def run(args) -> int:
    if args.plan:
        return _plan(args)
    if args.topology is not None or args.slices != 1:
        raise ValueError("--topology and --slices plan the sampling program: add --plan")
    with pipeline_log():
        return _sample(args)


def _plan(args) -> int:
    """`--plan`: compile the sampling loop and the VAE decode for --batch-size clips without loading weights."""
    from sa_jax.training.plan import format_report, plan_sampling

    print(format_report(plan_sampling(args.model, args.batch_size, args.steps, args.sampler, args.cfg_scale,
                                      args.dtype if args.dtype != "float32" else None, args.topology, args.slices)))
    return 0


def _sample(args) -> int:
    from sa_jax.config import check_seed

    prompts = read_prompts(args)
    if args.batch_size < 1 or args.max_batch < 1:
        raise ValueError(f"--batch-size and --max-batch must be >= 1, got {args.batch_size} and {args.max_batch}")
    items = [(i, p, k) for i, p in enumerate(prompts) for k in range(args.batch_size)]
    paths = output_paths(args.out, items, args.batch_size)
    chunks = [items[s:s + args.max_batch] for s in range(0, len(items), args.max_batch)]
    check_seed(args.seed, "--seed")   # item n draws from (seed, n): one seed for the whole run
    with writable_outputs(paths):   # checked before loading and sampling, not after
        return _generate(args, prompts, paths, chunks)


def _generate(args, prompts, paths, chunks) -> int:
    import time

    from sa_jax.audio import load_audio, write_audio
    from sa_jax.pipeline import StableAudio

    print(f"loading {args.model or 'the shipped small model'}", file=sys.stderr)
    from sa_jax.checkpoints.table import allow_nonfinite_weights

    with allow_nonfinite_weights(getattr(args, "allow_nonfinite_weights", False)):
        model = StableAudio.load(args.model, t5=args.t5, dtype=args.dtype, clap=args.clap,
                                 clap_tokenizer=args.clap_tokenizer, lora=lora_specs(args), vae_dtype=args.vae_dtype)
    init_audio = None
    long_form = args.seconds_total is not None and args.seconds_total > model.window_seconds
    if long_form:
        if args.init_audio or args.seconds_start:
            raise ValueError(f"--seconds-total {args.seconds_total:g} is past the model's window of "
                             f"{model.window_seconds:.2f} s, so it uses long form, which takes neither --init-audio "
                             "nor --seconds-start (use `sa-jax continue` to extend audio)")
        print(f"--seconds-total {args.seconds_total:g} s is past the model's window of {model.window_seconds:.2f} s: "
              "long form (overlapping windows, each overlap inpainted)", file=sys.stderr)
    if args.init_audio:
        init_audio = load_audio(args.init_audio, model.sample_rate, model.autoencoder.io_channels)
    for c, chunk in enumerate(chunks):
        start = time.perf_counter()
        print(f"batch {c + 1}/{len(chunks)}: {len(chunk)} item(s)", file=sys.stderr)
        first = c * args.max_batch
        sampling = dict(steps=args.steps, cfg_scale=args.cfg_scale, sampler=args.sampler, seed=args.seed,
                        first_item=first, negative_prompt=args.negative_prompt, sigma_min=args.sigma_min,
                        sigma_max=args.sigma_max, rho=args.rho)
        if long_form:   # the pipeline logs a line per window
            audio = model.generate_long([p for _, p, _ in chunk], seconds_total=args.seconds_total, **sampling)
        else:
            audio = model.generate(
                [p for _, p, _ in chunk], seconds_start=args.seconds_start, seconds_total=args.seconds_total,
                init_audio=init_audio, init_noise_level=args.init_noise_level, **sampling)
        for j, (_, prompt, _) in enumerate(chunk):
            wav = write_audio(paths[first + j], audio[j], model.sample_rate)
            write_spectrogram(wav.with_suffix(".png"), audio[j], model.sample_rate, prompt)
            print(f"  {wav} ({audio.shape[-1] / model.sample_rate:.2f} s)", file=sys.stderr)
        print(f"batch {c + 1}/{len(chunks)} done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def sigma_options(p) -> None:
    """--sigma-min, --sigma-max, --rho: the noise schedule (default: the model's)."""
    p.add_argument("--sigma-min", type=float, default=None, help="lowest noise level (default: the model's)")
    p.add_argument("--sigma-max", type=float, default=None,
                   help="highest noise level, where sampling starts (default: the model's; with --init-audio "
                        "--init-noise-level is the start instead)")
    p.add_argument("--rho", type=float, default=None, help="schedule shape (default: the model's)")


def add_model_arguments(p) -> None:
    """--model and the encoder flags: which model StableAudio.load reads (sample, ui, inpaint, continue)."""
    p.add_argument("--model", default=None,
                   help="sa-jax checkpoint, diffusers StableAudioPipeline folder, or stable-audio-tools folder "
                        "(default: the small model shipped with sa-jax)")
    add_encoder_arguments(p)


def add_dtype_arguments(p) -> None:
    """--dtype and --vae-dtype: StableAudio.load's dtype and vae_dtype (sample, inpaint, continue)."""
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="the denoiser's compute dtype; bfloat16 also holds its and the text encoder's weights in "
                        "bfloat16 (half the memory)")
    p.add_argument("--vae-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="the VAE's compute dtype (default float32 whatever --dtype is: the decoder sets the "
                        "audio's precision)")


def add_encoder_arguments(p) -> None:
    """--t5, --clap, --clap-tokenizer: the text encoder a stable-audio-tools release keeps apart."""
    p.add_argument("--t5", default=None, help="local T5 folder for a stable-audio-tools checkpoint")
    p.add_argument("--clap", default=None,
                   help="CLAP model (LAION .pt or transformers ClapModel folder) for a Stable Audio 1.0 checkpoint")
    p.add_argument("--clap-tokenizer", default=None, help="local RoBERTa tokenizer folder for a LAION .pt")


def register(sub) -> None:
    p = sub.add_parser("sample", help="generate audio from text prompts (WAV + spectrogram PNG)",
                       description="Text-to-audio with a Stable Audio model. Unset sampling options take the "
                                   "model's defaults (Stable Audio Open: dpmpp-3m-sde, 100 steps, cfg 7).")
    p.add_argument("prompts", nargs="*", help="text prompt(s)")
    p.add_argument("--prompt", action="append", default=[], help="a text prompt (repeatable; as a positional one)")
    add_model_arguments(p)
    p.add_argument("--prompts-file", default=None, help="text file with one prompt per line (# comments)")
    p.add_argument("--out", default="out", help="output folder, or a .wav path (default: out/)")
    p.add_argument("--seconds-start", type=float, default=0.0, help="timing conditioning: start (default 0)")
    p.add_argument("--seconds-total", type=float, default=None,
                   help="length in seconds (timing conditioning and trim); default: the model's window; past "
                        "the window: long form (overlapping windows, sa_jax/longform.py)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--sampler", default=None, help="e.g. dpmpp-3m-sde, dpmpp-2m, heun, dpmpp-2m-sde")
    sigma_options(p)
    p.add_argument("--seed", type=int, default=0,
                   help="the run's seed (default 0): item n (prompts in order, each --batch-size times) draws its "
                        "noise from (seed, n), so its audio does not depend on --max-batch or the device count")
    p.add_argument("--batch-size", type=int, default=1, help="samples of each prompt (default 1)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="most items sampled together in one compiled call, sharded over the devices present "
                        "(default 8)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--init-audio", default=None, help="audio file to make variations of")
    p.add_argument("--init-noise-level", type=float, default=1.0,
                   help="with --init-audio: the sigma sampling starts from (default 1.0)")
    add_dtype_arguments(p)
    p.add_argument("--allow-nonfinite-weights", action="store_true",
                   help="load weights that hold NaN/inf values (refused by default: they decode NaN audio)")
    p.add_argument("--lora", action="append", default=[], metavar="DIR[:STRENGTH]",
                   help="a LoRA adapter folder (a LoRA run's export) added to the model, at STRENGTH (default 1; "
                        "0 = the model without it); repeatable")
    p.add_argument("--plan", action="store_true",
                   help="compile the sampling loop and VAE decode for --batch-size clips without loading weights "
                        "(--model: an sa-jax checkpoint's config.yaml or a training config) and print memory, FLOPs "
                        "and time per clip, ending with one JSON line (docs/launch.md)")
    p.add_argument("--topology", default=None, help="with --plan: a TPU slice to compile for, e.g. v5e:4x4, v5p-64")
    p.add_argument("--slices", type=int, default=1, help="with --topology: that many slices")
    p.set_defaults(func=run)
