"""Data pipeline throughput: clips per second delivered in batches, 44.1 kHz stereo, 95 s window.

    .venv/bin/python bench/bench_data.py                 # writes a corpus under /tmp, prints a table
    .venv/bin/python bench/bench_data.py --batches 6 --workers 2

Cases: a folder of 16-bit WAV, of FLAC, of 48 kHz FLAC (resampled to 44.1 kHz), each read
in-process (decode threads only) and with grain worker processes; and pre-encoded latents
(64 x 2048 frames per crop at ratio 2048, as for Stable Audio Open). Files are 100-130 s synthetic
clips, so every example is a real random 95 s crop. Throughput is examples per second after the
first batch (which includes start-up; reported apart).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

WINDOW = 4194304  # 95.1 s at 44.1 kHz


class _FakeEncoder:
    """Average-pools by 2048 into 64 channels: the shape of Stable Audio Open's latents."""
    sample_rate, downsampling_ratio, io_channels = 44100, 2048, 2

    def encode(self, audio):
        b, c, n = audio.shape
        pooled = audio.reshape(b, c, n // 2048, 2048).mean(-1)
        return np.repeat(pooled, 32, axis=1)


def make_corpus(root: Path, count: int, fmt: str, sample_rate: int) -> Path:
    import soundfile as sf

    from sa_jax.audio import resample
    from sa_jax.data.synth import synth_clip

    out = root / f"{fmt}_{sample_rate}"
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        audio, meta = synth_clip(0, i, min_seconds=100, max_seconds=130)
        if sample_rate != 44100:
            audio = resample(audio, 44100, sample_rate)
        sf.write(out / f"{i:03d}.{fmt}", audio.T, sample_rate, subtype="PCM_16")
        (out / f"{i:03d}.json").write_text(__import__("json").dumps(meta))
    return out


def run_case(cfg: dict, batches: int) -> tuple[float, float]:
    from sa_jax.data import DataPipeline

    pipe = DataPipeline(cfg)
    t0 = time.perf_counter()
    it = pipe.iterator()
    next(it)
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * cfg["batch_size"] / (time.perf_counter() - t1)
    if hasattr(it, "close"):
        it.close()
    return rate, first


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--batches", type=int, default=4, help="timed batches per case (after the first)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="decode threads per process")
    p.add_argument("--dir", default=None, help="where to write the corpus (default: a temp dir)")
    args = p.parse_args()

    from sa_jax.data.latents import encode_dataset
    from sa_jax.data.pipeline import absl_flags_parsed

    absl_flags_parsed()
    root = Path(args.dir or tempfile.mkdtemp(prefix="sa_jax_bench_data_"))
    t = time.perf_counter()
    wav = make_corpus(root, args.files, "wav", 44100)
    flac = make_corpus(root, args.files, "flac", 44100)
    flac48 = make_corpus(root, args.files, "flac", 48000)
    lat = root / "latents"
    encode_dataset(_FakeEncoder(), wav, lat)
    print(f"corpus: {args.files} files x 3 formats of 100-130 s, and their latents, in "
          f"{time.perf_counter() - t:.0f} s under {root}")

    base = dict(window=WINDOW, batch_size=args.batch_size, shard_index=0, shard_count=1, seed=0,
                num_threads=args.threads, prefetch_buffer_size=2, worker_buffer_size=1)
    cases = []
    for name, path in (("WAV 16-bit 44.1k", wav), ("FLAC 44.1k", flac), ("FLAC 48k -> 44.1k", flac48)):
        cases.append((name, "0 (threads)", dict(base, path=str(path))))
        cases.append((name, str(args.workers), dict(base, path=str(path), num_workers=args.workers)))
    cases.append(("latents 64 x 2048", "0 (threads)", dict(base, kind="latents", path=str(lat))))
    cases.append(("latents 64 x 2048", str(args.workers), dict(base, kind="latents", path=str(lat),
                                                              num_workers=args.workers)))

    cpu = platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"\nmachine: {platform.node()}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}; "
          f"batch {args.batch_size}, window {WINDOW} samples (95.1 s) stereo, {args.batches} timed batches\n")
    print("| source | worker processes | clips/s | first batch (s) |")
    print("|---|---|---|---|")
    for name, workers, cfg in cases:
        rate, first = run_case(cfg, args.batches)
        print(f"| {name} | {workers} | {rate:.1f} | {first:.1f} |", flush=True)
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
