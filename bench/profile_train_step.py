"""Where one sa-jax training step spends its time on XLA:CPU: per-op times from JAX's profiler, summed by kind.

    .venv/bin/python bench/profile_train_step.py                      # unet_small of bench_train_step.py
    .venv/bin/python bench/profile_train_step.py --case dit_small --xla-convs

Builds the step exactly as bench/bench_train_step.py does (same case, config and batch), runs it a few times,
then traces `--steps` steps with `jax.profiler` and sums the duration of every XLA op (thunk) by a coarse kind:
the copies of the donated state made before the update (parameters, optimiser moments), the convolutions, the
matrix products, and the rest by phase (forward, backward from the op's metadata; "update" for the ops of the
optimiser, clipping, EMA and the non-finite guard, which carry no model metadata). Times are summed over
XLA's threads, so their total exceeds the step's wall time. `--xla-convs` traces the U-Net with its
convolutions left to XLA (sa_jax.models.unet.CPU_MATMUL_CONVS off).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import bench_train_step as bts


def kind_of(name: str, defs: dict) -> str | None:
    """A coarse kind for the op `name` of the compiled HLO (`defs`: instruction name -> its text)."""
    text = defs.get(name)
    if text is None:
        return None
    base = re.sub(r"\.\d+$", "", name)
    meta = re.search(r'op_name="([^"]*)"', text)
    op = meta.group(1) if meta else ""
    if base == "copy":
        src = re.search(r"copy\(%(\S+)\)", text)
        src = src.group(1) if src else ""
        if src.startswith("args_0__opt_state"):
            return "copy of the optimiser state (donated input)"
        if src.startswith("args_0__params"):
            return "copy of the parameters (donated input)"
        return "copy (layout)"
    # Ops without model metadata: the update's, and XLA's kernel-gradient convolutions and their transposes.
    phase = "backward" if "transpose(jvp" in op else "forward" if "jvp(" in op else None
    if "convolution" in text.split("(")[0] or base.startswith("conv"):
        return f"convolution ({phase or 'backward: kernel gradients'})"
    if base.startswith(("ynn_fusion", "dot")):
        return f"matrix product ({phase or 'update'})"
    if "transpose" in base:
        return f"transpose ({phase or 'kernel gradients to the kernel layout'})"
    return f"elementwise / reduce ({phase or 'update: clipping, AdamW, EMA, guard'})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="unet_small", choices=sorted(bts.CASES))
    ap.add_argument("--steps", type=int, default=5, help="traced steps")
    ap.add_argument("--xla-convs", action="store_true", help="the U-Net's convolutions as XLA convolutions")
    args = ap.parse_args()

    import jax

    from sa_jax.models import unet
    from sa_jax.parallel import make_mesh
    from sa_jax.training.diffusion import create_state, make_train_step

    unet.CPU_MATMUL_CONVS = not args.xla_convs
    case = bts.CASES[args.case]
    cfg = bts.sa_jax_config(case)
    mesh = make_mesh(cfg.mesh)
    state = create_state(cfg, mesh)
    batch = bts.random_batch(cfg, case["batch"], case["frames"])
    step = make_train_step(cfg, mesh)
    defs = {}
    for line in step.lower(state, {}, batch).compile().as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (.*)", line)
        if m:
            defs[m.group(1)] = m.group(2)
    for _ in range(3):
        state, metrics = step(state, {}, batch)
        float(metrics["loss"])
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = step(state, {}, batch)
        float(metrics["loss"])
    wall = (time.perf_counter() - start) / args.steps
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(args.steps):
                state, metrics = step(state, {}, batch)
                float(metrics["loss"])
        events = json.load(gzip.open(next(Path(tmp).rglob("*.trace.json.gz"))))
    events = events["traceEvents"] if isinstance(events, dict) else events
    totals = collections.Counter()
    for e in events:
        kind = kind_of(e["name"], defs) if e.get("ph") == "X" else None
        if kind:
            totals[kind] += e.get("dur", 0) / 1e3 / args.steps
    print(f"{args.case}{' (XLA convolutions)' if args.xla_convs else ''}: step {wall * 1e3:.0f} ms wall "
          f"(untraced, mean of {args.steps}); op times summed over threads, ms per step\n")
    print("| ops | ms per step | share |")
    print("|---|---|---|")
    total = sum(totals.values())
    for kind, ms in totals.most_common():
        print(f"| {kind} | {ms:.1f} | {ms / total:.0%} |")
    print(f"| all ops | {total:.1f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
