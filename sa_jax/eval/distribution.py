"""The paper's distribution metrics for `sa-jax evaluate`: one generation per held-out corpus clip
(its description as the prompt, its duration as seconds_total), written as WAVs named by the clip's
id, then scored against the corpus clips with sa_jax.metrics: the in-domain FD on a CLAP's audio
embedding and the CLAP score (with `clap`, e.g. the small recipe's own `clap/export`), FD_openl3 and
KL_passt (with their weight files)."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Callable


def distribution_eval(model, corpus, *, clap=None, openl3=None, passt=None, clips: int = 16, steps: int = 50,
                      cfg_scale: float | None = None, sampler: str | None = None, sigma_min: float | None = None,
                      sigma_max: float | None = None, rho: float | None = None, seed: int = 0, batch: int = 8,
                      log: Callable[[str], None] = print) -> dict:
    """{metric: {'value', 'seconds'}} for the metrics whose models are given (a loaded `Clap`, an
    OpenL3 weight file, a PaSST weight file); {} when none is."""
    from sa_jax.audio import write_audio
    from sa_jax.eval.recon import corpus_clips

    if clap is None and openl3 is None and passt is None:
        return {}
    items = corpus_clips(corpus, clips, sample_rate=model.sample_rate, channels=2)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="sa_jax_eval_") as tmp:
        gen, ref = Path(tmp) / "generated", Path(tmp) / "reference"
        gen.mkdir()
        ref.mkdir()
        captions = {}
        t0 = time.perf_counter()
        # clips of one seconds_total share a generate call (its length is the batch's)
        by_length: dict[int, list] = {}
        for i, (audio, meta) in enumerate(items):
            fid = f"clip{i:04d}"
            captions[fid] = meta["description"]
            write_audio(ref / f"{fid}.wav", audio, model.sample_rate)
            seconds = min(float(max(1, math.ceil(meta["duration_s"]))), model.window_seconds)
            by_length.setdefault(int(seconds), []).append(fid)
        done = 0     # items numbered across the calls: each generation its own noise, (seed, item)
        for seconds, ids in by_length.items():
            for start in range(0, len(ids), batch):
                part = ids[start:start + batch]
                audio = model.generate([captions[k] for k in part], seconds_total=float(seconds), steps=steps,
                                       cfg_scale=cfg_scale, sampler=sampler, sigma_min=sigma_min,
                                       sigma_max=sigma_max, rho=rho, seed=seed, first_item=done)
                done += len(part)
                for k, a in zip(part, audio):
                    write_audio(gen / f"{k}.wav", a, model.sample_rate)
        log(f"distribution metrics: {len(items)} generations in {time.perf_counter() - t0:.1f} s")

        def timed(name, fn):
            t = time.perf_counter()
            out[name] = {"value": fn(), "clips": len(items)}
            out[name]["seconds"] = round(time.perf_counter() - t, 3)
            log(f"{name}: {out[name]['value']:.6g} ({out[name]['seconds']:.1f} s)")

        if clap is not None:
            from sa_jax.metrics.clap import clap_score, fd_clap

            timed("fd_clap", lambda: fd_clap(gen, ref, clap))
            if clap.tokenizer is not None:
                timed("clap_score", lambda: clap_score(gen, captions, clap))
        if openl3 is not None:
            from sa_jax.metrics.openl3 import OpenL3, fd_openl3

            emb = OpenL3.load(openl3)
            timed("fd_openl3", lambda: fd_openl3(gen, ref, model=emb))
        if passt is not None:
            from sa_jax.metrics.passt import PaSST, kl_passt

            timed("kl_passt", lambda: kl_passt(gen, ref, model=PaSST.load(passt)))
    return out
