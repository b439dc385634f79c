"""Plans for TPU slices, compiled on this CPU with libtpu (`bash setup.sh tpu`): the paper's U-Net (95 s
window) and Stable Audio Open's DiT (47.55 s) training at global batch 256, and their generation at batch
64, per topology and rematerialisation setting. Prints a markdown table (bench/RESULTS.md) with the
paper's own run as the anchor: 64 A100s for 640k steps.

    python bench/plan_table.py [--only sa1,sao] [--topologies v5e:4x4,v5p:2x4x4] [--remat false,true]
                               [--timeout 1800] [--no-sample]

Each case is one `sa-jax train --plan` / `sa-jax sample --plan` subprocess (its JSON last line is read),
run one at a time: a full-size TPU compile takes minutes of CPU. Per-host batch = 256 / the slice's
hosts (4 chips per host). MFU here uses the FLOPs of the step without remat (model FLOPs) over the
compiler's time estimate and the chips' peak bf16 FLOP/s; the plan's own `mfu` field counts the
recomputed FLOPs too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_BATCH, SAMPLE_BATCH = 256, 64
MODELS = {"sa1": ("train_unet_sa1", "paper U-Net, 95.1 s"), "sao": ("train_dit_sao", "SAO DiT, 47.55 s")}
# The paper: 64 A100s (40 GB) for 640k steps at batch 256 (Evans et al. 2024, section 5); the A100's
# 312 TFLOP/s dense bf16 peak.
A100_PEAK, PAPER_GPUS, PAPER_STEPS = 312e12, 64, 640_000


def run(cmd: list[str], timeout: float) -> dict | None:
    t = time.time()
    try:
        p = subprocess.run([sys.executable, "-m", "sa_jax.cli", *cmd], cwd=ROOT, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout:.0f} s: sa-jax {' '.join(cmd)}", file=sys.stderr, flush=True)
        return None
    lines = p.stdout.strip().splitlines()
    if p.returncode or not lines:
        print(f"  failed ({p.returncode}): sa-jax {' '.join(cmd)}\n{p.stderr[-2000:]}", file=sys.stderr, flush=True)
        return None
    out = json.loads(lines[-1])
    out["wall_s"] = time.time() - t
    return out


def hosts(topology: str) -> int:
    """Hosts of a slice (one trainer process each): 4 chips per host above 4 chips (v5e, v5p, v6e)."""
    from sa_jax.training.plan import topology_name

    dims = [int(x) for x in topology_name(topology).split(":")[1].split("x")]
    chips = 1
    for d in dims:
        chips *= d
    return max(1, chips // 4)


def fmt(value, spec: str, scale: float = 1.0) -> str:
    return "" if value is None else format(value * scale, spec)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="sa1,sao")
    ap.add_argument("--topologies", default="v5e:4x4,v5p:2x4x4")
    ap.add_argument("--remat", default="false,true")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--no-sample", action="store_true")
    ap.add_argument("--no-train", action="store_true")
    args = ap.parse_args()
    if not args.no_train:
        print("| model | topology | remat | batch per host | memory per device | of HBM | TFLOP per step | "
              "est. step (s) | MFU | 640k steps (days) | compile (s) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for family in [] if args.no_train else args.only.split(","):
        config, title = MODELS[family]
        for topo in args.topologies.split(","):
            per_host = GLOBAL_BATCH // hosts(topo)
            model_flops = None   # the step's FLOPs without remat: what the model needs
            for remat in args.remat.split(","):
                r = run(["train", "--config", config, "--plan", "--topology", topo, f"data.batch_size={per_host}",
                         f"model.remat={remat}", "mesh.shape=[1,-1]"], args.timeout)
                if r is None:
                    print(f"| {title} | {topo} | {remat} | {per_host} | (no plan) | | | | | | |", flush=True)
                    continue
                if remat == "false":
                    model_flops = r["flops_per_step"]
                est = r["estimated_step_seconds"]
                peak = r["flops_per_device"] / (r["mfu"] * est) if r["mfu"] else None
                mfu = (model_flops or r["flops_per_step"]) / r["devices"] / (est * peak) if peak else None
                b = r["bytes_per_device"]
                mem = f"{fmt(b, '.1f', 2**-30)} GiB" + (" DOES NOT FIT" if r.get("out_of_memory") else "")
                print(f"| {title} | {topo} ({r['devices']} chips) | {remat} | {per_host} | {mem} | "
                      f"{fmt(b and b / r['hbm_per_device'], '.0%')} | "
                      f"{fmt(r['flops_per_step'], '.0f', 1e-12)} | {fmt(est, '.2f')} | {fmt(mfu, '.0%')} | "
                      f"{fmt(est, '.1f', PAPER_STEPS / 86400)} | {r['compile_seconds']:.0f} |", flush=True)
                if remat == "false" and mfu:   # the anchor: the paper's 64 A100s at the same MFU
                    a100 = model_flops / (PAPER_GPUS * A100_PEAK * mfu)
                    print(f"| anchor: the paper's 64 A100s, same FLOPs and MFU | | | 4 per GPU | | | | "
                          f"{a100:.2f} | | {a100 * PAPER_STEPS / 86400:.1f} | |", flush=True)
    if not args.no_sample:
        print()
        print("| model | topology | batch | steps | memory per device | est. batch (s) | est. per clip (s) | "
              "compile (s) |")
        print("|---|---|---|---|---|---|---|---|", flush=True)
        for family in args.only.split(","):
            config, title = MODELS[family]
            for topo in args.topologies.split(","):
                r = run(["sample", "--plan", "--model", config, "--topology", topo, "--batch-size",
                         str(SAMPLE_BATCH)], args.timeout)
                if r is None:
                    print(f"| {title} | {topo} | {SAMPLE_BATCH} | | (no plan) | | | |", flush=True)
                    continue
                print(f"| {title} | {topo} ({r['devices']} chips) | {SAMPLE_BATCH} | {r['steps']} | "
                      f"{fmt(r['bytes_per_device'], '.1f', 2**-30)} GiB | {fmt(r['estimated_step_seconds'], '.1f')} | "
                      f"{fmt(r['seconds_per_clip'], '.2f')} | {r['compile_seconds']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
