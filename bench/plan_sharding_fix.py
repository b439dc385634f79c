"""Block inputs constrained to the batch sharding (`sa_jax.nn.attention.constrain_batch`) against the same train
step without the constraint, planned for a TPU slice on this CPU (libtpu, `bash setup.sh tpu`): FLOPs, memory per
chip and the compiler's step estimate, for remat none and block. Without the constraint, XLA's sharding
propagation computed parts of the blocks for the whole global batch on every chip (most of all in a block
recomputed by remat).

    python bench/plan_sharding_fix.py                                   # the tiny DiT on v5p:2x2x2 (a minute)
    python bench/plan_sharding_fix.py --config train_dit_sao --depth 1 --batch 32 --topology v5p:2x4x4
        # SAO's DiT at full width, one block, global batch 256 on v5p-64 (about 4 minutes of CPU per plan)

Each case is compiled in its own process (the constraint is switched off by replacing the DiT's
`constrain_batch` with the identity in that process only). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASE = """
import json, sys
from sa_jax.config import load
from sa_jax.training import TrainConfig
from sa_jax.training.plan import plan_train
import sa_jax.models.dit as dit
config, depth, batch, topology, remat, constrained = sys.argv[1:7]
if constrained == "no":
    dit.constrain_batch = lambda x: x
overrides = [f"model.remat={remat}", "data.path=nowhere", f"data.batch_size={batch}", "mesh.shape=[1,-1]"]
if depth != "-":
    overrides.append(f"model.dit.depth={depth}")
r = plan_train(load(TrainConfig, config, overrides), topology=topology)
print(json.dumps({k: r[k] for k in ("flops_per_step", "estimated_seconds", "bytes_per_device", "global_batch",
                                    "compile_seconds")}))
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="train_dit_tiny", help="a DiT training config")
    ap.add_argument("--depth", default="-", help="model.dit.depth (- keeps the config's)")
    ap.add_argument("--batch", default="16", help="data.batch_size (per host of 4 chips)")
    ap.add_argument("--topology", default="v5p:2x2x2")
    args = ap.parse_args()
    rows = {}
    for constrained in ("no", "yes"):
        for remat in ("none", "block"):
            p = subprocess.run([sys.executable, "-c", CASE, args.config, args.depth, args.batch, args.topology, remat,
                                constrained], cwd=ROOT, capture_output=True, text=True)
            if p.returncode:
                print(p.stderr[-2000:], file=sys.stderr)
                return 1
            rows[constrained, remat] = json.loads(p.stdout.strip().splitlines()[-1])
    b = rows["yes", "none"]["global_batch"]
    print(f"{args.config}, depth {args.depth}, {args.topology}, global batch {b}\n")
    print("| block inputs | remat | TFLOP per step (XLA) | memory per chip | est. step | est. vs constrained |")
    print("|---|---|---|---|---|---|")
    for (constrained, remat), r in rows.items():
        ratio = r["estimated_seconds"] / rows["yes", remat]["estimated_seconds"]
        print(f"| {'constrained' if constrained == 'yes' else 'not constrained'} | {remat} | "
              f"{r['flops_per_step'] / 1e12:.3g} | {r['bytes_per_device'] / 2**30:.3g} GiB | "
              f"{r['estimated_seconds'] * 1e3:.3g} ms | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
