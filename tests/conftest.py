"""Test-session settings shared by every test module."""

import os

# The command line caches compiled programs on disk (sa_jax/compile_cache.py). Tests call it in-process and as
# subprocesses; they run uncached so each test compiles what it measures and nothing lands in the home folder.
# tests/test_compile_cache.py turns it on with its own folder. A developer may opt in by setting the variable.
os.environ.setdefault("SA_JAX_CACHE_DIR", "off")
