"""The training engine: one loop for every trainer. A trainer is a `Task` (its state, step, batches,
metrics, demos and export); the engine does the rest, the same way for all of them.

    from sa_jax.training.engine import run
    result = run(task, stop_at=None, print_fn=print)    # RunResult(state, step, preempted, export_path)

What the engine does, in order:
- the run directory (`checkpoint.dir`), held by this trainer alone (`RunLock`: run_dir/train.lock, an
  flock that dies with its holder; a second trainer stops with an error naming the holder), the device
  mesh, the global batch (data.batch_size per process, checked against the mesh's batch axes);
- the state: the latest Orbax checkpoint in the run directory restored into its shardings together
  with the data iterator's state (`checkpoint.resume`), else the task's fresh state. A resume is checked
  first (another model is refused and nothing in the run directory changes); the run's config.yaml is
  written once the config is accepted, and the settings that differ from the checkpoint's saved config
  are named (a warning line and TensorBoard text, `config_changes`);
- the loop: batches from the task's iterator placed over the batch axes, the task's compiled step
  (dispatched asynchronously), the progress bar, every `log.every` steps a console line and
  TensorBoard scalars (the task's values, then steps/s, examples/s, TFLOP/s per device from the
  compiled step's FLOP count, skipped steps), the bad-step guard (`max_bad_steps` non-finite steps
  in a row stop the run), demos every `task.demo_every` steps;
- checkpoints (`Checkpoints`): every `checkpoint.every` steps, at the last step, and when any process
  got SIGTERM (then the loop stops: a preempted `RunResult`). Written under a temporary name and
  committed by Orbax only when complete, so a kill during a save leaves the previous checkpoint as
  the latest; a state with non-finite parameters is never saved. A save that fails (a full disk) stops
  the run at that save with one TrainingError, its half-written folder removed; best/ is exported only
  from a committed checkpoint. A kill -9 run resumes bitwise equal
  to an uninterrupted one (the iterator state pairs with the state: the batches of steps 1..step);
- exports (`export`): at the end, and to run_dir/best when a checkpoint interval's mean training loss
  is the lowest so far (`task.keep_best`; best.json says which step). One rule on any number of
  processes: every process gathers the weights to the host (a collective), process 0 writes.
- demos run on one process only (a single-process run), as they generate on local devices.

Every state the engine runs holds `step`, `key`, `bad_steps` and `bad_in_a_row` (`TrainStateBase`);
a task's step ends with `guarded_update`, which keeps only finite updates.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.config import current_names, save_yaml, to_dict
from sa_jax.errors import ConfigError, TrainingError
from sa_jax.nn.attention import batch_sharded_activations
from sa_jax.parallel import batch_divisor, batch_sharding, describe, global_batch, make_mesh, tree_shardings

log = logging.getLogger("sa_jax.training")


# ---------------------------------------------------------------------------------------------
# What a run returns, what a task supplies


@dataclass
class RunResult:
    state: Any                    # the final train state (on the devices)
    step: int                     # the step it holds
    preempted: bool               # stopped by SIGTERM before the last step (checkpoint saved; rerun to resume)
    export_path: Optional[Path]   # the export written at the end (None when the run did not finish)

    @property
    def finished(self) -> bool:
        return self.export_path is not None


class Task:
    """A trainer as the engine sees it. `cfg` is the run's config: the engine reads `checkpoint`,
    `mesh`, `data.batch_size`, `log.every`, `log.memory_analysis` and `max_bad_steps` from it.
    Methods a task must define are marked; the others have defaults."""

    keep_best = False          # export run_dir/best on the lowest interval mean loss (metric "loss")
    demo_every = 0             # demo every N steps (0: never in the loop)
    demo_at_end = False        # and once at the end of a finished run, unless the loop just made one
    tensorboard = True

    def __init__(self, cfg):
        self.cfg = cfg
        self.total_steps = cfg.steps   # may be set in `setup` (CLAP's epochs)

    def setup(self, run_dir: Path, mesh, global_bs: int, print_fn) -> None:
        """Before the state: frozen models, a tokenizer, ..., and `self.iterator`, the data iterator whose
        state is checkpointed (default: the audio/latents pipeline of cfg.data)."""
        from sa_jax.data import DataPipeline

        self.iterator = DataPipeline(self.cfg.data).iterator()

    def state_shardings(self, mesh):                       # must
        """(abstract state, its shardings)."""
        raise NotImplementedError

    def create_state(self, mesh):                          # must
        """A fresh state, initialised into its shardings."""
        raise NotImplementedError

    def check_resume(self, saved_config: dict, where: str) -> None:
        """Before a resume, with the config saved in the checkpoint (`where`): raise to refuse it."""

    def describe(self, state, mesh, global_bs: int) -> str:
        return (f"mesh {dict(mesh.shape)} on {jax.device_count()} devices ({jax.process_count()} processes); "
                f"state {describe(state)}; global batch {global_bs}")

    def prepare(self, raw: dict) -> dict:                  # must
        """A data batch -> the host arrays the step takes."""
        raise NotImplementedError

    def compile(self, mesh, state, batch: dict):           # must
        """Compile the step(s) for these shapes; returns the main compiled step (memory and FLOPs)."""
        raise NotImplementedError

    def step(self, step: int, state, batch: dict):         # must
        """One step (step = the number of steps done before it) -> (state, metrics on device)."""
        raise NotImplementedError

    def first_batch(self, batch: dict) -> None:
        """Sees the run's first (global) batch, e.g. to keep demo clips."""

    def report(self, window: list[dict]) -> tuple[dict, str]:   # must
        """(TensorBoard scalars, the console line's middle) of the host metrics of a log interval."""
        raise NotImplementedError

    def demo(self, state, run_dir: Path, telemetry) -> None:
        """Demo output for the state (single-process runs only)."""

    def export_weights(self, state):                       # must
        """The (device) weights an export writes."""
        raise NotImplementedError

    def export(self, weights, step: int, path: Path) -> Path:   # must
        """Write host `weights` to `path` (process 0 only)."""
        raise NotImplementedError

    def exported(self, path: Path) -> str:
        return f"exported to {path}"


