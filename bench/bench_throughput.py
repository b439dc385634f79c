"""Batch sampling throughput: clips per second against the batch size, on the CPU as one device and as 8
simulated devices (the batch sharded over them, `sa_jax.pipeline._place`), the way `sa-jax sample
--prompts-file F --max-batch B` streams prompts: one compiled program per batch size, `generate` (sampling +
VAE decode) called again and again.

    .venv/bin/python bench/bench_throughput.py [--model DIR] [--steps 10] [--batches 1,2,4,8] [--calls 2]

Each device count runs in its own process (XLA_FLAGS=--xla_force_host_platform_device_count=N must be set
before JAX starts). A batch size's first call compiles and is not timed; the next `--calls` calls are.
Default model: the shipped small model (Stable Audio 1.0 U-Net, 8.9 s window), clips trimmed to 4 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

PROMPTS = ["A warm plucked string playing a steady melody in C major at 120 BPM, loud.",
           "A soft sine pad holding a chord in A minor, quiet.", "Fast bright bells at 140 BPM, panned left.",
           "A deep bass line in E minor at 90 BPM."]


def measure(args) -> list[dict]:
    import jax

    from sa_jax import StableAudio

    sa = StableAudio.load(args.model)
    rows = []
    for batch in args.batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        kwargs = dict(seconds_total=args.seconds, steps=args.steps, seed=0)
        start = time.perf_counter()
        sa.generate(prompts, **kwargs)   # compiles this batch size
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        for call in range(args.calls):
            sa.generate(prompts, first_item=(call + 1) * batch, **kwargs)
        seconds = (time.perf_counter() - start) / args.calls
        used = max(k for k in range(1, min(len(jax.devices()), batch) + 1) if batch % k == 0)
        rows.append({"devices": len(jax.devices()), "used": used, "batch": batch, "first_call_s": compile_s,
                     "seconds_per_call": seconds, "clips_per_s": batch / seconds})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a model folder (default: the shipped small model)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds_total of each clip")
    ap.add_argument("--batches", default="1,2,4,8", help="batch sizes, comma separated")
    ap.add_argument("--calls", type=int, default=2, help="timed calls per batch size")
    ap.add_argument("--devices", default="1,8", help="simulated CPU device counts, comma separated")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.child:
        print(json.dumps(measure(args)))
        return 0
    rows = []
    for n in (int(d) for d in args.devices.split(",")):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu",
               "SA_JAX_CACHE_DIR": "off"}
        cmd = [sys.executable, __file__, "--child", "--steps", str(args.steps), "--seconds", str(args.seconds),
               "--batches", ",".join(map(str, args.batches)), "--calls", str(args.calls)]
        if args.model:
            cmd += ["--model", args.model]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        rows += json.loads(out.strip().splitlines()[-1])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; model: "
          f"{args.model or 'the shipped small model'}; {args.steps} steps dpmpp-3m-sde, clips of {args.seconds:g} s "
          f"(the whole window sampled and decoded); {args.calls} timed calls per row\n")
    print("| simulated devices | batch | devices used | first call (compile) s | s per call | clips/s | "
          "vs batch 1 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["devices"] == r["devices"] and b["batch"] == min(args.batches))
        print(f"| {r['devices']} | {r['batch']} | {r['used']} | {r['first_call_s']:.1f} | {r['seconds_per_call']:.2f} "
              f"| {r['clips_per_s']:.3f} | {r['clips_per_s'] / base['clips_per_s']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
