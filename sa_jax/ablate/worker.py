"""Items of an ablation (a variant at one seed) in a process of their own: train (a training study; the
trainer resumes from the run directory's checkpoint), then evaluate the run's export or the study's model,
then write result.json atomically (its existence marks the item done).

    python -m sa_jax.ablate.worker DIR/<variant>/seed<k>/job.json [...]

`sa-jax ablate` starts one per training item, so the device memory of each run is freed with its process
and a kill -9 of the study is a kill -9 of the run, and one for all the items of a sampling-only study
(the model loads and compiles once). Exit status: 0 done, 3 the trainer stopped (TrainingError),
143 stopped by SIGTERM with the checkpoint saved (run the study again to resume).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import sys
import time
import traceback
from pathlib import Path


def partial_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: a name of this host and process, so hosts
    sharing the study's folder (`--shard`), whose process ids may coincide, never write the same file."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.partial")


def write_text(path: Path, text: str) -> None:
    """`text` at `path`, written under a temporary name and renamed (never half a file)."""
    tmp = partial_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    """`data` as JSON at `path`, atomically (`write_text`)."""
    write_text(path, json.dumps(data, indent=2, default=_plain) + "\n")


def _plain(value):
    """NumPy scalars and arrays as plain JSON values."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def trained_model(job: dict):
    """Train the job's run through each of its stages (a stage resumes from the run's checkpoint; one that
    finished is marked by `run/stage<k>.done` and not trained again) and load the export; None when SIGTERM
    stopped it."""
    from sa_jax.config import load
    from sa_jax.pipeline import StableAudio
    from sa_jax.training import TrainConfig, train

    export = None
    for k, overrides in enumerate(job["train_stages"]):
        cfg = load(TrainConfig, job["train"], overrides)
        done = Path(cfg.checkpoint.dir) / f"stage{k}.done"
        if done.is_file():   # its checkpoint is past this stage's steps: training it again would go back
            continue
        result = train(cfg)
        if result.preempted:
            return None
        export = result.export_path
        write_text(done, f"step {cfg.steps}\n")
    export = export or Path(cfg.checkpoint.dir) / "export"
    if cfg.lora.enabled:   # the export is an adapter of the run's init.from model
        return StableAudio.load(cfg.init_from, lora=[str(export)]), str(export)
    return StableAudio.load(export), str(export)


def run(job: dict, models: dict) -> int:
    """One job: train (a training study) or take the study's model (`models` caches loaded ones by path),
    evaluate, write result.json. Returns the exit status."""
    from sa_jax.errors import TrainingError
    from sa_jax.eval.report import evaluate
    from sa_jax.pipeline import StableAudio

    folder = Path(job["folder"])
    t0 = time.perf_counter()
    if job["train"]:
        try:
            loaded = trained_model(job)
        except TrainingError as e:
            print(f"sa-jax ablate: training stopped: {e}", file=sys.stderr)
            return 3
        if loaded is None:
            print("sa-jax ablate: stopped by SIGTERM; the checkpoint is saved, run the study again to resume",
                  file=sys.stderr)
            return 143
        model, model_path = loaded
    else:
        model_path = job["model"]
        if model_path not in models:
            models.clear()   # one model held at a time
            models[model_path] = StableAudio.load(model_path)
        model = models[model_path]
    t1 = time.perf_counter()
    kwargs = {**job["evaluate"], "seed": job["seed"]}
    with open(folder / "log.txt", "a") as log:
        if "log" in inspect.signature(evaluate).parameters:
            kwargs["log"] = lambda s: print(s, file=log, flush=True)
        report = evaluate(model, job["corpus"], **kwargs)
    t2 = time.perf_counter()
    if isinstance(report.get("model"), dict):
        report["model"]["path"] = model_path
    report.update(variant=job["variant"], seed=job["seed"], overrides=job["overrides"], seconds=round(t2 - t0, 3),
                  train_seconds=round(t1 - t0, 3), eval_seconds=round(t2 - t1, 3))
    write_json(folder / "result.json", report)
    return 0


def main(argv=None) -> int:
    """Run the jobs in order (a sampling-only study passes several: its model loads and compiles once); a job
    that fails is reported and the next runs; SIGTERM stops them. Returns 0, the first failure's status, or 143."""
    argv = sys.argv[1:] if argv is None else argv
    from sa_jax import compile_cache

    compile_cache.enable()   # every item of a study compiles the same programs: the later ones load them
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    models: dict = {}
    failed = 0
    for path in argv:
        job = json.loads(Path(path).read_text())
        print(f"--- {job['variant']} seed {job['seed']}", flush=True)
        try:
            code = run(job, models)
        except Exception:   # this item failed (the traceback says why); the next ones still run
            traceback.print_exc()
            code = 1
        if code == 143:
            return code
        failed = failed or code
    return failed


if __name__ == "__main__":
    sys.exit(main())