def mean_finite(window: list[dict], key: str) -> float:
    """The mean of a metric over the finite steps of a log interval (nan when there are none)."""
    values = [float(m[key]) for m in window if m["finite"] and key in m]
    return float(np.mean(values)) if values else float("nan")


# ---------------------------------------------------------------------------------------------
# State skeleton, the finite-update guard, init and compile helpers


@flax.struct.dataclass
class TrainStateBase:
    step: jax.Array          # int32: steps attempted so far
    key: jax.Array           # base PRNG key data (uint32), so Orbax can store it
    bad_steps: jax.Array     # int32: non-finite steps skipped in total
    bad_in_a_row: jax.Array  # int32


def counters(key) -> dict:
    """The skeleton's fields of a fresh state, the key from `key`."""
    zero = jnp.zeros((), jnp.int32)
    return {"step": zero, "key": jax.random.key_data(key), "bad_steps": zero, "bad_in_a_row": zero}


def step_key(state):
    """The step's PRNG key: fold_in(state.key, state.step) (a resumed run draws the same numbers)."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)


def guarded_update(state, ok, **updates):
    """state with step + 1 and the fields in `updates` replaced where `ok` (the loss and gradient norm
    are finite); else they keep their values and the step is counted as skipped."""
    kept = {k: jax.tree.map(lambda a, b: jnp.where(ok, a, b), v, getattr(state, k)) for k, v in updates.items()}
    return state.replace(step=state.step + 1, bad_steps=state.bad_steps + (~ok).astype(jnp.int32),
                         bad_in_a_row=jnp.where(ok, 0, state.bad_in_a_row + 1), **kept)


def seed_key_data(seed: int):
    return jax.random.key_data(jax.random.key(seed))


def abstract_state(init: Callable, seed: int, mesh, mesh_cfg):
    """(abstract state of `init(key_data)`, its NamedShardings by the config's FSDP rules)."""
    abstract = jax.eval_shape(init, seed_key_data(seed))
    return abstract, tree_shardings(abstract, mesh, mesh_cfg)


# Compiled functions per key (the config sections they depend on, mesh, shapes): a second run with the
# same model in one process (a resume, a test) does not compile again.
_CACHE: dict = {}


def cached(key, build: Callable):
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def init_state(init: Callable, seed: int, shardings, cache_key, compiler_options=None):
    """A fresh state from `seed`, initialised directly into its shardings (no full copy on one device)."""
    key_data = seed_key_data(seed)
    fn = cached(cache_key, lambda: jax.jit(init, out_shardings=shardings).lower(key_data).compile(
        compiler_options=compiler_options or None))
    return fn(key_data)


def batch_shapes(batch: dict) -> tuple:
    return tuple((k, v.shape, str(v.dtype)) for k, v in sorted(batch.items()))


def jit_step(fn: Callable, mesh, mesh_cfg, state_shardings, batch_keys, extra_in: tuple = ()):
    """`fn(state, *extra, batch) -> (state, metrics)` jitted with the state's shardings in and out (state
    donated), `extra_in` shardings for the arguments between, the batch split over the batch axes and
    the metrics replicated."""
    bs = batch_sharding(mesh, mesh_cfg)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def traced(*args):   # the models' blocks keep their activations split as the batch (constrain_batch)
        with batch_sharded_activations(bs):
            return fn(*args)

    return jax.jit(traced, in_shardings=(state_shardings, *extra_in, {k: bs for k in batch_keys}),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)


def memory_report(compiled) -> str:
    m = compiled.memory_analysis()
    if m is None:
        return "memory analysis: not available on this backend"
    mib = lambda n: f"{n / 2**20:.1f} MiB"
    return (f"memory per device: arguments {mib(m.argument_size_in_bytes)}, outputs {mib(m.output_size_in_bytes)}, "
            f"temporaries {mib(m.temp_size_in_bytes)}, code {mib(m.generated_code_size_in_bytes)}, "
            f"aliased {mib(m.alias_size_in_bytes)}")


def step_flops(compiled) -> float:
    """FLOPs of one step per device, as XLA counts them in the compiled program (0 when unknown)."""
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", 0.0)) if cost else 0.0
    except Exception:  # not every backend reports costs
        return 0.0


def check_bad_steps(bad_in_a_row: int, limit: int) -> None:
    """Stop a run whose last `limit` steps were all non-finite (each was skipped)."""
    if bad_in_a_row >= limit:
        raise TrainingError(f"{bad_in_a_row} non-finite steps in a row (limit max_bad_steps={limit}); the last "
                            "checkpoint is still the good one. Lower optim.lr, set optim.clip_norm, or check the data.")


# ---------------------------------------------------------------------------------------------
# Checkpoints, preemption, exports


class Checkpoints:
    """Orbax CheckpointManager over `run_dir/checkpoints` with the state, the data iterator and the config.

    A save that fails (a full disk, say) stops the run at that save: a synchronous save raises at once,
    an asynchronous one as soon as its commit has failed (`failure`, polled every step), as a
    `TrainingError` naming the step, the directory and the cause; the half-written
    `*.orbax-checkpoint-tmp*` folder is removed and the previous checkpoint stays the latest."""

    def __init__(self, cfg, run_dir: Path):
        import orbax.checkpoint as ocp

        self.cfg = cfg
        c = cfg.checkpoint
        # always Orbax's asynchronous path (a synchronous save waits for it at once): when a write fails it
        # reports the failure only after every write of the save has ended, so the half-written folder can go
        options = ocp.CheckpointManagerOptions(max_to_keep=c.keep, enable_async_checkpointing=True,
                                               create=True, cleanup_tmp_directories=True)
        self.dir = (run_dir / "checkpoints").absolute()
        self.manager = ocp.CheckpointManager(self.dir, options=options)
        self.pending: Optional[int] = None       # the step of an asynchronous save not yet known committed
        self.error: Optional[tuple[int, BaseException]] = None

    def latest(self):
        return self.manager.latest_step()

    def saved_config(self, step) -> dict:
        import orbax.checkpoint as ocp

        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def check_model(self, step) -> dict:
        """The config saved with checkpoint `step`, after checking that it holds the config's model."""
        saved = self.saved_config(step)
        saved["model"] = current_names(type(self.cfg.model), saved.get("model"))   # e.g. family dit -> sao
        model = saved.get("model")
        if isinstance(model, dict) and isinstance(model.get("remat"), bool):   # older configs: remat true/false
            model = {**model, "remat": "block" if model["remat"] else "none"}
        if json.loads(json.dumps(model)) != json.loads(json.dumps(to_dict(self.cfg.model))):
            raise ConfigError(f"{self.dir}/{step} holds a different model than the config "
                              "(model section differs); use a new checkpoint.dir or checkpoint.resume=false")
        return saved

    def save(self, state, iterator, force: bool = False) -> bool:
        import grain
        import orbax.checkpoint as ocp

        step = int(state.step)
        if not bool(_all_finite(state)):
            log.error("step %d: non-finite parameters; not saving over the last good checkpoint", step)
            return False
        self.settle()   # a previous asynchronous save's failure is reported as that step's
        if step in self.manager.all_steps():
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=grain.checkpoint.CheckpointSave(iterator),
                                  config=ocp.args.JsonSave(to_dict(self.cfg)))
        try:
            saved = self.manager.save(step, args=args, force=force)
        except Exception as e:
            self.error = (step, e)
            self.fail()
        if saved:
            self.pending = step
            if not self.cfg.checkpoint.async_save:
                self.settle()
        return saved

    def failure(self) -> bool:
        """Whether a save has failed (an asynchronous one is looked at once its commit has ended)."""
        if self.error is None and self.pending is not None and not self.manager.is_saving_in_progress():
            self._join()
        return self.error is not None

    def _join(self) -> None:
        step, self.pending = self.pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self.error = (step, e)
            return
        if step is not None and step not in self.manager.all_steps():
            self.error = (step, OSError(f"checkpoint {step} was not committed"))

    def settle(self) -> None:
        """Wait for an asynchronous save in flight; a TrainingError if it (or an earlier one) failed."""
        if self.error is None:
            self._join()
        if self.error is not None:
            self.fail()

    def fail(self, other_process: bool = False):
        """Raise the TrainingError of the failed save, once the half-written folders are gone."""
        self.wait_quietly()
        self.remove_partial()
        if self.error is None and other_process:
            raise TrainingError(f"a checkpoint save failed on another process (into {self.dir}); "
                                "the run stopped there")
        step, e = self.error
        last = self.manager.latest_step()
        kept = f"the last saved checkpoint is step {last}" if last is not None else "no checkpoint was saved"
        raise TrainingError(f"could not save the checkpoint of step {step} in {self.dir}: {e}; the run stopped "
                            f"there ({kept}). Free space (or fix the cause) and run the same command to resume "
                            "from it") from e

    def wait_quietly(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception:  # already reported
            pass

    def remove_partial(self) -> None:
        """Remove the `*.orbax-checkpoint-tmp*` folders a failed save left (process 0: the directory is shared)."""
        _join_orbax_threads()   # a failed save's other writes may still be running: they end first
        if jax.process_index() != 0 or not self.dir.is_dir():
            return
        import shutil

        for path in self.dir.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(path, ignore_errors=True)

    def restore(self, step, abstract, shardings, iterator):
        import grain
        import orbax.checkpoint as ocp

        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=grain.checkpoint.CheckpointRestore(iterator)))
        return out["state"]

    def close(self, quiet: bool = False):
        """Wait for a save in flight (an error if it failed, unless `quiet`: the run is already stopping
        with one) and close the manager."""
        try:
            if quiet:
                self.wait_quietly()
            else:
                self.settle()
        finally:
            try:
                self.manager.close()
            except Exception:
                if not quiet:
                    raise
            finally:
                if self.error is not None:   # its threads are done now: nothing writes there any more
                    self.remove_partial()


