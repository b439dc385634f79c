"""Clips per second of the paper's metrics: sa-jax (sa_jax.metrics) against the torch reference pipeline
(stable-audio-metrics' steps with torchopenl3 / hear21passt), same random weights, same clips, same machine,
one run. Prints a table with the ratios and the process' peak memory.

    .venv/bin/python bench/bench_metrics.py                       # 4 stereo clips of 5 s at 44.1 kHz
    .venv/bin/python bench/bench_metrics.py --clips 8 --seconds 10 --metrics fd_openl3
    .venv/bin/python bench/bench_metrics.py --memory-files 1000     # memory while streaming a folder

Both sides run the whole per-file path (read, peak-normalise, resample, frame, embed); sa-jax's compile
happens on a warm-up clip first and is reported apart. Full-size models (OpenL3 mel256-512, PaSST-S).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def write_clips(folder: Path, count: int, seconds: float, seed: int = 0) -> list[Path]:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    sr = 44100
    t = np.arange(int(sr * seconds)) / sr
    paths = []
    for i in range(count):
        x = np.stack([np.sin(2 * np.pi * rng.uniform(100, 2000) * t) * 0.3 + rng.normal(size=t.size) * 0.05
                      for _ in range(2)], axis=1)
        paths.append(folder / f"clip{i}.wav")
        sf.write(paths[-1], x, sr)
    return paths


def bench_openl3(paths, warm, tmp):
    import librosa
    import soxr
    import torch

    from sa_jax.metrics import OpenL3
    from sa_jax.testing.metrics_ref import import_resampy, openl3_torch

    import_resampy()
    import torchopenl3

    net = openl3_torch(seed=0)
    weights = tmp / "torchopenl3_mel256_music_512.pth.tar"
    torch.save(net.state_dict(), weights)
    model = OpenL3.load(weights, batch_size=32, frontend="kapre014")     # torchopenl3's front end: the same work
    t0 = time.perf_counter()
    model.statistics([warm])
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.statistics(paths)
    ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows = []
    for p in paths:          # stable-audio-metrics' extract_embeddings (channels=2) with torchopenl3
        audio, sr = librosa.load(p, sr=None, mono=False)
        audio = audio.T * (10 ** (-1 / 20) / np.abs(audio).max())
        audio = soxr.resample(audio, sr, 44100)
        embs = [torchopenl3.get_audio_embedding([audio[:, c]], [44100], model=net, hop_size=0.5, center=True,
                                                batch_size=32, verbose=False, sampler="resampy")[0][0].numpy()
                for c in range(2)]
        rows.append(np.concatenate(embs, axis=1))
    e = np.concatenate(rows)
    np.cov(e, rowvar=False)
    ref = time.perf_counter() - t0
    return ours, ref, compile_s


def bench_passt(paths, warm, tmp):
    import librosa
    import torch

    from sa_jax.metrics import PaSST
    from sa_jax.models.passt import PaSSTConfig
    from sa_jax.testing.metrics_ref import passt_logits_torch, passt_torch

    net = passt_torch(PaSSTConfig(), seed=0)
    weights = tmp / "passt-s-f128-p16-s10-ap.476-swa.pt"
    torch.save(net.state_dict(), weights)
    model = PaSST.load(weights, batch_size=4)
    t0 = time.perf_counter()
    list(model.file_probabilities([warm]))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    list(model.file_probabilities(paths))
    ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    for p in paths:          # stable-audio-metrics' return_probabilities
        audio, _ = librosa.load(p, sr=32000, mono=True)
        audio = audio * (10 ** (-1 / 20) / np.abs(audio).max())
        step, size = 5 * 32000, 10 * 32000
        logits = []
        for i in range(0, max(step, len(audio) - step), step):
            w = audio[i:i + size]
            if size * 0.15 < len(w) < size:
                w = np.concatenate([w, np.zeros(size - len(w), w.dtype)])
            logits.append(passt_logits_torch(net, w[None])[0])
        torch.softmax(torch.from_numpy(np.mean(logits, axis=0)), dim=0)
    ref = time.perf_counter() - t0
    return ours, ref, compile_s


BENCHES = {"fd_openl3": bench_openl3, "kl_passt": bench_passt}


def bench_memory(count: int, tmp: Path) -> tuple[float, float, float]:
    """(peak RSS MiB after a 64-file warm-up, peak RSS MiB after streaming `count` files, seconds) of
    FD_openl3's statistics over a folder of `count` short mono files (one OpenL3 window each), alone in
    this process."""
    import soundfile as sf
    import torch

    from sa_jax.metrics import OpenL3
    from sa_jax.testing.metrics_ref import openl3_torch

    weights = tmp / "torchopenl3_mel256_music_512.pth.tar"
    torch.save(openl3_torch(seed=0).state_dict(), weights)
    folder = tmp / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        sf.write(folder / f"f{i:05d}.wav", rng.normal(size=22050).astype(np.float32) * 0.1, 44100)
    model = OpenL3.load(weights, batch_size=32)
    model.statistics(sorted(folder.iterdir())[:64])     # two full batches: the peak of one device call
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    model.statistics(folder)
    return before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--metrics", default="fd_openl3,kl_passt", help=f"from {', '.join(BENCHES)}")
    parser.add_argument("--memory-files", type=int, default=0,
                        help="instead: peak memory of FD_openl3 over a folder of this many short files")
    args = parser.parse_args()
    if args.memory_files:
        with tempfile.TemporaryDirectory() as tmp:
            before, after, seconds = bench_memory(args.memory_files, Path(tmp))
        print(f"FD_openl3 statistics over {args.memory_files} files (0.5 s mono, one window each): "
              f"{seconds:.0f} s; peak RSS {before:.0f} MiB after a 64-file warm-up, {after:.0f} MiB after all")
        return
    import jax
    import torch

    torch.set_num_threads(os.cpu_count())
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
          f"({jax.devices()[0].platform}), torch {torch.__version__}; {args.clips} stereo clips of {args.seconds:g} s "
          "at 44.1 kHz")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "clips").mkdir()
        paths = write_clips(tmp / "clips", args.clips, args.seconds)
        (tmp / "warm").mkdir()
        warm = write_clips(tmp / "warm", 1, args.seconds, seed=1)[0]
        for name in args.metrics.split(","):
            ours, ref, compile_s = BENCHES[name](paths, warm, tmp)
            rows.append((name, args.clips / ours, args.clips / ref, ref / ours, compile_s))
    print("\n| metric | sa-jax clips/s | reference clips/s | sa-jax / reference | sa-jax compile (s) |")
    print("|---|---|---|---|---|")
    for name, a, b, ratio, c in rows:
        print(f"| {name} | {a:.3f} | {b:.3f} | {ratio:.2f}x | {c:.1f} |")
    print(f"\npeak process memory (both sides): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
