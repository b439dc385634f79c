"""Cold and warm starts of the README's main command: the same `python sample.py ...` run twice with an empty
persistent compilation cache (sa_jax/compile_cache.py), then once with the cache switched off.

    .venv/bin/python bench/bench_warm_start.py [--repeats 2]

Each run is a fresh process, timed from start to exit (loading the model, compiling or reading compiled
programs, sampling, writing the WAV and its spectrogram).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["sample.py", "--prompt", "A warm plucked string playing a steady melody in C major at 120 BPM, loud.",
           "--seconds-total", "4"]


def run(cache: str, out: Path) -> float:
    env = dict(os.environ, SA_JAX_CACHE_DIR=cache)
    start = time.perf_counter()
    subprocess.run([sys.executable, *COMMAND, "--out", str(out)], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="cold/warm pairs, each with a new empty cache")
    args = ap.parse_args()
    cold, warm, off = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            cache = Path(tmp) / f"cache{i}"
            cold.append(run(str(cache), Path(tmp) / f"cold{i}.wav"))
            warm.append(run(str(cache), Path(tmp) / f"warm{i}.wav"))
            off.append(run("off", Path(tmp) / f"off{i}.wav"))
            size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; command: python {' '.join(COMMAND)}")
    print(f"cache folder after a run: {size / 2**20:.1f} MiB\n")
    print("| run | median seconds | runs |")
    print("|---|---|---|")
    for name, times in (("cache off", off), ("cold (empty cache)", cold), ("warm (second run)", warm)):
        print(f"| {name} | {statistics.median(times):.1f} | {', '.join(f'{t:.1f}' for t in times)} |")
    print(f"\nwarm / cold: {statistics.median(warm) / statistics.median(cold):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
