"""The persistent compilation cache of the command line: a second `sa-jax sample` (or `sa-jax ui`) with the same
shapes loads its compiled programs from disk instead of compiling them again.

    from sa_jax.compile_cache import enable
    folder = enable()        # before the first jit; None when switched off

Where: `$SA_JAX_CACHE_DIR`, else `$XDG_CACHE_HOME/sa-jax/xla`, else `~/.cache/sa-jax/xla`. Set
`SA_JAX_CACHE_DIR=off` (or empty) to switch it off. The folder is safe to delete at any time: JAX keys each
entry by the program, the compiler options and the JAX/XLA versions, so a stale entry is never used, and it keeps
the folder under `SA_JAX_CACHE_MAX_GB` (default 4) by evicting the least recently used entries. Library code
(`import sa_jax`) leaves JAX's configuration alone; only the entry points call this.
"""

from __future__ import annotations

import os
from pathlib import Path

OFF = ("", "off", "0", "false", "none")


def folder() -> Path | None:
    """The cache folder the environment asks for (None: switched off)."""
    value = os.environ.get("SA_JAX_CACHE_DIR")
    if value is not None:
        return None if value.strip().lower() in OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sa-jax" / "xla"


def max_bytes() -> int:
    raw = os.environ.get("SA_JAX_CACHE_MAX_GB", "4")
    try:
        gb = float(raw)
    except ValueError:
        raise ValueError(f"SA_JAX_CACHE_MAX_GB must be a number of gigabytes (e.g. 4), got {raw!r}") from None
    if not gb > 0:
        raise ValueError(f"SA_JAX_CACHE_MAX_GB must be above 0, got {raw!r}; switch the cache off with "
                         f"SA_JAX_CACHE_DIR=off")
    return int(gb * 2**30)


def enable() -> Path | None:
    """Point JAX's persistent compilation cache at `folder()` and cache every program (the small ones add up:
    the README's main command has dozens). Returns the folder, or None when off or not writable."""
    path = folder()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None   # a read-only home: run uncached rather than fail
    if not os.access(path, os.W_OK):
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", max_bytes())
    return path
