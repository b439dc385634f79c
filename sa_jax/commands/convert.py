"""`sa-jax convert SRC OUT`: any supported checkpoint -> an sa-jax checkpoint directory."""

from __future__ import annotations


def run(args) -> int:
    from pathlib import Path

    from sa_jax import Autoencoder

    if Path(args.output).exists() and not args.overwrite:  # say so before the slow part
        raise FileExistsError(f"{args.output} already exists; choose a new path or pass --overwrite")
    model = Autoencoder.load(args.source, config=args.model_config)
    out = model.save(args.output, overwrite=args.overwrite)
    print(f"{args.source} -> {out} (autoencoder, {model.num_params():,} parameters)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert stable-audio-tools / diffusers weights to an sa-jax checkpoint")
    p.add_argument("source", help="stable-audio-tools .safetensors/.ckpt or folder, or a diffusers folder")
    p.add_argument("output", help="new sa-jax checkpoint directory (Orbax params + config.yaml)")
    p.add_argument("--model-config", default=None,
                   help="model_config.json for a bare stable-audio-tools weight file")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(func=run)
