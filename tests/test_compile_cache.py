"""The persistent compilation cache of the command line (sa_jax/compile_cache.py): the second `sa-jax sample`
with the same shapes compiles nothing, every program comes from the cache folder; the folder is configurable
and can be switched off or deleted."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from sa_jax import compile_cache

# Runs the command line in a fresh process and prints the compilation-cache events JAX recorded.
DRIVER = """
import json, sys
import jax.monitoring
events = {}
jax.monitoring.register_event_listener(lambda name, **kw: events.__setitem__(name, events.get(name, 0) + 1))
from sa_jax.cli import main
code = main(sys.argv[1:])
print("EVENTS " + json.dumps({k.rsplit("/", 1)[-1]: v for k, v in events.items() if "compilation_cache" in k}))
sys.exit(code)
"""


def sample(tmp_path, cache, out):
    env = dict(os.environ, SA_JAX_CACHE_DIR=str(cache))
    cmd = [sys.executable, "-c", DRIVER, "sample", "--prompt", "a soft piano chord", "--seconds-total", "1",
           "--steps", "3", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    line = [x for x in res.stdout.splitlines() if x.startswith("EVENTS ")][-1]
    return json.loads(line[len("EVENTS "):])


@pytest.mark.slow   # moved out of the default run for its time (~55s on 2 AVX2 cores); run with -m slow
def test_second_run_compiles_nothing(tmp_path):
    cache = tmp_path / "xla-cache"
    first = sample(tmp_path, cache, tmp_path / "a.wav")
    assert first.get("cache_misses", 0) > 0 and first.get("cache_hits", 0) == 0, first
    assert any(cache.iterdir()), "nothing was written to the cache folder"
    second = sample(tmp_path, cache, tmp_path / "b.wav")
    print(f"first run: {first}; second run: {second}")
    assert second.get("cache_misses", 0) == 0, f"the second run compiled again: {second}"
    assert second.get("cache_hits", 0) == first["cache_misses"]
    a, b = (sf.read(tmp_path / name, dtype="float32")[0] for name in ("a.wav", "b.wav"))
    assert np.array_equal(a, b)   # the cached program makes the same audio


def test_folder_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SA_JAX_CACHE_DIR", str(tmp_path / "c"))
    assert compile_cache.folder() == tmp_path / "c"
    for off in ("off", "", "0"):
        monkeypatch.setenv("SA_JAX_CACHE_DIR", off)
        assert compile_cache.folder() is None and compile_cache.enable() is None
    monkeypatch.delenv("SA_JAX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.folder() == tmp_path / "xdg" / "sa-jax" / "xla"
    monkeypatch.setenv("SA_JAX_CACHE_MAX_GB", "lots")
    with pytest.raises(ValueError, match="SA_JAX_CACHE_MAX_GB must be a number"):
        compile_cache.max_bytes()
