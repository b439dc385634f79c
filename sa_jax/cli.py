"""The `sa-jax` command line. Subcommands live in `sa_jax/commands/<module>.py`; each module exposes
`register(subparsers)`, which adds its parser(s) and sets `func(args) -> int`. Command modules import
JAX and the models inside `func`, so `sa-jax --help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

# One line per subcommand module in sa_jax/commands/.
COMMANDS = [
    "vae",  # encode, decode, roundtrip
    "convert",
    "params",
    "configs",  # the packaged configs (configs/), by name
    "sample",  # text-to-audio generation (sa_jax/pipeline.py)
    "merge_lora",  # merge-lora: LoRA adapters merged into a model (sa_jax/checkpoints/lora.py)
    "longform",  # inpaint, continue (sa_jax/longform.py)
    "synth",  # synthetic corpus (sa_jax/data/synth.py)
    "train",  # diffusion training (sa_jax/training)
    "evaluate",  # timing accuracy, text adherence, reconstruction (sa_jax/eval)
    "metrics",  # FD_openl3, KL_passt, CLAP score, FD on CLAP embeddings (sa_jax/metrics)
    "ablate",  # ablation studies: variants x seeds trained or sampled, evaluated, tabulated (sa_jax/ablate)
    "recipe",  # the small model end to end: synth, VAE, CLAP, encode, U-Net, evaluate
    "ui",  # the web UI (sa_jax/ui): generation, variations, inpainting, long form in a browser
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sa-jax", description="Stable Audio in JAX")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"sa_jax.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from sa_jax import compile_cache

        compile_cache.enable()   # a second run with the same shapes reuses the compiled programs
        if getattr(args, "seed", None) is not None:   # every command's --seed, checked before any work
            from sa_jax.config import check_seed

            check_seed(args.seed, "--seed")
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
            NotADirectoryError) as e:
        # User errors (bad input, bad config, bad checkpoint): one clear line, no traceback.
        print(f"sa-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
