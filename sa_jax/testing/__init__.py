"""The PyTorch references on CPU, for the parity tests and the benchmarks that compare against them.

Installed by `bash setup.sh test` (stable-audio-tools, descript-audio-codec, k-diffusion, ...); a missing
reference skips the test (pytest) or stops the benchmark with the same message. Nothing in sa_jax imports
this package: it sits above every layer (see tests/test_structure.py).
"""

import sys


def missing(message: str):
    """A reference is not installed: skip the running test, or stop the benchmark, saying so."""
    if "pytest" in sys.modules:
        import pytest

        pytest.skip(message)
    raise SystemExit(message)
