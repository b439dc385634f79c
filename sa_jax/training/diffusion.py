"""Diffusion training (the SAO DiT or the paper's U-Net) as a task of the training engine.

    from sa_jax.config import load
    from sa_jax.training import TrainConfig, train
    result = train(load(TrainConfig, "configs/train_dit_tiny.yaml", ["data.path=latents/"]))
    result.state, result.preempted, result.export_path

The state and the step (sharded, donated state):

    state = create_state(cfg, mesh)                   # params, optimiser state, EMA, step, key (sharded)
    step_fn = make_train_step(cfg, mesh, frozen)      # jit with in/out shardings, state donated
    state, metrics = step_fn(state, frozen_params, batch)   # batch: global arrays (see `batch_keys`)

`frozen` (sa_jax.training.frozen.FrozenModels; NO_FROZEN: none) holds the frozen text encoder and
autoencoder; their parameters are the step's second argument. One step: encode audio to latents
and token ids to text features when the batch holds those, draw t, noise and CFG-dropout
decisions from fold_in(state.key, state.step) (so a resumed run draws the same numbers), mix x_t
and the objective's target, MSE of the network output, gradients, AdamW (with optional clipping).
A non-finite loss or gradient norm leaves params, optimiser state and EMA untouched, still advances
the step, and counts it in `bad_steps` (total) and `bad_in_a_row`.

Run directory (`checkpoint.dir`), besides what the engine writes (config.yaml, checkpoints/,
tensorboard/):
    export/          the inference checkpoint (EMA weights): with a real text encoder and the
                     autoencoder a whole model for `StableAudio.load`, else the denoiser alone
    best/, best.json the export of the checkpoint with the lowest interval mean loss so far
    demo/<step>/     demo audio for fixed prompts (`demo.every`)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sa_jax.config import to_dict
from sa_jax.diffusion import noised_and_target, sample_timesteps
from sa_jax.errors import ConfigError
from sa_jax.parallel import batch_divisor, tree_shardings
from sa_jax.training import engine
from sa_jax.training import finetune as ft
from sa_jax.training import model as tm
from sa_jax.training.engine import RunResult, Task, TrainStateBase, guarded_update, mean_finite
from sa_jax.training.frozen import FrozenModels, load_frozen
from sa_jax.training.optim import ema_decay, make_optimizer

NO_FROZEN = FrozenModels()


# ---------------------------------------------------------------------------------------------
# State and step


def batch_keys(cfg) -> tuple[str, ...]:
    """The arrays of a step's batch: latents (pre-encoded) or audio (encoded in the step), token ids
    (a frozen encoder runs in the step) or ready text features, the masks and timing."""
    x = "latents" if cfg.data.kind == "latents" else "audio"
    text = "text_ids" if cfg.text.source in ("t5", "clap") else "text"
    return (x, text, "text_mask", "seconds_start", "seconds_total")


@flax.struct.dataclass
class TrainState(TrainStateBase):
    params: Any              # float32: the model {"conditioner", "denoiser"}, or a LoRA run's adapters
    opt_state: Any
    ema: Any                 # float32 EMA of params (a copy of params when EMA is off)


def _base_shapes(cfg):
    return jax.eval_shape(lambda: tm.init_params(cfg.model, jax.random.key(0)))


def _state_from(cfg, params, k_train) -> TrainState:
    opt, _ = make_optimizer(cfg.optim, cfg.steps)
    ema = jax.tree.map(jnp.copy, params)   # its own buffers (the state is donated leaf by leaf)
    return TrainState(params=params, opt_state=opt.init(params), ema=ema, **engine.counters(k_train))


def _init_state(cfg, key_data):
    """A fresh state: random parameters, or a LoRA run's fresh adapters (`up` zero: the base exactly)."""
    k_init, k_train = jax.random.split(jax.random.wrap_key_data(key_data))
    if cfg.lora.enabled:
        from sa_jax.nn.lora import init_adapters

        params = ft.adapter_tree(init_adapters(_base_shapes(cfg), cfg.lora.rank, ft.lora_targets(cfg), k_init))
    else:
        params = tm.init_params(cfg.model, k_init)
    return _state_from(cfg, params, k_train)


def lora_target_paths(cfg) -> list[str]:
    """The kernels a LoRA run adapts (sa_jax.nn.lora.target_paths of the model's tree)."""
    from sa_jax.nn.lora import target_paths

    return target_paths(_base_shapes(cfg), ft.lora_targets(cfg))


