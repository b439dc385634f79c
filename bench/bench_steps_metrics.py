"""Quality against sampling steps on the shipped small model, offline: the in-domain FD on its own
CLAP's audio embedding (`fd_clap`) and the CLAP score (`clap_score`), for 10, 25, 50 and 100 steps
(the shape of the paper's steps-vs-quality figure).

    .venv/bin/python bench/bench_steps_metrics.py --data /work/study/base --clips 48 \\
        --plot docs/metrics_steps.png

`--data` is a folder with the recipe's `corpus/` and `heldout/` (as `sa-jax synth` writes them). The
prompts are the held-out clips' descriptions, each used clips / 24 times, sorted by the clip's length
(rounded up to whole seconds); item i draws its noise from (seed 0, i), so every step count starts from
the same noise. They are generated 8 at a time (one compiled batch size), each batch with seconds_total
= its longest item's (sorted, so mostly every item's own), and each clip is cut to its own length.
The CLAP is the shipped small model's own (`sa_jax/assets/small_clap`, the recipe's CLAP stage)
unless `--clap` names another. FD is computed
against the CLAP statistics of the training corpus (800 clips) and of the 24 held-out clips; with
fewer clips than the embedding has dimensions (64) the covariances are singular and the FD carries a
bias that depends on the number of clips, so compare rows with each other, not with other tables.
The held-out clips themselves are scored the same way as a reference row, and with each clip given
the next clip's caption (the CLAP score of mismatched pairs).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def held_out(folder: Path) -> list[dict]:
    items = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    if not items:
        raise SystemExit(f"{folder}/metadata.jsonl lists no clips")
    return items


def generate_set(model, prompts: list[str], lengths: list[int], steps: int, out: Path, batch: int, seed: int) -> float:
    """Write clip{i}.wav for every item (items already sorted by length); returns the seconds spent.
    Item i draws its noise from (seed, i) alone (`first_item`), the same at every step count."""
    from sa_jax.audio import write_audio

    t0 = time.perf_counter()
    for start in range(0, len(prompts), batch):
        idx = list(range(start, min(start + batch, len(prompts))))
        padded = idx + [idx[-1]] * (batch - len(idx))                # one batch size: one compiled program
        audio = model.generate([prompts[i] for i in padded], seconds_total=float(max(lengths[i] for i in idx)),
                               steps=steps, seed=seed, first_item=start)
        for i, a in zip(idx, audio):
            write_audio(out / f"clip{i:04d}.wav", a[:, :lengths[i] * model.sample_rate], model.sample_rate)
    return time.perf_counter() - t0


def plot(rows: list[dict], reference: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["steps"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in ((axes[0], "fd_corpus", "FD (CLAP audio) vs corpus, lower is better"),
                           (axes[1], "clap_score", "CLAP score, higher is better")):
        ax.plot(steps, [r[key] for r in rows], "o-", label="shipped small model")
        ax.axhline(reference[key], color="gray", ls="--", label="held-out clips")
        if key == "clap_score":
            ax.axhline(reference["clap_score_mismatched"], color="gray", ls=":", label="held-out, mismatched captions")
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.set_xlabel("sampling steps (DPM++ 3M SDE)")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder holding corpus/ and heldout/ (the recipe's)")
    p.add_argument("--clap", default=None, help="CLAP folder (default: the shipped model's, sa_jax/assets/small_clap)")
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--steps", default="10,25,50,100")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, help="write the figure (PNG) here")
    p.add_argument("--json", default=None, help="write the numbers here")
    p.add_argument("--out", default=None, help="keep the generated clips here (stepsN/clipI.wav; default: a temporary "
                                               "folder, removed)")
    args = p.parse_args()

    from sa_jax import StableAudio
    from sa_jax.encoders import Clap
    from sa_jax.metrics import frechet_distance
    from sa_jax.metrics.clap import clap_score, clap_statistics, shipped_clap

    data = Path(args.data)
    t_all = time.perf_counter()
    model = StableAudio.load()
    items = held_out(data / "heldout")
    window = int(model.window_seconds)
    n = args.clips
    chosen = sorted((items[i % len(items)] for i in range(n)), key=lambda it: math.ceil(it["duration_s"]))
    prompts = [it["description"] for it in chosen]
    lengths = [min(max(1, math.ceil(it["duration_s"])), window) for it in chosen]
    captions = {f"clip{i:04d}": prompts[i] for i in range(n)}

    # every step count generated first (the CLAP is loaded after), each into its own folder
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sa_jax_steps_"))
    step_counts = [int(s) for s in args.steps.split(",")]
    generate_s = {}
    for steps in step_counts:
        out = root / f"steps{steps}"
        out.mkdir(parents=True, exist_ok=True)
        settings = {"prompts": prompts, "lengths": lengths, "seed": args.seed, "batch": args.batch}
        done = out / "generated.json"       # a kept folder of the same settings is not generated again
        if done.is_file() and json.loads(done.read_text())["settings"] == settings:
            generate_s[steps] = json.loads(done.read_text())["seconds"]
            print(f"{steps} steps: reusing {out} (generated in {generate_s[steps]:.0f} s)")
            continue
        generate_s[steps] = generate_set(model, prompts, lengths, steps, out, args.batch, args.seed)
        done.write_text(json.dumps({"settings": settings, "seconds": generate_s[steps]}))
        print(f"{steps} steps: {n} clips in {generate_s[steps]:.0f} s -> {out}", flush=True)

    t0 = time.perf_counter()
    clap = Clap.load(args.clap or shipped_clap())
    corpus = clap_statistics(data / "corpus" / "audio", clap)
    held = clap_statistics(data / "heldout" / "audio", clap)
    held_captions = {Path(it["path"]).stem: it["description"] for it in items}
    ids = list(held_captions)        # each held-out clip against the next clip's caption: the mismatched level
    shifted = dict(zip(ids, [held_captions[k] for k in ids[1:] + ids[:1]]))
    reference = {"fd_corpus": frechet_distance(*held[:2], *corpus[:2]), "fd_heldout": 0.0,
                 "clap_score": clap_score(data / "heldout" / "audio", held_captions, clap),
                 "clap_score_mismatched": clap_score(data / "heldout" / "audio", shifted, clap)}
    print(f"reference statistics: corpus {corpus[2]} clips, held-out {held[2]} clips "
          f"({time.perf_counter() - t0:.0f} s)")
    rows = []
    for steps in step_counts:
        out = root / f"steps{steps}"
        t0 = time.perf_counter()
        mu, sigma, _ = clap_statistics(out, clap)
        row = {"steps": steps, "fd_corpus": frechet_distance(mu, sigma, *corpus[:2]),
               "fd_heldout": frechet_distance(mu, sigma, *held[:2]), "clap_score": clap_score(out, captions, clap),
               "generate_s": round(generate_s[steps], 1), "score_s": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not args.out:
        shutil.rmtree(root)

    print(f"\nshipped small model, {n} clips per row (prompts: {len(items)} held-out descriptions), CLAP: "
          f"{args.clap or 'sa_jax/assets/small_clap'}; total {time.perf_counter() - t_all:.0f} s\n")
    print(f"| steps | FD vs corpus ({corpus[2]}) | FD vs held-out ({held[2]}) | CLAP score | generation s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['steps']} | {r['fd_corpus']:.4g} | {r['fd_heldout']:.4g} | {r['clap_score']:.4f} | "
              f"{r['generate_s']:.0f} |")
    print(f"| held-out clips themselves | {reference['fd_corpus']:.4g} | 0 | {reference['clap_score']:.4f} | |")
    print(f"| held-out clips, each with the next clip's caption | | | {reference['clap_score_mismatched']:.4f} | |")
    if args.plot:
        plot(rows, reference, Path(args.plot))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "reference": reference, "clips": n}, indent=2) + "\n")


if __name__ == "__main__":
    main()
