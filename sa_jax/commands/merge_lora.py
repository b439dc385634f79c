"""`sa-jax merge-lora BASE ADAPTER[:STRENGTH]... OUT`: a whole model with LoRA adapters merged into its
weights, written as an sa-jax checkpoint (what `StableAudio.save` writes; `StableAudio.load` and
`sa-jax sample --model OUT` read it without the adapters). It generates what `--lora` on the base does,
within float32 rounding. OUT is never replaced unless --overwrite, and then only if sa-jax wrote it."""

from __future__ import annotations

import sys
from pathlib import Path


def run(args) -> int:
    from sa_jax.checkpoints import store
    from sa_jax.checkpoints.lora import parse_spec

    specs = [parse_spec(text) for text in args.adapters]   # a bad strength fails before anything is read
    out = Path(args.out)
    if out.resolve() == Path(args.base).resolve() or any(out.resolve() == Path(f).resolve() for f, _ in specs):
        raise ValueError(f"OUT {out} is the base model or an adapter; write the merged model to a new folder")
    if out.exists() or out.is_symlink():
        if not args.overwrite:
            raise FileExistsError(f"{out} already exists; choose a new folder or pass --overwrite to replace it")
        store.check_replaceable(out)   # before loading: --overwrite replaces only what sa-jax wrote

    from sa_jax.commands.sample import pipeline_log
    from sa_jax.pipeline import StableAudio

    with pipeline_log():
        model = StableAudio.load(args.base, t5=args.t5, clap=args.clap, clap_tokenizer=args.clap_tokenizer,
                                 lora=specs)
        path = model.save(out, overwrite=args.overwrite)
    print(f"merged {len(specs)} adapter(s) into {args.base}: {path}", file=sys.stderr)
    return 0


def register(sub) -> None:
    from sa_jax.commands.sample import add_encoder_arguments

    p = sub.add_parser("merge-lora", help="write a model with LoRA adapters merged into its weights",
                       description="Merge LoRA adapters (the export of a LoRA run) into a base model and write the "
                                   "result as an sa-jax checkpoint. Each ADAPTER is a folder, optionally with a "
                                   "strength: DIR:0.7 (default 1; 0 leaves the base as it is; negative subtracts).")
    p.add_argument("base", metavar="BASE", help="the model the adapters were trained on: an sa-jax checkpoint, "
                                                "diffusers folder or stable-audio-tools folder")
    p.add_argument("adapters", metavar="ADAPTER[:STRENGTH]", nargs="+", help="LoRA adapter folder(s), applied in order")
    p.add_argument("out", metavar="OUT", help="folder for the merged model (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is an sa-jax checkpoint")
    add_encoder_arguments(p)
    p.set_defaults(func=run)
