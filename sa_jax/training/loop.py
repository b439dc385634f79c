"""The training loop: data -> sharded train step -> telemetry, Orbax checkpoints, resume, export.

    from sa_jax.training import train
    state = train(cfg)          # a TrainConfig; resumes from cfg.checkpoint.dir when it holds a checkpoint

Run directory (`checkpoint.dir`):
    config.yaml              the TrainConfig of the run
    checkpoints/<step>/      Orbax: state/ (params, optimiser state, EMA, step, RNG, counters),
                             data/ (the grain iterator state, one JSON per process), config/
    export/                  the inference checkpoint (EMA weights, sa_jax.checkpoints.store layout)

Checkpoints are written under a temporary name and committed by Orbax only when complete, so a
kill during a save leaves the previous checkpoint as the latest; a state with non-finite
parameters is never saved. SIGTERM (preemption) makes the loop save at the next step and return.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.config import ConfigError, save_yaml, to_dict
from sa_jax.parallel import batch_divisor, batch_sharding, describe, global_batch, make_mesh
from sa_jax.training import model as tm
from sa_jax.training.step import compiled_train_step, create_state, state_shardings

log = logging.getLogger("sa_jax.training")


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps in a row)."""


def prepare_batch(cfg, raw: dict) -> dict:
    """A data-pipeline batch (latents kind) -> the numpy arrays the train step takes."""
    b = raw["latents"].shape[0]
    n, d = tm.text_shape(cfg.model)
    if cfg.text.source == "hash":
        text, mask = tm.hash_text_features(list(raw["prompt"]), n, d, cfg.text.tokens)
    else:
        text, mask = tm.zero_text_features(b, n, d)
    return {"latents": np.asarray(raw["latents"], np.float32), "text": text, "text_mask": mask,
            "seconds_start": np.asarray(raw["seconds_start"], np.int32),
            "seconds_total": np.asarray(raw["seconds_total"], np.int32)}


class Checkpoints:
    """Orbax CheckpointManager over `run_dir/checkpoints` with the state, the grain iterator and the config."""

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
        if not bool(_all_finite(state.params, state.ema)):
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
def _all_finite(*trees):
    leaves = jax.tree_util.tree_leaves(trees)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


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


def export_inference(cfg, state, path) -> Path:
    """Write the EMA weights as an sa-jax checkpoint (config.yaml with the model section, params/)."""
    from sa_jax.checkpoints import store

    config = {"model_type": "diffusion_denoiser", "family": cfg.model.family, "model": to_dict(cfg.model),
              "step": int(state.step)}
    return store.save(path, config, state.ema, overwrite=True)


class _Preemption:
    """Turns SIGTERM into a flag the loop polls (the handler is restored afterwards)."""

    def __init__(self):
        self.requested = False

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
        """Every process sees the same answer (a tiny all-gather when there are several)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array([self.requested]))))


def train(cfg, *, stop_at: int | None = None, print_fn=print):
    """Train until cfg.steps (or `stop_at`, for tests), checkpointing into cfg.checkpoint.dir.
    Returns the final TrainState."""
    from sa_jax.data import DataPipeline

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
    pipe = DataPipeline(cfg.data)
    iterator = pipe.iterator()
    abstract, shardings = state_shardings(cfg, mesh)
    ckpt = Checkpoints(cfg, run_dir)
    latest = ckpt.latest() if cfg.checkpoint.resume else None
    if latest is not None:
        state = ckpt.restore(latest, abstract, shardings, iterator)
        print_fn(f"resumed from {run_dir}/checkpoints/{latest}")
    else:
        state = create_state(cfg, mesh)
    print_fn(f"mesh {dict(mesh.shape)} on {jax.device_count()} devices ({jax.process_count()} processes); "
             f"state {describe(state)}; global batch {global_bs}")

    try:
        bs = batch_sharding(mesh, cfg.mesh)
        first = global_batch(prepare_batch(cfg, next(iterator)), bs)
        compiled = compiled_train_step(cfg, mesh, state, first)
        if cfg.log.memory_analysis:
            print_fn(memory_report(compiled))
        flops = step_flops(compiled)

        end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        batch = first
        window, t_last, s_last = [], time.time(), int(state.step)
        with _Preemption() as preempt:
            step = int(state.step)
            while step < end:
                if batch is None:
                    batch = global_batch(prepare_batch(cfg, next(iterator)), bs)
                state, metrics = compiled(state, batch)   # dispatched asynchronously
                batch = None
                step += 1
                window.append(metrics)
                if step % cfg.log.every == 0 or step == end:
                    m = jax.device_get(window)
                    dt = time.time() - t_last
                    n = step - s_last
                    bad_row = int(state.bad_in_a_row)
                    losses = [float(x["loss"]) for x in m if x["finite"]]
                    print_fn(f"step {step}/{cfg.steps}  loss {np.mean(losses) if losses else float('nan'):.4f}  "
                             f"grad_norm {float(m[-1]['grad_norm']):.3f}  lr {float(m[-1]['lr']):.3e}  "
                             f"{n / dt:.2f} steps/s  {n * global_bs / dt:.1f} examples/s  "
                             f"{flops * n / dt / 1e12:.3f} TFLOP/s/device  "
                             f"skipped {int(state.bad_steps)}")
                    window, t_last, s_last = [], time.time(), step
                    if bad_row >= cfg.max_bad_steps:
                        raise TrainingError(f"{bad_row} non-finite steps in a row (limit max_bad_steps="
                                            f"{cfg.max_bad_steps}); the last checkpoint is still the good one. "
                                            "Lower optim.lr, set optim.clip_norm, or check the data.")
                preempted = preempt.agreed()
                if step % cfg.checkpoint.every == 0 or step == end or preempted:
                    # The iterator has given exactly the batches of steps 1..step: its state pairs with `state`.
                    ckpt.save(state, iterator)
                    if preempted:
                        print_fn(f"SIGTERM: saved step {step}, exiting")
                        break
    finally:
        ckpt.wait()   # an async save in flight completes even when the run stops with an error
        ckpt.close()
    if int(state.step) >= cfg.steps and jax.process_count() == 1:
        path = export_inference(cfg, state, run_dir / "export")
        print_fn(f"exported the EMA weights to {path}")
    return state