def state_shardings(cfg, mesh):
    """(abstract state, its NamedShardings by the config's FSDP rules; with optim.offload the optimiser
    state and EMA in host memory)."""
    abstract, shardings = engine.abstract_state(lambda k: _init_state(cfg, k), cfg.seed, mesh, cfg.mesh)
    if cfg.optim.offload:
        host = lambda tree: jax.tree.map(lambda s: s.with_memory_kind("pinned_host"), tree)
        shardings = shardings.replace(opt_state=host(shardings.opt_state), ema=host(shardings.ema))
    return abstract, shardings


def _fingerprint(cfg, mesh, *extra):
    return ("diffusion", repr((cfg.model, cfg.diffusion, cfg.optim, cfg.ema, cfg.mesh, cfg.steps, cfg.lora,
                               batch_keys(cfg))), mesh, *extra)


def create_state(cfg, mesh, init_params=None) -> TrainState:
    """A fresh state from cfg.seed, initialised directly into its shardings (no full copy on one device).
    `init_params` (host arrays, the tree of `tm.init_params`): a whole-model run starts from them (EMA too)."""
    shardings = state_shardings(cfg, mesh)[1]
    if init_params is None or cfg.lora.enabled:
        return engine.init_state(lambda k: _init_state(cfg, k), cfg.seed, shardings, _fingerprint(cfg, mesh, "init"))
    params = place(init_params, shardings.params)
    key_data = engine.seed_key_data(cfg.seed)
    build = jax.jit(lambda p, kd: _state_from(cfg, p, jax.random.split(jax.random.wrap_key_data(kd))[1]),
                    in_shardings=(shardings.params, None), out_shardings=shardings)
    return build(params, key_data)


def step_inputs(cfg, batch: dict, key, frozen: FrozenModels = NO_FROZEN, frozen_params=None) -> dict:
    """Everything a step's loss needs, per batch item: clean latents (the audio encoded by the frozen
    autoencoder), text features (the frozen text encoder, once per batch), the draws of t, noise and
    CFG dropout from `key`, the timing. Drawn for the whole batch, so a step split into microbatches
    (optim.accumulate) trains on the same numbers as one taking it at once."""
    k_t, k_n, k_d = jax.random.split(key, 3)
    if "audio" in batch:
        x0 = frozen.encode_audio(frozen_params["vae"], batch["audio"], jax.random.fold_in(key, 3))
    else:
        x0 = batch["latents"].astype(jnp.float32)
    if "text_ids" in batch:
        text = frozen.encode_text(frozen_params["text"], batch["text_ids"], batch["text_mask"])
    else:
        text = batch["text"]
    b = x0.shape[0]
    out = {"x0": x0, "noise": jax.random.normal(k_n, x0.shape, jnp.float32),
           "t": sample_timesteps(k_t, b, cfg.diffusion.timesteps, shift=cfg.diffusion.timestep_shift),
           "text": text, "text_mask": batch["text_mask"],
           "seconds_start": batch["seconds_start"], "seconds_total": batch["seconds_total"]}
    drop = tm.cfg_drop(k_d, cfg.diffusion.cfg_dropout, b)
    if drop is not None:
        out["drop"] = drop
    return out


def model_loss(cfg, params, inputs: dict):
    """MSE of the network's output against the objective's target, over (a microbatch of) `step_inputs`."""
    x_t, target = noised_and_target(cfg.diffusion.objective, inputs["x0"], inputs["noise"], inputs["t"])
    out = tm.predict(cfg.model, params, x_t, inputs["t"], inputs["text"], inputs["text_mask"],
                     inputs["seconds_start"], inputs["seconds_total"], inputs.get("drop"))
    return jnp.mean(jnp.square(out.astype(jnp.float32) - target))


def loss_and_aux(cfg, params, batch, key, frozen: FrozenModels = NO_FROZEN, frozen_params=None):
    """The loss of `params` (the whole model) on a batch, with the step's draws from `key`."""
    return model_loss(cfg, params, step_inputs(cfg, batch, key, frozen, frozen_params))