def _join_orbax_threads(timeout: float = 600.0) -> None:
    """Wait for Orbax's background write threads (those of a failed save keep writing after it has failed)."""
    import threading

    try:
        from orbax.checkpoint._src.futures.future import _SignalingThread
    except ImportError:   # another Orbax layout: nothing to wait for by name
        return
    deadline = time.time() + timeout
    for thread in threading.enumerate():
        if isinstance(thread, _SignalingThread) and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.time()))


@jax.jit
def _all_finite(tree):
    """Every floating-point array of a train state is finite (params, EMA, optimiser moments, ...)."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class Preemption:
    """SIGTERM -> a flag the loop polls (the previous handler is restored afterwards)."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self.previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def to_host(tree):
    """A (possibly sharded across processes) pytree as numpy arrays on every process. A collective when
    there are several processes: every process must call it."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def export(task: Task, state, path: Path) -> Path:
    """The one export rule: every process gathers the task's weights to the host, process 0 writes
    `path`, the others wait until it has."""
    weights = to_host(task.export_weights(state))
    if jax.process_index() == 0:
        task.export(weights, int(state.step), path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"sa_jax export {path}")
    return path


class BestExport:
    """Keeps run_dir/best: the export of the checkpoint whose interval had the lowest mean training
    loss so far (best.json beside it says which step and loss, and survives restarts)."""

    def __init__(self, run_dir: Path):
        self.dir, self.record = run_dir / "best", run_dir / "best.json"
        self.loss = json.loads(self.record.read_text())["loss"] if self.record.is_file() else float("inf")
        self.losses: list[float] = []

    def add(self, losses) -> None:
        self.losses.extend(losses)

    def update(self, task: Task, state, before: Callable[[], None] = lambda: None) -> bool:
        """At a checkpoint: export `state` when its interval's mean loss is the lowest so far, after
        `before()` (the engine waits there for the checkpoint to be committed)."""
        losses, self.losses = self.losses, []
        if not losses or not np.mean(losses) < self.loss:
            return False
        before()
        self.loss = float(np.mean(losses))
        export(task, state, self.dir)
        if jax.process_index() == 0:
            tmp = self.record.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"step": int(state.step), "loss": self.loss}))
            os.replace(tmp, self.record)
        return True


# ---------------------------------------------------------------------------------------------
# One trainer per run directory; what a resumed run changed


class RunLock:
    """`run_dir/train.lock`: the run directory belongs to one trainer at a time. An exclusive `flock` on
    the open file, which the kernel releases when the holder exits however it ends (kill -9 included),
    so a lock is never stale while its file still names a holder: the next trainer takes it over and
    says whose it was. The file says who holds it (host, pid, start time); it is emptied on release.
    Multi-host runs: process 0 takes it, the others trust it (they share the directory)."""

    NAME = "train.lock"

    def __init__(self, run_dir, print_fn=print):
        self.path = Path(run_dir) / self.NAME
        self.print_fn = print_fn
        self.fd: Optional[int] = None

    @classmethod
    def holder(cls, run_dir) -> Optional[str]:
        """Who the lock file names (None when it is empty or absent)."""
        try:
            text = (Path(run_dir) / cls.NAME).read_text().strip()
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        return text or None

    def acquire(self) -> "RunLock":
        import fcntl
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            who = self.holder(self.path.parent) or "another process"
            raise TrainingError(f"{self.path.parent} is held by another trainer ({who}); one trainer per run "
                                f"directory: wait for it, stop it, or choose another checkpoint.dir") from None
        except OSError as e:   # a filesystem without locks: say so, and go on unguarded
            log.warning("cannot lock %s (%s); two trainers on this run directory would not be stopped",
                        self.path, e)
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        if previous:
            self.print_fn(f"taking over the lock of {self.path.parent} from a trainer that is gone ({previous})")
        me = f"host {socket.gethostname()}, pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, (me + "\n").encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)   # a clean end: no holder named
        finally:
            os.close(fd)          # and the flock goes with the descriptor

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def flatten(tree, prefix: str = "") -> dict:
    """A nested config dict as {dotted key: value}."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(saved: dict, current: dict) -> list[str]:
    """`key: old -> new` for each dotted key whose value differs between a run's saved config and the
    config it is resumed with (values as JSON gives them, so tuples and lists compare equal)."""
    old, new = flatten(saved), flatten(json.loads(json.dumps(current)))
    show = lambda v: "(absent)" if v is _ABSENT else json.dumps(v) if isinstance(v, (str, list, dict)) else str(v)
    return [f"{k}: {show(old.get(k, _ABSENT))} -> {show(new.get(k, _ABSENT))}"
            for k in sorted(old.keys() | new.keys()) if old.get(k, _ABSENT) != new.get(k, _ABSENT)]


