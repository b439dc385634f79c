"""Running a study: DIR/spec.yaml (the spec a directory belongs to), this shard's items, one worker process
per item (`sa_jax.ablate.worker`: train, evaluate, result.json), and the collect at the end.

    DIR/spec.yaml                          the spec (a rerun with another spec is refused)
    DIR/<variant>/seed<k>/run/             the training run (checkpoint.dir; the trainer resumes from it)
    DIR/<variant>/seed<k>/result.json      the evaluation report + variant, seed, overrides, seconds: done
    DIR/<variant>/seed<k>/job.json, log.txt   what the worker was given, and its output (appended per attempt)
    DIR/sampling.log                       a sampling-only study's worker output (sampling-shardIofN.log per shard)
    DIR/results.jsonl, results.md, plots/  sa_jax.ablate.collect
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sa_jax.ablate.collect import collect
from sa_jax.ablate.spec import Item, Spec, read_spec, spec_file, train_stages
from sa_jax.ablate.worker import write_json, write_text
from sa_jax.errors import ConfigError

PREEMPTED = 143


def parse_shard(text: str | None) -> tuple[int, int]:
    """`I/N` (1 <= I <= N) as (I, N); None: (1, 1)."""
    if text is None:
        return 1, 1
    i, sep, n = text.partition("/")
    try:
        i, n = int(i), int(n)
    except ValueError:
        i = n = 0
    if not sep or not 1 <= i <= n:
        raise ConfigError(f"--shard {text!r}: expected I/N with 1 <= I <= N, e.g. --shard 1/4")
    return i, n


def shard_items(spec: Spec, shard: tuple[int, int]) -> list[tuple[int, Item]]:
    """(index, item) of this shard: the items whose index in the spec's fixed order is I-1 modulo N."""
    i, n = shard
    return [(k, item) for k, item in enumerate(spec.items) if k % n == i - 1]


def claim_directory(spec_path: Path, out: Path) -> None:
    """DIR/spec.yaml: written on the first run; a later run must bring the same spec (compared as data,
    so comments and spacing may change)."""
    out.mkdir(parents=True, exist_ok=True)
    if not check_recorded_spec(spec_path, out, "use a new --out, or `--collect` with that spec to rebuild the "
                                               "tables from what is there"):
        write_text(out / "spec.yaml", spec_file(spec_path).read_text())


def check_recorded_spec(spec_path: str | Path, out: Path, advice: str) -> bool:
    """Whether DIR/spec.yaml exists; ConfigError when it differs from the spec at `spec_path` (compared as data),
    the results there belonging to another study."""
    mine = out / "spec.yaml"
    if not mine.exists():
        return False
    if read_spec(mine) != read_spec(spec_path):
        raise ConfigError(f"{out} holds the results of another spec ({mine} differs from {spec_path}); {advice}")
    return True


def describe(item: Item) -> str:
    return " ".join(item.own) or "(the base alone)"


def dry_run(spec: Spec, out: Path, shard: tuple[int, int], print_fn=print) -> int:
    chosen = shard_items(spec, shard)
    print_fn(f"{len(chosen)} of {len(spec.items)} runs" + (f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else "")
             + (", training " + str(spec.train) if spec.train else ", sampling " + str(spec.model)))
    for k, item in chosen:
        done = (item.folder(out) / "result.json").is_file()
        print_fn(f"{k:4d}  {item.name}  seed {item.seed}  {'done' if done else 'todo'}  {describe(item)}")
    return 0


