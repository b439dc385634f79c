"""The training engine: one loop for every trainer. A trainer is a `Task` (its state, step, batches,
metrics, demos and export); the engine does the rest, the same way for all of them.

    from sa_jax.training.engine import run
    result = run(task, stop_at=None, print_fn=print)    # RunResult(state, step, preempted, export_path)

What the engine does, in order:
- the run directory (`checkpoint.dir`) with the run's config.yaml, the device mesh, the global batch
  (data.batch_size per process, checked against the mesh's batch axes);
- the state: the latest Orbax checkpoint in the run directory restored into its shardings together
  with the data iterator's state (`checkpoint.resume`), else the task's fresh state;
- the loop: batches from the task's iterator placed over the batch axes, the task's compiled step
  (dispatched asynchronously), the progress bar, every `log.every` steps a console line and
  TensorBoard scalars (the task's values, then steps/s, examples/s, TFLOP/s per device from the
  compiled step's FLOP count, skipped steps), the bad-step guard (`max_bad_steps` non-finite steps
  in a row stop the run), demos every `task.demo_every` steps;
- checkpoints (`Checkpoints`): every `checkpoint.every` steps, at the last step, and when any process
  got SIGTERM (then the loop stops: a preempted `RunResult`). Written under a temporary name and
  committed by Orbax only when complete, so a kill during a save leaves the previous checkpoint as
  the latest; a state with non-finite parameters is never saved. A kill -9 run resumes bitwise equal
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

from sa_jax.config import ConfigError, save_yaml, to_dict
from sa_jax.errors import TrainingError
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
    return jax.jit(fn, in_shardings=(state_shardings, *extra_in, {k: bs for k in batch_keys}),
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
    """Orbax CheckpointManager over `run_dir/checkpoints` with the state, the data iterator and the config."""

    def __init__(self, cfg, run_dir: Path):
        import orbax.checkpoint as ocp

        self.cfg = cfg
        c = cfg.checkpoint
        options = ocp.CheckpointManagerOptions(max_to_keep=c.keep, enable_async_checkpointing=c.async_save,
                                               create=True)
        self.manager = ocp.CheckpointManager((run_dir / "checkpoints").absolute(), options=options)

    def latest(self):
        return self.manager.latest_step()

    def save(self, state, iterator, force: bool = False) -> bool:
        import grain
        import orbax.checkpoint as ocp

        step = int(state.step)
        if not bool(_all_finite(state)):
            log.error("step %d: non-finite parameters; not saving over the last good checkpoint", step)
            return False
        if step in self.manager.all_steps():
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=grain.checkpoint.CheckpointSave(iterator),
                                  config=ocp.args.JsonSave(to_dict(self.cfg)))
        return self.manager.save(step, args=args, force=force)

    def restore(self, step, abstract, shardings, iterator):
        import grain
        import orbax.checkpoint as ocp

        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        if saved.get("model") != to_dict(self.cfg.model):
            raise ConfigError(f"{self.manager.directory}/{step} holds a different model than the config "
                              "(model section differs); use a new checkpoint.dir or checkpoint.resume=false")
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=grain.checkpoint.CheckpointRestore(iterator)))
        return out["state"]

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


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

    def agreed(self) -> bool:
        """Whether any process got SIGTERM; every process sees the same answer (a tiny all-gather)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array([self.requested]))))


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

    def update(self, task: Task, state) -> bool:
        losses, self.losses = self.losses, []
        if not losses or not np.mean(losses) < self.loss:
            return False
        self.loss = float(np.mean(losses))
        export(task, state, self.dir)
        if jax.process_index() == 0:
            tmp = self.record.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"step": int(state.step), "loss": self.loss}))
            os.replace(tmp, self.record)
        return True


# ---------------------------------------------------------------------------------------------
# The loop


def open_run(cfg) -> tuple[Path, Any, int]:
    """The run directory with the run's config.yaml, the device mesh, and the global batch (checked
    against the mesh's batch axes)."""
    run_dir = Path(cfg.checkpoint.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        save_yaml(cfg, run_dir / "config.yaml")
    mesh = make_mesh(cfg.mesh)
    per_host = cfg.data.batch_size
    global_bs = per_host * jax.process_count()
    if global_bs % batch_divisor(mesh, cfg.mesh):
        raise ConfigError(f"the global batch {global_bs} (data.batch_size {per_host} x {jax.process_count()} "
                          f"processes) is not divisible by the {batch_divisor(mesh, cfg.mesh)} devices of the "
                          f"batch axes {list(cfg.mesh.batch_axes)}")
    return run_dir, mesh, global_bs


def run(task: Task, *, stop_at: int | None = None, print_fn=print) -> RunResult:
    """Train `task` until its total steps (or `stop_at`, for tests), checkpointing into
    cfg.checkpoint.dir and resuming from it; export at the end. See the module docstring."""
    from sa_jax.training.telemetry import Telemetry

    cfg = task.cfg
    run_dir, mesh, global_bs = open_run(cfg)
    task.setup(run_dir, mesh, global_bs, print_fn)
    iterator = task.iterator
    total = task.total_steps
    abstract, shardings = task.state_shardings(mesh)
    ckpt = Checkpoints(cfg, run_dir)
    latest = ckpt.latest() if cfg.checkpoint.resume else None
    if latest is None:
        state = task.create_state(mesh)
    else:
        state = ckpt.restore(latest, abstract, shardings, iterator)
        print_fn(f"resumed from {run_dir}/checkpoints/{latest}")
    print_fn(task.describe(state, mesh, global_bs))
    single = jax.process_count() == 1   # demos generate on local devices
    best = BestExport(run_dir) if task.keep_best and cfg.checkpoint.keep_best else None
    end = min(total, stop_at) if stop_at is not None else total
    tel = Telemetry(run_dir, total, int(state.step), print_fn=print_fn, tensorboard=task.tensorboard)
    bs = batch_sharding(mesh, cfg.mesh)
    next_batch = lambda: global_batch(task.prepare(next(iterator)), bs)
    preempted = demoed = False
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
                preempted = preempt.agreed()
                if step % cfg.checkpoint.every == 0 or step == end or preempted:
                    # the iterator has given exactly the batches of steps 1..step: its state pairs with `state`
                    saved = ckpt.save(state, iterator)
                    if saved and best is not None and best.update(task, state):
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
    finally:
        ckpt.wait()   # an async save in flight completes even when the run stops with an error
        ckpt.close()
        tel.close()
    path = None
    if finished:
        path = export(task, state, run_dir / "export")
        if jax.process_index() == 0:
            print_fn(task.exported(path))
    return RunResult(state, int(state.step), preempted and not finished, path)
