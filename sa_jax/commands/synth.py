"""`sa-jax synth --out DIR --count N --seed S`: write the synthetic text-to-audio corpus."""

from __future__ import annotations


def run(args) -> int:
    import time

    from sa_jax.data.synth import write_corpus

    t = time.time()
    out = write_corpus(args.out, args.count, seed=args.seed, fmt=args.format, workers=args.workers,
                       min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                       whole_seconds=args.whole_seconds)
    print(f"wrote {args.count} clips to {out}/audio and their metadata to {out}/metadata.jsonl "
          f"in {time.time() - t:.1f} s")
    return 0


def register(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic corpus (audio that follows its metadata)")
    p.add_argument("--out", required=True, help="output folder (audio/ and metadata.jsonl)")
    p.add_argument("--count", type=int, required=True, help="number of clips")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same corpus")
    p.add_argument("--format", default="wav", choices=["wav", "flac"])
    p.add_argument("--workers", type=int, default=1, help="processes generating clips")
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--max-seconds", type=float, default=30.0)
    p.add_argument("--whole-seconds", action="store_true",
                   help="round each clip's duration to whole seconds (clips otherwise unchanged), so each "
                        "clip fills its integer seconds_total")
    p.set_defaults(func=run)