def _die_with_parent() -> None:
    """In the worker before exec: SIGTERM when the study's process dies (even by kill -9), so a run never
    outlives its study and a rerun never shares a run directory with an orphan (Linux; elsewhere a no-op)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def job_of(spec: Spec, item: Item, out: Path) -> dict:
    folder = item.folder(out)
    evaluation = {k: v for k, v in spec.evaluate.items() if k != "corpus"}
    return {"folder": str(folder.resolve()), "variant": item.name, "seed": item.seed, "overrides": item.overrides,
            "train": str(spec.train) if spec.train else None,
            "train_stages": train_stages(spec, item, (folder / "run").resolve()) if spec.train else [],
            "model": str(Path(item.model).expanduser().resolve()) if item.model else None,
            "corpus": str(Path(spec.evaluate["corpus"]).expanduser().resolve()),
            "evaluate": {**evaluation, **item.sample}}


def run_worker(spec: Spec, items: list[Item], out: Path, log_path: Path, label: str,
               print_fn=print) -> list[Item] | None:
    """One worker process for `items` (its output appended to `log_path`); returns the items left without a
    result.json, or None when SIGTERM stopped it. A SIGTERM to this process is passed on (the trainer saves
    its checkpoint, then stops)."""
    jobs = []
    for item in items:
        folder = item.folder(out)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "job.json", job_of(spec, item, out))
        jobs.append(str(folder / "job.json"))
    what = f"{items[0].name} seed {items[0].seed}" if len(items) == 1 else f"{len(items)} runs in one process"
    print_fn(f"{label} {what}: {'training, then ' if spec.train else ''}evaluating (log: {log_path})")
    t0 = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} sa-jax ablate pid {os.getpid()}: "
                  + "; ".join(f"{i.name} seed {i.seed}: {describe(i)}" for i in items) + "\n")
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "sa_jax.ablate.worker", *jobs],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent)
        terminated = []

        def stop(*_):   # the trainer saves its checkpoint, then stops; elsewhere (loading, evaluating) it just ends
            terminated.append(True)
            proc.send_signal(signal.SIGTERM)

        previous = signal.signal(signal.SIGTERM, stop)
        try:
            code = proc.wait()
        except KeyboardInterrupt:   # Ctrl-C reached the worker too: let it end before this process does
            proc.wait()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
    left = [i for i in items if not (i.folder(out) / "result.json").is_file()]
    seconds = time.perf_counter() - t0
    # a SIGTERM stops the study whatever the worker was doing (a worker killed by it outside the training loop
    # exits -15, not 143): no later run starts on a machine being stopped
    stopped = code == PREEMPTED or bool(terminated)
    if stopped:
        print_fn(f"{label} stopped by SIGTERM after {seconds:.0f} s; finished runs and saved checkpoints are kept, "
                 "run again to resume")
    elif left or code:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-8:]
        print_fn(f"{label} {len(left)} of {len(items)} FAILED (exit {code}) after {seconds:.0f} s; the end of "
                 f"{log_path}:\n  " + "\n  ".join(tail))
    else:
        print_fn(f"{label} done in {seconds:.0f} s")
    return None if stopped else left


def run_study(spec: Spec, spec_path: str | Path, out: str | Path, shard: tuple[int, int] = (1, 1),
              print_fn=print) -> int:
    """Run this shard's items that have no result.json yet, then collect. Exit status: 0 every item of the
    shard done, 1 some failed (the others ran; a rerun retries them), 143 stopped by SIGTERM."""
    out = Path(out)
    claim_directory(Path(spec_path), out)
    chosen = shard_items(spec, shard)
    todo = [(k, item) for k, item in chosen if not (item.folder(out) / "result.json").is_file()]
    print_fn(f"{len(chosen)} runs in this shard, {len(chosen) - len(todo)} already done, {len(todo)} to run")
    if spec.train is None:   # sampling only: one process, the model loaded and compiled once
        log = out / ("sampling.log" if shard[1] == 1 else f"sampling-shard{shard[0]}of{shard[1]}.log")
        batches = [([item for _, item in todo], log)] if todo else []
    else:                    # training: a process per run
        batches = [([item], item.folder(out) / "log.txt") for _, item in todo]
    failed, stopped = [], False
    for n, (items, log_path) in enumerate(batches, 1):
        left = run_worker(spec, items, out, log_path, f"[{n}/{len(batches)}]", print_fn)
        if left is None:
            stopped = True
            break
        failed += left
    collect(spec, out, print_fn)
    if stopped:
        return PREEMPTED
    if failed:
        print_fn(f"{len(failed)} run(s) failed: " + ", ".join(f"{i.name} seed{i.seed}" for i in failed)
                 + "; their logs say why; run the study again to retry them")
        return 1
    return 0

