"""`sa-jax evaluate [MODEL] --corpus DIR --out report.json`: the three numbers of a model trained on the
synthetic corpus (`sa_jax.eval`), printed as a table and written as JSON:

- timing accuracy (the paper's appendix C): fixed prompts x whole-second lengths spread across the
  window, generated with trim=False; the generated length is where the audio falls below -40 dB
  relative to its loudest 50 ms frame; median and 90th-percentile absolute error in seconds;
- text adherence: per attribute of the corpus (instrument, root, mode, tempo, stereo, loudness), the
  fraction of generations whose measured value matches the prompt, against chance, with the
  measurement's own accuracy on the corpus clips (`oracle`) as the ceiling;
- reconstruction: the model's autoencoder's multi-resolution STFT distance on the corpus clips.

MODEL is anything `StableAudio.load` reads (default: the shipped small model). DIR should be clips
the model did not train on, e.g. `sa-jax synth --out heldout --count 16 --seed 1 --max-seconds 8`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sa_jax.commands.sample import sigma_options


def evaluation_list(text: str) -> list[str]:
    """`--evaluations timing,adherence` -> ["timing", "adherence"], checked by the report's own rule."""
    from sa_jax.eval.report import check_evaluations

    names = [n.strip() for n in text.split(",") if n.strip()]
    try:
        check_evaluations(names)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return names


def run(args) -> int:
    from sa_jax.eval.report import evaluate, table
    from sa_jax.pipeline import StableAudio

    model = StableAudio.load(args.model)
    clap = args.clap
    if clap not in ("none", "shipped"):
        from sa_jax.encoders import Clap

        clap = Clap.load(clap, tokenizer_folder=args.clap_tokenizer)
    report = evaluate(model, args.corpus, steps=args.steps, cfg_scale=args.cfg_scale, sampler=args.sampler,
                      sigma_min=args.sigma_min, sigma_max=args.sigma_max, rho=args.rho,
                      timing_lengths=args.timing_lengths, timing_prompts=args.timing_prompts,
                      per_value=args.per_value, per_attribute=args.per_attribute, recon_clips=args.recon_clips,
                      clap=None if clap == "none" else clap, openl3=args.openl3, passt=args.passt,
                      metric_clips=args.metric_clips, evaluations=args.evaluations, seed=args.seed, batch=args.batch,
                      log=lambda s: print(s, file=sys.stderr))
    report["model"]["path"] = str(args.model) if args.model else "(shipped)"
    print(table(report))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name("." + out.name + ".partial")
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, out)
        print(f"wrote {out}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="timing accuracy, text adherence and reconstruction of a model trained on "
                                        "the synthetic corpus")
    p.add_argument("model", nargs="?", default=None, help="a model StableAudio.load reads (default: the shipped one)")
    p.add_argument("--corpus", required=True, help="a held-out `sa-jax synth` folder")
    p.add_argument("--out", default=None, help="write the report (JSON) here")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    p.add_argument("--cfg-scale", type=float, default=None, help="default: the model's")
    p.add_argument("--sampler", default=None, help="e.g. dpmpp-3m-sde, dpmpp-2m, heun (default: the model's)")
    sigma_options(p)
    p.add_argument("--timing-prompts", type=int, default=8,
                   help="timing prompts, the first N of the built-in 8 (default 8)")
    p.add_argument("--timing-lengths", type=int, default=8,
                   help="requested whole-second lengths from the corpus's shortest clip to the window (default 8; "
                        "8 x 8 = 64 timing generations)")
    p.add_argument("--per-attribute", type=int, default=48,
                   help="adherence generations per attribute at least, balanced over its values (default 48)")
    p.add_argument("--per-value", type=int, default=None,
                   help="instead of --per-attribute: generations per attribute value")
    p.add_argument("--batch", type=int, default=8,
                   help="generations per call (default 8); changes speed and memory, not the report")
    p.add_argument("--recon-clips", type=int, default=16,
                   help="corpus clips for reconstruction (default 16; 0 skips it)")
    p.add_argument("--clap", default="shipped",
                   help="the CLAP of the in-domain FD (its audio embedding) and the CLAP score: 'shipped' (default: "
                        "the shipped small model's own, sa_jax/assets/small_clap), a ClapModel folder (e.g. the "
                        "recipe's clap/export), a LAION .pt, or 'none' to skip both")
    p.add_argument("--clap-tokenizer", default=None, help="tokenizer folder for a LAION .pt")
    p.add_argument("--openl3", default=None, help="OpenL3 weights: adds FD_openl3 (see sa-jax metrics)")
    p.add_argument("--passt", default=None, help="PaSST weights: adds KL_passt (see sa-jax metrics)")
    p.add_argument("--metric-clips", type=int, default=16,
                   help="held-out clips (one generation each) for the distribution metrics (default 16)")
    p.add_argument("--evaluations", type=evaluation_list, default=None,
                   help="which to run, comma-separated, of reconstruction, timing, adherence, distribution "
                        "(default: all; distribution only with a CLAP, OpenL3 or PaSST)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