_ABSENT = object()


# ---------------------------------------------------------------------------------------------
# The loop


def open_run(cfg) -> tuple[Path, Any, int]:
    """The run directory, the device mesh, and the global batch (checked against the mesh's batch axes).
    The run's config.yaml is written by `run` once the config is accepted."""
    run_dir = Path(cfg.checkpoint.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(cfg.mesh)
    per_host = cfg.data.batch_size
    global_bs = per_host * jax.process_count()
    if global_bs % batch_divisor(mesh, cfg.mesh):
        raise ConfigError(f"the global batch {global_bs} (data.batch_size {per_host} x {jax.process_count()} "
                          f"processes) is not divisible by the {batch_divisor(mesh, cfg.mesh)} devices of the "
                          f"batch axes {list(cfg.mesh.batch_axes)}")
    return run_dir, mesh, global_bs


def agree(*flags: bool) -> list[bool]:
    """Each flag true on any process, the same answer on every process (a tiny all-gather)."""
    if jax.process_count() == 1:
        return list(flags)
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.array(flags, bool))
    return [bool(x) for x in np.any(gathered.reshape(-1, len(flags)), axis=0)]


def run(task: Task, *, stop_at: int | None = None, print_fn=print) -> RunResult:
    """Train `task` until its total steps (or `stop_at`, for tests), checkpointing into
    cfg.checkpoint.dir and resuming from it; export at the end. See the module docstring."""
    cfg = task.cfg
    lock = RunLock(cfg.checkpoint.dir, print_fn) if jax.process_index() == 0 else None
    refused = None
    if lock is not None:
        try:
            lock.acquire()   # before anything in the run directory changes
        except TrainingError as e:
            refused = e
    if agree(refused is not None)[0]:   # every process stops when process 0 could not take the lock
        raise refused or TrainingError(f"process 0 could not take the lock of {cfg.checkpoint.dir}")
    try:
        return _run(task, stop_at, print_fn)
    finally:
        if lock is not None:
            lock.release()


