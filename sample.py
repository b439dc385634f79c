"""Text-to-audio from the command line: `python sample.py PROMPT... [--model M] [options]`
(without --model: the small model shipped with sa-jax).

The same as `sa-jax sample` (sa_jax/commands/sample.py); `python sample.py --help` lists the options.
"""

import sys

from sa_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["sample", *sys.argv[1:]]))
