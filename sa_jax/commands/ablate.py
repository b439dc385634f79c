"""`sa-jax ablate SPEC.yaml --out DIR [--shard I/N] [--collect] [--dry-run]`: a research ablation, every variant
x seed trained (or only sampled) and evaluated, then results.jsonl, results.md and plots/ in DIR
(sa_jax.ablate; README "Ablations")."""

from __future__ import annotations

import sys
from pathlib import Path


def run(args) -> int:
    from sa_jax.ablate.collect import collect
    from sa_jax.ablate.run import check_recorded_spec, dry_run, parse_shard, run_study
    from sa_jax.ablate.spec import load_spec

    shard = parse_shard(args.shard)
    out = Path(args.out)
    if args.collect:   # the results alone: the corpus, models and training data need not be on this machine
        if not out.is_dir():
            raise FileNotFoundError(f"--out {out} does not exist: nothing to collect")
        spec = load_spec(args.spec, out, strict=False)
        # refused, not warned: another spec's variants and seeds would tabulate these results under wrong names
        # or call them missing
        check_recorded_spec(args.spec, out, f"collect with the spec the study ran: `sa-jax ablate {out / 'spec.yaml'} "
                                            f"--out {out} --collect`")
        collect(spec, out)
        return 0
    spec = load_spec(args.spec, out)
    if args.dry_run:
        return dry_run(spec, out, shard)
    try:
        return run_study(spec, args.spec, out, shard)
    except KeyboardInterrupt:
        print("sa-jax ablate: interrupted; finished runs are kept, a rerun resumes the rest", file=sys.stderr)
        return 130


def register(sub) -> None:
    p = sub.add_parser("ablate", help="an ablation study: train or sample every variant of a spec over seeds, "
                                      "evaluate, tabulate and plot (resumable, shardable)")
    p.add_argument("spec", help="the study's YAML (README: Ablations)")
    p.add_argument("--out", required=True, help="the study's folder (resumes what is there)")
    p.add_argument("--shard", default=None, help="I/N: run only items I-1, I-1+N, ... of the fixed list (one host "
                                                 "of N); then `--collect` merges")
    p.add_argument("--collect", action="store_true", help="only rebuild results.jsonl, results.md and plots/ from "
                                                          "the result.json files present, naming the missing ones")
    p.add_argument("--dry-run", action="store_true", help="print the runs (variant, seed, overrides) and exit")
    p.set_defaults(func=run)
