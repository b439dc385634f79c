"""`sa-jax metrics --generated DIR --reference DIR --metrics fd_openl3,clap_score --out metrics.json`:
the paper's evaluation metrics (sa_jax.metrics, after stable-audio-metrics) on two folders of audio.

- fd_openl3: Fréchet distance on OpenL3 embeddings, L|R per frame (needs --openl3 weights);
- kl_passt: KL divergence of PaSST AudioSet tags, files paired by id (needs --passt weights);
- clap_score: mean cosine similarity of each caption with its generated file (needs --captions);
- fd_clap: Fréchet distance on the CLAP audio embedding, one per file, e.g. with a model's own CLAP
  for an in-domain FD.
Without --clap the CLAP metrics use the shipped small model's own CLAP (sa_jax/assets/small_clap):
in-domain scores for that model, not LAION CLAP's.

`--save-stats DIR` writes the reference set's statistics (DIR/fd_openl3.npz, DIR/fd_clap.npz, in
stable-audio-metrics' mu_ref/sigma_ref layout); `--reference-stats DIR` reads them instead of
embedding the reference again. `--reference-stats X.pkl` (or DIR/kl_passt.pkl) is stable-audio-metrics'
own KL_passt reference probabilities (its `load/passt_kld/*.pkl`), read without unpickling code.
Prints one line per metric with its time; `--out` writes JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

METRICS = ("fd_openl3", "kl_passt", "clap_score", "fd_clap")
NEEDS = {
    "fd_openl3": ("--openl3", "OpenL3 weights (torchopenl3_mel256_<music|env>_512.pth.tar or openl3's "
                              "openl3_audio_mel256_<music|env>.h5)"),
    "kl_passt": ("--passt", "PaSST weights (hear21passt's passt-s-f128-p16-s10-ap.476-swa.pt)"),
    "clap_score": ("--clap", "a CLAP model (LAION's 630k-audioset-fusion-best.pt with --clap-tokenizer, or a "
                             "transformers ClapModel folder such as the small recipe's clap/export)"),
    "fd_clap": ("--clap", "a CLAP model (a LAION .pt with --clap-tokenizer, or a transformers ClapModel folder)"),
}
FD_METRICS = ("fd_openl3", "fd_clap")


def parse_metrics(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"--metrics {text!r}: unknown {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def check_inputs(args, metrics: list[str]) -> None:
    """Every problem with the command line that can be seen before any model loads."""
    problems = []
    for flag, folder in (("--generated", args.generated), ("--reference", args.reference)):
        if folder is not None and not Path(folder).is_dir():
            problems.append(f"{flag} {folder} is not a folder")
    for m in metrics:
        flag, what = NEEDS[m]
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None and flag == "--clap":
            continue                     # the shipped small model's CLAP (_load_clap)
        if value is None:
            problems.append(f"{m} needs {flag}: {what}")
        elif not Path(value).exists():
            problems.append(f"{m}: {flag} {value} does not exist; it should be {what}")
    if "clap_score" in metrics and args.captions is None:
        problems.append("clap_score needs --captions: a CSV with an id column (id, ytid, file) and a caption column")
    stats = Path(args.reference_stats) if args.reference_stats else None
    if stats is not None and not stats.is_dir() and not (stats.suffix == ".pkl" and stats.is_file()):
        problems.append(f"--reference-stats {stats} is neither a folder of statistics nor a .pkl file")
    needs_reference = [m for m in metrics if (m == "kl_passt" or m in FD_METRICS) and reference_stats(args, m) is None
                       and not (m in FD_METRICS and stats is not None and stats.is_dir())]
    if needs_reference and args.reference is None:
        problems.append(f"{', '.join(needs_reference)} need(s) --reference DIR (or --reference-stats: a folder of "
                        "fd_*.npz written by --save-stats, or stable-audio-metrics' KL_passt .pkl)")
    if stats is not None and stats.is_dir():
        for m in (m for m in metrics if m in FD_METRICS):
            if reference_stats(args, m) is None:
                problems.append(f"{m}: --reference-stats {args.reference_stats} holds no {m}.npz "
                                "(write it with --save-stats)")
    if args.batch_size is not None and args.batch_size < 1:
        problems.append(f"--batch-size must be 1 or more, got {args.batch_size}")
    if args.save_stats and not any(m in FD_METRICS for m in metrics):
        problems.append("--save-stats writes FD reference statistics: ask for fd_openl3 or fd_clap")
    if args.save_stats and args.reference is None:
        problems.append("--save-stats needs --reference DIR (the set whose statistics are saved)")
    if problems:
        raise ValueError("\n  ".join(["cannot run the metrics:"] + problems))


def reference_stats(args, metric: str) -> Path | None:
    """The reference statistics file --reference-stats gives `metric`: FOLDER/fd_openl3.npz,
    FOLDER/fd_clap.npz, FOLDER/kl_passt.pkl, or a .pkl file itself (stable-audio-metrics' KL_passt
    reference probabilities); None when it gives none."""
    if not args.reference_stats:
        return None
    stats = Path(args.reference_stats)
    if stats.is_dir():
        path = stats / (f"{metric}.npz" if metric in FD_METRICS else f"{metric}.pkl")
        return path if path.is_file() else None
    return stats if metric == "kl_passt" and stats.suffix == ".pkl" and stats.is_file() else None


def _progress(label: str, total: int):
    from tqdm import tqdm

    return tqdm(total=total or None, desc=label, unit="file", file=sys.stderr, dynamic_ncols=True)


def run(args) -> int:
    from sa_jax.errors import CheckpointError, NoUsableData

    metrics = parse_metrics(args.metrics)
    check_inputs(args, metrics)
    report: dict = {"generated": str(args.generated), "reference": args.reference,
                    "settings": {"content_type": args.content_type, "sample_rate": args.sample_rate,
                                 "channels": args.channels, "openl3_frontend": args.openl3_frontend},
                    "metrics": {}}
    try:
        for m in metrics:
            t0 = time.perf_counter()
            try:
                result = RUNNERS[m](args)
            except CheckpointError as e:
                flag, what = NEEDS[m]
                raise CheckpointError(f"{m}: {flag} {getattr(args, flag[2:].replace('-', '_'))} cannot be used "
                                      f"({what}):\n{e}") from None
            result["seconds"] = round(time.perf_counter() - t0, 3)
            report["metrics"][m] = result
            print(f"{m}: {result['value']:.6g}  ({result['seconds']:.1f} s)", flush=True)
    except NoUsableData as e:        # an empty set: a user error like the others
        raise ValueError(str(e)) from None
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0


def _fd(args, name: str, embedding: str, statistics) -> dict:
    """An FD metric: the reference from --reference-stats (read first, so a mismatch costs nothing)
    or embedded (and saved with --save-stats); `statistics(files, progress)` -> (mu, sigma, samples)."""
    from sa_jax.metrics.audio import audio_files
    from sa_jax.metrics.frechet import frechet_distance, load_stats, save_stats

    generated = audio_files(args.generated, "--generated")
    stats_file = reference_stats(args, name)
    if stats_file is not None:
        mu_r, sigma_r = load_stats(stats_file, embedding=embedding)
        reference = {"stats": str(stats_file)}
    else:
        files = audio_files(args.reference, "--reference")
        with _progress(f"{name} reference", len(files)) as bar:
            mu_r, sigma_r, n_r = statistics(files, bar.update)
        reference = {"files": len(files), "samples": n_r}
        if args.save_stats:
            path = save_stats(Path(args.save_stats) / f"{name}.npz", mu_r, sigma_r, embedding=embedding, count=n_r)
            reference["saved_stats"] = str(path)
            print(f"saved the reference statistics of {name} to {path}")
    with _progress(f"{name} generated", len(generated)) as bar:
        mu_g, sigma_g, n_g = statistics(generated, bar.update)
    return {"value": frechet_distance(mu_g, sigma_g, mu_r, sigma_r), "embedding": embedding,
            "generated": {"files": len(generated), "samples": n_g}, "reference": reference}


def _batch(args) -> dict:
    """--batch-size when given; otherwise each model's own default (a batch of 64 PaSST windows of 10 s
    would hold several GB of attention scores)."""
    return {} if args.batch_size is None else {"batch_size": args.batch_size}


def _fd_openl3(args) -> dict:
    from sa_jax.metrics.openl3 import OpenL3

    model = OpenL3.load(args.openl3, content_type=args.content_type, input_repr="mel256", embedding_size=512,
                        frontend=args.openl3_frontend, **_batch(args))
    return _fd(args, "fd_openl3", model.stats_name(args.sample_rate, args.channels),
               lambda files, progress: model.statistics(files, args.sample_rate, args.channels, progress=progress))


def _load_clap(args):
    from sa_jax.encoders import Clap
    from sa_jax.metrics.clap import shipped_clap

    if args.clap is None:
        args.clap = str(shipped_clap())
        print(f"CLAP: the shipped small model's own ({args.clap}; in-domain scores for that model; "
              "--clap for another)", flush=True)
    return Clap.load(args.clap, tokenizer_folder=args.clap_tokenizer)


def _fd_clap(args) -> dict:
    from sa_jax.metrics.clap import clap_statistics, clap_stats_name

    model = _load_clap(args)
    result = _fd(args, "fd_clap", clap_stats_name(model),
                 lambda files, progress: clap_statistics(files, model, progress=progress, **_batch(args)))
    return {**result, "clap": args.clap}


def _clap_score(args) -> dict:
    from sa_jax.metrics.clap import clap_score, read_captions

    model = _load_clap(args)
    captions = read_captions(args.captions)
    with _progress("clap_score", len(captions)) as bar:
        value = clap_score(args.generated, captions, model, progress=bar.update, **_batch(args))
    return {"value": value, "captions": len(captions), "clap": args.clap}


def _kl_passt(args) -> dict:
    from sa_jax.metrics.passt import PaSST, kl_passt_report

    model = PaSST.load(args.passt, **_batch(args))
    stats_file = reference_stats(args, "kl_passt")
    with _progress("kl_passt", 0) as bar:
        result = kl_passt_report(args.generated, stats_file or args.reference, model, progress=bar.update)
    if stats_file is not None:
        result["reference"] = {"stats": str(stats_file)}
    return result


RUNNERS = {"fd_openl3": _fd_openl3, "kl_passt": _kl_passt, "clap_score": _clap_score, "fd_clap": _fd_clap}


def register(sub) -> None:
    p = sub.add_parser("metrics", help="FD_openl3, KL_passt, CLAP score and FD on CLAP embeddings of a folder "
                                       "of generated audio (stable-audio-metrics' conventions)")
    p.add_argument("--generated", required=True, help="folder of generated audio (WAV, FLAC, OGG, MP3)")
    p.add_argument("--reference", default=None, help="folder of reference audio (ids = file names for kl_passt)")
    p.add_argument("--metrics", default="fd_openl3,kl_passt,clap_score",
                   help=f"comma-separated, from {', '.join(METRICS)} (default fd_openl3,kl_passt,clap_score)")
    p.add_argument("--openl3", default=None, help="OpenL3 weights (.pth.tar from torchopenl3 or .h5 from openl3)")
    p.add_argument("--openl3-frontend", default="kapre037", choices=("kapre037", "kapre014"),
                   help="OpenL3's spectrogram: kapre037 as openl3 0.4.2 computes it (stable-audio-metrics' FD_openl3; "
                        "default), kapre014 as openl3 <= 0.3 and torchopenl3 do")
    p.add_argument("--passt", default=None, help="PaSST weights (.pt from hear21passt)")
    p.add_argument("--clap", default=None, help="CLAP: a LAION .pt or a transformers ClapModel folder (default: the "
                                                "shipped small model's own, for in-domain scores of that model)")
    p.add_argument("--clap-tokenizer", default=None, help="a local roberta-base tokenizer folder (for a LAION .pt)")
    p.add_argument("--captions", default=None, help="CSV of id,caption for clap_score")
    p.add_argument("--content-type", default="music", choices=("music", "env"),
                   help="OpenL3 model: music, or env for sound effects (default music)")
    p.add_argument("--sample-rate", type=int, default=44100, help="FD_openl3's evaluation rate (default 44100)")
    p.add_argument("--channels", type=int, default=2, choices=(1, 2),
                   help="FD_openl3: 2 = L|R per frame (the paper), 1 = mono (default 2)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="windows per device call (files for the CLAP metrics); default: 64 for OpenL3, 16 for "
                        "PaSST and CLAP")
    p.add_argument("--save-stats", default=None, help="write the reference set's FD statistics into this folder")
    p.add_argument("--reference-stats", default=None,
                   help="read reference statistics instead of embedding --reference: a folder (fd_openl3.npz, "
                        "fd_clap.npz as --save-stats writes them; kl_passt.pkl) or stable-audio-metrics' KL_passt "
                        "reference probabilities (.pkl)")
    p.add_argument("--out", default=None, help="write the results (JSON) here")
    p.set_defaults(func=run)
