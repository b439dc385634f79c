"""The training loop: data -> sharded train step -> telemetry, Orbax checkpoints, resume, export.

    from sa_jax.training import train
    state = train(cfg)          # a TrainConfig; resumes from cfg.checkpoint.dir when it holds a checkpoint

Run directory (`checkpoint.dir`):
    config.yaml              the TrainConfig of the run
    checkpoints/<step>/      Orbax: state/ (params, optimiser state, EMA, step, RNG, counters),
                             data/ (the grain iterator state, one JSON per process), config/
    export/                  the inference checkpoint (EMA weights): with a real text encoder and the
                             autoencoder a whole model for `StableAudio.load`, else the denoiser alone
    best/, best.json         the export of the checkpoint with the lowest interval mean loss so far
    tensorboard/             TensorBoard events (scalars; demo audio)
    demo/<step>/             demo audio for fixed prompts (`demo.every`)

Checkpoints are written under a temporary name and committed by Orbax only when complete, so a
kill during a save leaves the previous checkpoint as the latest; a state with non-finite
parameters is never saved. SIGTERM (preemption) makes the loop save at the next step and return.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.config import ConfigError, save_yaml, to_dict
from sa_jax.parallel import batch_divisor, batch_sharding, describe, global_batch, make_mesh
from sa_jax.training import model as tm
from sa_jax.training.frozen import FrozenModels, load_frozen
from sa_jax.training.step import NO_FROZEN, compiled_train_step, create_state, place_frozen, state_shardings
from sa_jax.training.telemetry import Telemetry
from sa_jax.errors import TrainingError  # noqa: F401  (re-exported)

log = logging.getLogger("sa_jax.training")


def check_bad_steps(bad_in_a_row: int, limit: int) -> None:
    """Stop a run whose last `limit` steps were all non-finite (each was skipped)."""
    if bad_in_a_row >= limit:
        raise TrainingError(f"{bad_in_a_row} non-finite steps in a row (limit max_bad_steps={limit}); the last "
                            "checkpoint is still the good one. Lower optim.lr, set optim.clip_norm, or check the data.")


def prepare_batch(cfg, raw: dict, frozen: FrozenModels = NO_FROZEN) -> dict:
    """A data-pipeline batch -> the numpy arrays the train step takes (`step.batch_keys`)."""
    b = len(raw["prompt"])
    n, d = tm.text_shape(cfg.model)
    out = {}
    if cfg.data.kind == "latents":
        out["latents"] = np.asarray(raw["latents"], np.float32)
    else:
        out["audio"] = np.asarray(raw["audio"], np.float32)
    if cfg.text.source in ("t5", "clap"):
        out["text_ids"], out["text_mask"] = frozen.tokenize(raw["prompt"])
    elif cfg.text.source == "hash":
        out["text"], out["text_mask"] = tm.hash_text_features(list(raw["prompt"]), n, d, cfg.text.tokens)
    else:
        out["text"], out["text_mask"] = tm.zero_text_features(b, n, d)
    out["seconds_start"] = np.asarray(raw["seconds_start"], np.int32)
    out["seconds_total"] = np.asarray(raw["seconds_total"], np.int32)
    return out


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
        if not bool(_all_finite(state)):
            log.error("step %d: non-finite parameters; not saving over the last good checkpoint", step)
            return False
        if step in self.manager.all_steps():
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=grain.checkpoint.CheckpointSave(iterator),
                                  config=ocp.args.JsonSave(to_dict(self.cfg)))
        return self.manager.save(step, args=args, force=force)

    def at_step(self, state, iterator, step: int, end: int, preempt) -> tuple[bool, bool]:
        """Save when `step` is a checkpoint step, the last one, or any process saw SIGTERM (the
        iterator has given exactly the batches of steps 1..step, so its state pairs with `state`).
        Returns (saved, preempted); the caller stops when preempted."""
        preempted = preempt.agreed()
        saved = False
        if step % self.cfg.checkpoint.every == 0 or step == end or preempted:
            saved = self.save(state, iterator)
        return saved, preempted

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


def open_run(cfg, print_fn=print) -> tuple[Path, Any, int]:
    """The start every trainer shares: the run directory with the run's config.yaml, the device
    mesh, and the global batch (checked against the mesh's batch axes)."""
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


def restore_or_create(cfg, run_dir: Path, iterator, abstract, shardings, create, print_fn=print):
    """(Checkpoints, state): the latest checkpoint in run_dir restored into `shardings` (the data
    iterator with it) when there is one and cfg.checkpoint.resume, else `create()`."""
    ckpt = Checkpoints(cfg, run_dir)
    latest = ckpt.latest() if cfg.checkpoint.resume else None
    if latest is None:
        return ckpt, create()
    state = ckpt.restore(latest, abstract, shardings, iterator)
    print_fn(f"resumed from {run_dir}/checkpoints/{latest}")
    return ckpt, state


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


def inference_model(cfg, params, frozen: FrozenModels):
    """A `StableAudio` from trained parameters ({"conditioner", "denoiser"}) and the frozen text
    encoder and autoencoder; None when the run has no real text encoder or no autoencoder."""
    if frozen.text_encoder is None or frozen.autoencoder is None:
        return None
    from sa_jax.families.sao import SAOFamily
    from sa_jax.pipeline import SamplingDefaults, StableAudio

    m = cfg.model
    params = jax.device_get(params)
    if m.family == "sao":
        family = SAOFamily(m.dit, params["denoiser"], m.conditioning, params["conditioner"], frozen.text_encoder,
                           m.compute_dtype)
        defaults = SamplingDefaults()
    else:
        from sa_jax.families.sa1 import SAMPLING_DEFAULTS, SA1Family

        family = SA1Family(m.unet, params["denoiser"], params["conditioner"], frozen.text_encoder, cfg.text.layer,
                           (m.timing, m.timing), m.compute_dtype)
        defaults = SamplingDefaults(**SAMPLING_DEFAULTS)
    ratio = frozen.autoencoder.downsampling_ratio
    frames = (cfg.data.latent_window or cfg.data.window // ratio) if cfg.data.kind == "latents" \
        else cfg.data.window // ratio
    return StableAudio(family, frozen.autoencoder, frames * ratio, defaults)


def export_inference(cfg, state, path, frozen: FrozenModels = NO_FROZEN) -> Path:
    """Write the EMA weights as an sa-jax checkpoint. With a real text encoder and the autoencoder
    it is a whole text-to-audio model (`StableAudio.load(path)` reads it); otherwise the
    conditioner and denoiser alone (config.yaml with the model section, params/)."""
    model = inference_model(cfg, state.ema, frozen)
    if model is not None:
        return model.save(path, overwrite=True)
    from sa_jax.checkpoints import store

    config = {"model_type": "diffusion_denoiser", "family": cfg.model.family, "model": to_dict(cfg.model),
              "step": int(state.step)}
    return store.save(path, config, jax.device_get(state.ema), overwrite=True)


def write_demos(cfg, state, frozen: FrozenModels, run_dir: Path, telemetry) -> Path:
    """Demo audio for cfg.demo.prompts from the EMA weights: WAVs in run_dir/demo/<step>/ and TensorBoard."""
    from sa_jax.audio import write_audio

    d = cfg.demo
    model = inference_model(cfg, state.ema, frozen)
    step = int(state.step)
    audio = model.generate(list(d.prompts), seconds_total=d.seconds_total, steps=d.steps, cfg_scale=d.cfg_scale,
                           sampler=d.sampler, seed=d.seed)
    folder = run_dir / "demo" / f"{step:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    for i, clip in enumerate(audio):
        write_audio(folder / f"{i}.wav", clip, model.sample_rate)
        telemetry.audio(step, f"demo/{i}", clip, model.sample_rate)
    return folder


class BestExport:
    """Keeps run_dir/best: the EMA export of the checkpoint whose interval had the lowest mean
    training loss so far (best.json beside it says which step and loss, and survives restarts)."""

    def __init__(self, run_dir: Path):
        self.dir, self.record = run_dir / "best", run_dir / "best.json"
        self.loss = json.loads(self.record.read_text())["loss"] if self.record.is_file() else float("inf")
        self.losses: list[float] = []

    def add(self, losses) -> None:
        self.losses.extend(losses)

    def update(self, cfg, state, frozen) -> bool:
        losses, self.losses = self.losses, []
        if not losses or not np.mean(losses) < self.loss:
            return False
        self.loss = float(np.mean(losses))
        export_inference(cfg, state, self.dir, frozen)
        tmp = self.record.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"step": int(state.step), "loss": self.loss}))
        os.replace(tmp, self.record)
        return True


