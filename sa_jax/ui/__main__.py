"""`python -m sa_jax.ui [--model M] ...` is `sa-jax ui [--model M] ...`."""

import sys

from sa_jax.cli import main

sys.exit(main(["ui", *sys.argv[1:]]))