def accumulated_value_and_grad(loss_fn, params, inputs: dict, n: int):
    """(loss, gradient) of the mean of `loss_fn(params, microbatch)` over `n` equal microbatches of
    `inputs` (item i goes to microbatch i % n: on a sharded batch every device keeps its own items),
    one microbatch at a time (a scan): the loss and gradient of the whole batch, in less memory."""
    if n == 1:
        return jax.value_and_grad(loss_fn)(params, inputs)
    b = jax.tree.leaves(inputs)[0].shape[0]
    if b % n:
        raise ConfigError(f"optim.accumulate {n} does not divide the global batch {b}")
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(b // n, n, *x.shape[1:]), 0, 1), inputs)

    def one(carry, mb):
        loss, grads = jax.value_and_grad(loss_fn)(params, mb)
        return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(one, zero, micro)
    return loss / n, jax.tree.map(lambda g: g / n, grads)


def train_step(cfg, frozen: FrozenModels, state: TrainState, frozen_params, batch: dict) -> tuple[TrainState, dict]:
    opt, schedule = make_optimizer(cfg.optim, cfg.steps)
    if cfg.optim.offload:   # optimiser state and EMA from host memory for the update; out_shardings put them back
        to_device = lambda tree: jax.tree.map(lambda x: jax.device_put(x, jax.memory.Space.Device), tree)
        state = state.replace(opt_state=to_device(state.opt_state), ema=to_device(state.ema))
    key = engine.step_key(state)
    inputs = step_inputs(cfg, batch, key, frozen, frozen_params)
    if cfg.lora.enabled:   # the state holds adapters; the model is the frozen base plus them
        lora_key = jax.random.fold_in(key, 4)
        loss_fn = lambda p, mb: model_loss(cfg, ft.merged_params(cfg, p, frozen_params["base"], lora_key), mb)
    else:
        loss_fn = lambda p, mb: model_loss(cfg, p, mb)
    loss, grads = accumulated_value_and_grad(loss_fn, state.params, inputs, cfg.optim.accumulate)
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt = opt.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    if cfg.ema.enabled:
        d = ema_decay(cfg.ema, state.step + 1)
        new_ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state.ema, new_params)
    else:
        new_ema = new_params
    new_state = guarded_update(state, ok, params=new_params, opt_state=new_opt, ema=new_ema)
    return new_state, {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step), "finite": ok}


def frozen_shardings(cfg, mesh, frozen: FrozenModels):
    """Shardings of the frozen parameters: the same FSDP rules as the trained ones."""
    return tree_shardings(jax.eval_shape(lambda: frozen.params), mesh, cfg.mesh)


def place(host, shardings):
    """Host arrays (the same on every process) as global arrays with `shardings`."""
    host = jax.device_get(host)
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i]), host, shardings)


def place_frozen(cfg, mesh, frozen: FrozenModels):
    """The frozen parameters on the mesh (every process loads them from the same files)."""
    return place(frozen.params, frozen_shardings(cfg, mesh, frozen))


def make_train_step(cfg, mesh, frozen: FrozenModels = NO_FROZEN):
    """`step(state, frozen_params, batch) -> (state, metrics)` jitted with the state's shardings in
    and out (state donated), the frozen parameters sharded as `frozen_shardings`, and the batch
    split over the mesh's batch axes."""
    return engine.cached(_fingerprint(cfg, mesh, "step", frozen.signature()), lambda: engine.jit_step(
        lambda s, f, b: train_step(cfg, frozen, s, f, b), mesh, cfg.mesh, state_shardings(cfg, mesh)[1],
        batch_keys(cfg), (frozen_shardings(cfg, mesh, frozen),)))


def compiled_train_step(cfg, mesh, state, frozen_params, batch, frozen: FrozenModels = NO_FROZEN):
    """The train step compiled ahead of time for these state and batch shapes (`.memory_analysis()`
    works on it); cached like `make_train_step`."""
    key = _fingerprint(cfg, mesh, "compiled", frozen.signature(), engine.batch_shapes(batch))
    return engine.cached(key, lambda: make_train_step(cfg, mesh, frozen).lower(state, frozen_params, batch).compile())


# ---------------------------------------------------------------------------------------------
# Batches, the inference model, export, demos


def prepare_batch(cfg, raw: dict, frozen: FrozenModels = NO_FROZEN) -> dict:
    """A data-pipeline batch -> the numpy arrays the train step takes (`batch_keys`)."""
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