class _Preemption:
    """Turns SIGTERM into a flag the loop polls (the handler is restored afterwards).
    `_Preemption.stopped` tells whether the last training loop stopped for it (`sa-jax train` then
    exits with 143, so a script running stages in turn does not mistake the stop for the end)."""

    stopped = False

    def __init__(self):
        self.requested = False

    def __enter__(self):
        _Preemption.stopped = False
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
            agreed = self.requested
        else:
            from jax.experimental import multihost_utils

            agreed = bool(np.any(multihost_utils.process_allgather(np.array([self.requested]))))
        _Preemption.stopped = _Preemption.stopped or agreed
        return agreed


def train(cfg, *, stop_at: int | None = None, print_fn=print):
    """Train until cfg.steps (or `stop_at`, for tests), checkpointing into cfg.checkpoint.dir.
    Returns the final TrainState."""
    from sa_jax.data import DataPipeline

    run_dir, mesh, global_bs = open_run(cfg, print_fn)
    frozen = load_frozen(cfg)
    frozen_params = place_frozen(cfg, mesh, frozen)
    iterator = DataPipeline(cfg.data).iterator()
    abstract, shardings = state_shardings(cfg, mesh)
    ckpt, state = restore_or_create(cfg, run_dir, iterator, abstract, shardings, lambda: create_state(cfg, mesh),
                                    print_fn)
    print_fn(f"mesh {dict(mesh.shape)} on {jax.device_count()} devices ({jax.process_count()} processes); "
             f"state {describe(state)}; global batch {global_bs}")
    single = jax.process_count() == 1   # exports and demos gather the EMA weights on one process
    best = BestExport(run_dir) if cfg.checkpoint.keep_best and single else None
    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    tel = Telemetry(run_dir, cfg.steps, int(state.step), print_fn=print_fn)

    try:
        bs = batch_sharding(mesh, cfg.mesh)
        first = global_batch(prepare_batch(cfg, next(iterator), frozen), bs)
        compiled = compiled_train_step(cfg, mesh, state, frozen_params, first, frozen)
        if cfg.log.memory_analysis:
            tel.print(memory_report(compiled))
        flops = step_flops(compiled)

        batch = first
        window, t_last, s_last = [], time.time(), int(state.step)
        with _Preemption() as preempt:
            step = int(state.step)
            while step < end:
                if batch is None:
                    batch = global_batch(prepare_batch(cfg, next(iterator), frozen), bs)
                state, metrics = compiled(state, frozen_params, batch)   # dispatched asynchronously
                batch = None
                step += 1
                tel.step()
                window.append(metrics)
                if step % cfg.log.every == 0 or step == end:
                    m = jax.device_get(window)
                    dt = time.time() - t_last
                    n = step - s_last
                    bad_row = int(state.bad_in_a_row)
                    losses = [float(x["loss"]) for x in m if x["finite"]]
                    if best is not None:
                        best.add(losses)
                    scalars = {"loss": np.mean(losses) if losses else float("nan"),
                               "grad_norm": float(m[-1]["grad_norm"]), "lr": float(m[-1]["lr"]),
                               "steps_per_s": n / dt, "examples_per_s": n * global_bs / dt,
                               "tflops_per_device": flops * n / dt / 1e12, "skipped": int(state.bad_steps)}
                    tel.scalars(step, scalars, line=(
                        f"step {step}/{cfg.steps}  loss {scalars['loss']:.4f}  grad_norm {scalars['grad_norm']:.3f}  "
                        f"lr {scalars['lr']:.3e}  {scalars['steps_per_s']:.2f} steps/s  "
                        f"{scalars['examples_per_s']:.1f} examples/s  "
                        f"{scalars['tflops_per_device']:.3f} TFLOP/s/device  skipped {scalars['skipped']}"))
                    window, t_last, s_last = [], time.time(), step
                    check_bad_steps(bad_row, cfg.max_bad_steps)
                saved, preempted = ckpt.at_step(state, iterator, step, end, preempt)
                if saved and best is not None and best.update(cfg, state, frozen):
                    tel.print(f"best: mean loss {best.loss:.4f} up to step {step}; exported to {best.dir}")
                if preempted:
                    tel.print(f"SIGTERM: saved step {step}, exiting")
                    break
                if cfg.demo.every and step % cfg.demo.every == 0 and single:
                    tel.print(f"demo: step {step} audio in {write_demos(cfg, state, frozen, run_dir, tel)}")
    finally:
        ckpt.wait()   # an async save in flight completes even when the run stops with an error
        ckpt.close()
        tel.close()
    if int(state.step) >= cfg.steps and single:
        path = export_inference(cfg, state, run_dir / "export", frozen)
        print_fn(f"exported the EMA weights to {path}")
    return state