def _run(task: Task, stop_at, print_fn) -> RunResult:
    from sa_jax.training.telemetry import Telemetry

    cfg = task.cfg
    run_dir, mesh, global_bs = open_run(cfg)
    ckpt = Checkpoints(cfg, run_dir)
    try:
        latest = ckpt.latest() if cfg.checkpoint.resume else None
        # a resume is checked before anything in the run directory changes (a refused config leaves it as it was)
        changes = []
        if latest is not None:
            saved = ckpt.check_model(latest)
            task.check_resume(saved, f"{ckpt.dir}/{latest}")
            changes = config_changes(saved, to_dict(cfg))
        task.setup(run_dir, mesh, global_bs, print_fn)
        iterator = task.iterator
        total = task.total_steps
        abstract, shardings = task.state_shardings(mesh)
        if latest is None:
            state = task.create_state(mesh)
        else:
            state = ckpt.restore(latest, abstract, shardings, iterator)
            print_fn(f"resumed from {run_dir}/checkpoints/{latest}")
        if jax.process_index() == 0:   # the config is accepted: now it is the run's
            save_yaml(cfg, run_dir / "config.yaml")
    except BaseException:
        ckpt.close(quiet=True)
        raise
    print_fn(task.describe(state, mesh, global_bs))
    single = jax.process_count() == 1   # demos generate on local devices
    best = BestExport(run_dir) if task.keep_best and cfg.checkpoint.keep_best else None
    end = min(total, stop_at) if stop_at is not None else total
    tel = Telemetry(run_dir, total, int(state.step), print_fn=print_fn, tensorboard=task.tensorboard)
    if changes:
        report = (f"resumed with settings that differ from the run's saved config "
                  f"({run_dir}/checkpoints/{latest}): " + "; ".join(changes))
        tel.print("warning: " + report)
        tel.text(int(state.step), "config/changed", "\n".join(changes))
    bs = batch_sharding(mesh, cfg.mesh)
    next_batch = lambda: global_batch(task.prepare(next(iterator)), bs)
    preempted = demoed = False
    quiet = _QuietOrbaxTracebacks()
    logging.getLogger("absl").addFilter(quiet)
    try:
        batch = next_batch()
        task.first_batch(batch)
        compiled = task.compile(mesh, state, batch)
        if cfg.log.memory_analysis:
            tel.print(memory_report(compiled))
        flops = step_flops(compiled)
        window, t_last, s_last = [], time.time(), int(state.step)
        with Preemption() as preempt:
            step = int(state.step)
            while step < end:
                if batch is None:
                    batch = next_batch()
                state, metrics = task.step(step, state, batch)   # dispatched asynchronously
                batch = None
                step += 1
                tel.step()
                window.append(metrics)
                if step % cfg.log.every == 0 or step == end:
                    m = jax.device_get(window)
                    dt, n = max(time.time() - t_last, 1e-9), step - s_last
                    if best is not None:
                        best.add([float(x["loss"]) for x in m if x["finite"] and "loss" in x])
                    values, text = task.report(m)
                    speed = {"steps_per_s": n / dt, "examples_per_s": n * global_bs / dt,
                             "tflops_per_device": flops * n / dt / 1e12, "skipped": int(state.bad_steps)}
                    tel.scalars(step, {**values, **speed}, line=(
                        f"step {step}/{total}  {text}  {speed['steps_per_s']:.2f} steps/s  "
                        f"{speed['examples_per_s']:.1f} examples/s  {speed['tflops_per_device']:.3f} TFLOP/s/device  "
                        f"skipped {speed['skipped']}"))
                    window, t_last, s_last = [], time.time(), step
                    check_bad_steps(int(state.bad_in_a_row), cfg.max_bad_steps)
                preempted, save_failed = agree(preempt.requested, ckpt.failure())
                if save_failed:   # an asynchronous save failed: stop at it
                    ckpt.fail(other_process=True)
                if step % cfg.checkpoint.every == 0 or step == end or preempted:
                    # the iterator has given exactly the batches of steps 1..step: its state pairs with `state`
                    saved = ckpt.save(state, iterator)
                    # best/ is only ever the export of a checkpoint that was saved: wait for its commit
                    if saved and best is not None and best.update(task, state, before=ckpt.settle):
                        tel.print(f"best: mean loss {best.loss:.4f} up to step {step}; exported to {best.dir}")
                if preempted:
                    tel.print(f"SIGTERM: saved step {step}, exiting")
                    break
                demoed = bool(task.demo_every and step % task.demo_every == 0 and single)
                if demoed:
                    task.demo(state, run_dir, tel)
        finished = int(state.step) >= total
        if finished and task.demo_at_end and single and not demoed:
            task.demo(state, run_dir, tel)
        ckpt.close()   # an async save in flight completes (a TrainingError if it failed)
    except BaseException:
        ckpt.close(quiet=True)   # the run stops with its own error; an async save in flight still completes
        raise
    finally:
        tel.close()
        logging.getLogger("absl").removeFilter(quiet)
    path = None
    if finished:
        path = export(task, state, run_dir / "export")
        if jax.process_index() == 0:
            print_fn(task.exported(path))
    return RunResult(state, int(state.step), preempted and not finished, path)


class _QuietOrbaxTracebacks(logging.Filter):
    """Orbax logs each failure of its background save threads with a traceback, several per failed save;
    the engine reports a failed save once (a TrainingError), so those records keep their line only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and "orbax" in record.pathname:
            record.exc_info, record.exc_text = None, None
        return True
