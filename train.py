"""Thin entry point: `python train.py --config configs/train_dit_tiny.yaml data.path=latents/ ...`
(the same as `sa-jax train ...`)."""

import sys

from sa_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