def inference_model(cfg, params, frozen: FrozenModels, defaults=None):
    """A `StableAudio` from trained parameters ({"conditioner", "denoiser"}; a LoRA run's adapters, added
    to the frozen base) and the frozen text encoder and autoencoder; None when the run has no real text
    encoder or no autoencoder. `defaults`: its SamplingDefaults (None: the family's)."""
    if frozen.text_encoder is None or frozen.autoencoder is None:
        return None
    from sa_jax.families.sao import SAOFamily
    from sa_jax.pipeline import SamplingDefaults, StableAudio

    m = cfg.model
    if cfg.lora.enabled:
        params = ft.merged_params(cfg, params, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), frozen.base))
    params = jax.device_get(params)
    if m.family == "sao":
        family = SAOFamily(m.dit, params["denoiser"], m.conditioning, params["conditioner"], frozen.text_encoder,
                           m.compute_dtype)
        defaults = defaults or SamplingDefaults()
    else:
        from sa_jax.families.sa1 import SAMPLING_DEFAULTS, SA1Family

        family = SA1Family(m.unet, params["denoiser"], params["conditioner"], frozen.text_encoder, cfg.text.layer,
                           (m.timing, m.timing), m.compute_dtype)
        defaults = defaults or SamplingDefaults(**SAMPLING_DEFAULTS)
    ratio = frozen.autoencoder.downsampling_ratio
    frames = (cfg.data.latent_window or cfg.data.window // ratio) if cfg.data.kind == "latents" \
        else cfg.data.window // ratio
    return StableAudio(family, frozen.autoencoder, frames * ratio, defaults)


def export_inference(cfg, weights, step: int, path, frozen: FrozenModels = NO_FROZEN, defaults=None) -> Path:
    """Write EMA weights (host arrays) as an sa-jax checkpoint. With a real text encoder and the
    autoencoder it is a whole text-to-audio model (`StableAudio.load(path)` reads it); otherwise the
    conditioner and denoiser alone (config.yaml with the model section, params/). A LoRA run writes
    an adapter folder (sa_jax.checkpoints.lora: `StableAudio.load(base, lora=[path])` reads it)."""
    if cfg.lora.enabled:
        from sa_jax.checkpoints.lora import save_adapter

        return save_adapter(path, ft.adapter_dict(jax.device_get(weights)), ft.adapter_meta(cfg, step))
    model = inference_model(cfg, weights, frozen, defaults)
    if model is not None:
        return model.save(path, overwrite=True)
    from sa_jax.checkpoints import store

    config = {"model_type": "diffusion_denoiser", "family": cfg.model.family, "model": to_dict(cfg.model),
              "step": int(step)}
    return store.save(path, config, jax.device_get(weights), overwrite=True)


def write_demos(cfg, state, frozen: FrozenModels, run_dir: Path, telemetry, defaults=None) -> Path:
    """Demo audio for cfg.demo.prompts from the EMA weights: WAVs in run_dir/demo/<step>/ and TensorBoard."""
    from sa_jax.audio import write_audio

    d = cfg.demo
    model = inference_model(cfg, state.ema, frozen, defaults)
    step = int(state.step)
    audio = model.generate(list(d.prompts), seconds_total=d.seconds_total, steps=d.steps, cfg_scale=d.cfg_scale,
                           sampler=d.sampler, seed=d.seed)
    folder = run_dir / "demo" / f"{step:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    for i, clip in enumerate(audio):
        write_audio(folder / f"{i}.wav", clip, model.sample_rate)
        telemetry.audio(step, f"demo/{i}", clip, model.sample_rate)
    return folder


# ---------------------------------------------------------------------------------------------
# The task


class DiffusionTask(Task):
    keep_best = True

    def __init__(self, cfg):
        cfg, self.init = ft.load_init(cfg)   # init.from: the model section, weights, encoders of that model
        super().__init__(cfg)
        self.demo_every = cfg.demo.every
        self.defaults = self.init.defaults if self.init is not None else None
        if cfg.lora.enabled:
            lora_target_paths(cfg)   # targets that match no kernel: LoraError before the run directory is made

    def check_resume(self, saved_config, where):
        ft.check_same_base(saved_config, self.cfg, where)

    def setup(self, run_dir, mesh, global_bs, print_fn):
        divisor = self.cfg.optim.accumulate * batch_divisor(mesh, self.cfg.mesh)
        if global_bs % divisor:
            raise ConfigError(f"optim.accumulate {self.cfg.optim.accumulate}: the global batch {global_bs} must be "
                              f"a multiple of accumulate x the {batch_divisor(mesh, self.cfg.mesh)} devices of the "
                              f"batch axes ({divisor}), so every microbatch splits evenly over them")
        self.frozen = load_frozen(self.cfg, self.init)
        self.frozen_params = place_frozen(self.cfg, mesh, self.frozen)
        if self.init is not None and self.cfg.lora.enabled:
            self.init.params = None   # the frozen base holds it now
        if self.init is not None:
            print_fn(f"init.from {self.init.path}: content hash {self.init.hash[:16]}..., "
                     + (f"LoRA rank {self.cfg.lora.rank} on {len(lora_target_paths(self.cfg))} kernels"
                        if self.cfg.lora.enabled else "every parameter trained"))
        super().setup(run_dir, mesh, global_bs, print_fn)

    def state_shardings(self, mesh):
        return state_shardings(self.cfg, mesh)

    def create_state(self, mesh):
        state = create_state(self.cfg, mesh, None if self.init is None else self.init.params)
        if self.init is not None:
            self.init.params = None   # on the devices now: the host copy goes
        return state

    def prepare(self, raw):
        return prepare_batch(self.cfg, raw, self.frozen)

    def compile(self, mesh, state, batch):
        self.compiled = compiled_train_step(self.cfg, mesh, state, self.frozen_params, batch, self.frozen)
        return self.compiled

    def step(self, step, state, batch):
        return self.compiled(state, self.frozen_params, batch)

    def report(self, window):
        values = {"loss": mean_finite(window, "loss"), "grad_norm": float(window[-1]["grad_norm"]),
                  "lr": float(window[-1]["lr"])}
        return values, f"loss {values['loss']:.4f}  grad_norm {values['grad_norm']:.3f}  lr {values['lr']:.3e}"

    def demo(self, state, run_dir, telemetry):
        folder = write_demos(self.cfg, state, self.frozen, run_dir, telemetry, self.defaults)
        telemetry.print(f"demo: step {int(state.step)} audio in {folder}")

    def export_weights(self, state):
        return state.ema

    def export(self, weights, step, path):
        return export_inference(self.cfg, weights, step, path, self.frozen, self.defaults)

    def exported(self, path):
        if self.cfg.lora.enabled:
            return f"exported the EMA adapters to {path} (sa-jax sample --lora {path} --model {self.cfg.init_from})"
        return f"exported the EMA weights to {path}"


def plan_inputs(cfg, mesh, global_batch: int):
    """For `sa-jax train --plan`: (the jitted train step, abstract sharded state, frozen parameters and
    batch (jax.ShapeDtypeStruct trees), notes), with no weights or data read and nothing allocated. The
    frozen models' shapes come from their configs (`frozen.plan_frozen`, whose notes say what stood in
    for a missing one); the batch is `global_batch` crops of the run's window."""
    from sa_jax.parallel import batch_sharding
    from sa_jax.training.frozen import plan_frozen

    frozen, notes = plan_frozen(cfg)
    place = lambda tree, shardings: jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)
    state = place(*state_shardings(cfg, mesh))
    frozen_params = place(frozen.params, frozen_shardings(cfg, mesh, frozen))
    b, (n, d) = global_batch, tm.text_shape(cfg.model)
    if cfg.data.kind == "latents":
        # latents carry their VAE's ratio in the data folder, which a plan does not read
        ratio = frozen.autoencoder.downsampling_ratio if frozen.autoencoder else {"sao": 2048, "sa1": 1024}[
            cfg.model.family]
        if not cfg.data.latent_window and frozen.autoencoder is None:
            notes.append(f"latent frames: data.window // {ratio} (the {cfg.model.family} family's VAE ratio)")
        x = {"latents": ((b, cfg.model.latent_dim, cfg.data.latent_window or cfg.data.window // ratio), jnp.float32)}
    else:
        x = {"audio": ((b, cfg.data.channels, cfg.data.window), jnp.float32)}
    encoded = cfg.text.source in ("t5", "clap")   # token ids for the frozen encoder, else ready features
    text = {"text_ids": ((b, n), jnp.int32)} if encoded else {"text": ((b, n, d), jnp.float32)}
    shapes = {**x, **text, "text_mask": ((b, n), jnp.bool_), "seconds_start": ((b,), jnp.int32),
              "seconds_total": ((b,), jnp.int32)}
    bs = batch_sharding(mesh, cfg.mesh)
    batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=bs) for k, (shape, dtype) in shapes.items()}
    return make_train_step(cfg, mesh, frozen), state, frozen_params, batch, notes


def train(cfg, *, stop_at: int | None = None, print_fn=print) -> RunResult:
    """Train until cfg.steps (or `stop_at`, for tests), checkpointing into cfg.checkpoint.dir and
    resuming from it (`sa_jax.training.engine.run`)."""
    return engine.run(DiffusionTask(cfg), stop_at=stop_at, print_fn=print_fn)
