"""`sa-jax convert SRC OUT`: any supported checkpoint -> an sa-jax checkpoint directory.

A whole text-to-audio model (a diffusers StableAudioPipeline folder, or a stable-audio-tools
`diffusion_cond` folder plus its T5 via --t5) becomes a StableAudio checkpoint; anything else is
read as an autoencoder.
"""

from __future__ import annotations

import json
from pathlib import Path


def is_whole_model(source: Path) -> bool:
    """A text-to-audio model folder (not just an autoencoder)?"""
    if not source.is_dir():
        return False
    if (source / "model_index.json").is_file() or (source / "transformer").is_dir():
        return True
    config = source / "model_config.json"
    if config.is_file():
        try:
            with open(config) as f:
                return json.load(f).get("model_type") == "diffusion_cond"
        except (json.JSONDecodeError, AttributeError):
            return False  # the autoencoder loader reports the bad file
    return False


def run(args) -> int:
    if Path(args.output).exists() and not args.overwrite:  # say so before the slow part
        raise FileExistsError(f"{args.output} already exists; choose a new path or pass --overwrite")
    from sa_jax.checkpoints.store import check_replaceable

    check_replaceable(args.output)   # --overwrite replaces only an sa-jax checkpoint
    if getattr(args, "allow_nonfinite_weights", False):
        from sa_jax.checkpoints.table import allow_nonfinite_weights

        with allow_nonfinite_weights():
            return _convert(args)
    return _convert(args)


def _convert(args) -> int:
    source = Path(args.source)
    if is_whole_model(source):
        from sa_jax.pipeline import StableAudio

        model = StableAudio.load(source, t5=args.t5, clap=args.clap, clap_tokenizer=args.clap_tokenizer)
        out = model.save(args.output, overwrite=args.overwrite)
        print(f"{args.source} -> {out} (text-to-audio, {model.family.name}, window {model.window_seconds:.2f} s)")
        return 0
    if args.t5 is not None or args.clap is not None:
        raise ValueError(f"--t5 and --clap are for whole stable-audio-tools models; {source} is read as an autoencoder")
    from sa_jax import Autoencoder

    model = Autoencoder.load(args.source, config=args.model_config)
    out = model.save(args.output, overwrite=args.overwrite)
    print(f"{args.source} -> {out} (autoencoder, {model.num_params():,} parameters)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert stable-audio-tools / diffusers weights to an sa-jax checkpoint")
    p.add_argument("source", help="stable-audio-tools .safetensors/.ckpt or folder, or a diffusers folder "
                                  "(a StableAudioPipeline folder converts the whole text-to-audio model)")
    p.add_argument("output", help="new sa-jax checkpoint directory (Orbax params + config.yaml)")
    p.add_argument("--model-config", default=None,
                   help="model_config.json for a bare stable-audio-tools weight file")
    p.add_argument("--t5", default=None,
                   help="local Hugging Face T5 folder (weights + tokenizer) for a stable-audio-tools "
                        "Stable Audio Open checkpoint, whose T5 is not in its weights")
    p.add_argument("--clap", default=None,
                   help="CLAP model (LAION .pt or transformers ClapModel folder) for a Stable Audio 1.0 checkpoint")
    p.add_argument("--clap-tokenizer", default=None, help="local RoBERTa tokenizer folder for a LAION .pt")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it is an sa-jax checkpoint "
                   "(anything else there is an error, never deleted)")
    p.add_argument("--allow-nonfinite-weights", action="store_true",
                   help="convert weights that hold NaN/inf values (refused by default: they decode NaN audio)")
    p.set_defaults(func=run)
