"""The train state and the jitted diffusion train step (sharded, donated state).

    state = create_state(cfg, mesh)                   # params, optimiser state, EMA, step, key (sharded)
    step_fn = make_train_step(cfg, mesh, frozen)      # jit with in/out shardings, state donated
    state, metrics = step_fn(state, frozen_params, batch)   # batch: global arrays (see `batch_keys`)

`frozen` (sa_jax.training.frozen.FrozenModels; None: none) holds the frozen text encoder and
autoencoder; their parameters are the step's second argument. One step: encode audio to latents
and token ids to text features when the batch holds those, draw t, noise and CFG-dropout
decisions from fold_in(state.key, state.step) (so a resumed run draws the same numbers), mix x_t
and the objective's target, MSE of the network output,
gradients, AdamW (with optional clipping). A non-finite loss or gradient norm leaves params,
optimiser state and EMA untouched, still advances the step, and counts it in `bad_steps` (total)
and `bad_in_a_row`.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from sa_jax.diffusion import noised_and_target, sample_timesteps
from sa_jax.parallel import batch_sharding, tree_shardings
from sa_jax.training import model as tm
from sa_jax.training.frozen import FrozenModels
from sa_jax.training.optim import ema_decay, make_optimizer

NO_FROZEN = FrozenModels()


def batch_keys(cfg) -> tuple[str, ...]:
    """The arrays of a step's batch: latents (pre-encoded) or audio (encoded in the step), token ids
    (a frozen encoder runs in the step) or ready text features, the masks and timing."""
    x = "latents" if cfg.data.kind == "latents" else "audio"
    text = "text_ids" if cfg.text.source in ("t5", "clap") else "text"
    return (x, text, "text_mask", "seconds_start", "seconds_total")


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32: updates attempted so far
    params: Any              # float32
    opt_state: Any
    ema: Any                 # float32 EMA of params (a copy of params when EMA is off)
    key: jax.Array           # base PRNG key (raw uint32 data, so Orbax can store it)
    bad_steps: jax.Array     # int32: non-finite steps skipped in total
    bad_in_a_row: jax.Array  # int32


def _init_state(cfg, key_data):
    key = jax.random.wrap_key_data(key_data)
    k_init, k_train = jax.random.split(key)
    params = tm.init_params(cfg.model, k_init)
    opt, _ = make_optimizer(cfg.optim, cfg.steps)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=opt.init(params), ema=params,
                      key=jax.random.key_data(k_train), bad_steps=zero, bad_in_a_row=zero)


def state_shardings(cfg, mesh):
    """(abstract state, its NamedShardings by the config's FSDP rules)."""
    key_data = jax.random.key_data(jax.random.key(cfg.seed))
    abstract = jax.eval_shape(lambda k: _init_state(cfg, k), key_data)
    return abstract, tree_shardings(abstract, mesh, cfg.mesh)


# Jitted and compiled functions per (the config sections they depend on, mesh, shapes): a second
# run with the same model in one process (a resume, a test) does not compile again.
_CACHE: dict = {}


def _fingerprint(cfg, mesh, *extra):
    return (repr((cfg.model, cfg.diffusion, cfg.optim, cfg.ema, cfg.mesh, cfg.steps, batch_keys(cfg))), mesh, *extra)


def create_state(cfg, mesh) -> TrainState:
    """A fresh state from cfg.seed, initialised directly into its shardings (no full copy on one device)."""
    key = _fingerprint(cfg, mesh, "init")
    if key not in _CACHE:
        _, shardings = state_shardings(cfg, mesh)
        _CACHE[key] = jax.jit(lambda k: _init_state(cfg, k), out_shardings=shardings)
    return _CACHE[key](jax.random.key_data(jax.random.key(cfg.seed)))


def loss_and_aux(cfg, params, batch, key, frozen: FrozenModels = NO_FROZEN, frozen_params=None):
    k_t, k_n, k_d = jax.random.split(key, 3)
    if "audio" in batch:
        x0 = frozen.encode_audio(frozen_params["vae"], batch["audio"], jax.random.fold_in(key, 3))
    else:
        x0 = batch["latents"].astype(jnp.float32)
    if "text_ids" in batch:
        text = frozen.encode_text(frozen_params["text"], batch["text_ids"], batch["text_mask"])
    else:
        text = batch["text"]
    t = sample_timesteps(k_t, x0.shape[0], cfg.diffusion.timesteps)
    noise = jax.random.normal(k_n, x0.shape, jnp.float32)
    x_t, target = noised_and_target(cfg.diffusion.objective, x0, noise, t)
    out = tm.predict(cfg.model, params, x_t, t, text, batch["text_mask"], batch["seconds_start"],
                     batch["seconds_total"], k_d, cfg.diffusion.cfg_dropout)
    return jnp.mean(jnp.square(out.astype(jnp.float32) - target))


def train_step(cfg, frozen: FrozenModels, state: TrainState, frozen_params, batch: dict) -> tuple[TrainState, dict]:
    opt, schedule = make_optimizer(cfg.optim, cfg.steps)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    loss, grads = jax.value_and_grad(lambda p: loss_and_aux(cfg, p, batch, key, frozen, frozen_params))(state.params)
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt = opt.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    if cfg.ema.enabled:
        d = ema_decay(cfg.ema, step)
        new_ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state.ema, new_params)
    else:
        new_ema = new_params
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    bad = (~ok).astype(jnp.int32)
    new_state = state.replace(
        step=step, params=keep(new_params, state.params), opt_state=keep(new_opt, state.opt_state),
        ema=keep(new_ema, state.ema), bad_steps=state.bad_steps + bad,
        bad_in_a_row=jnp.where(ok, 0, state.bad_in_a_row + 1))
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step), "finite": ok}
    return new_state, metrics


def frozen_shardings(cfg, mesh, frozen: FrozenModels):
    """Shardings of the frozen parameters: the same FSDP rules as the trained ones."""
    return tree_shardings(jax.eval_shape(lambda: frozen.params), mesh, cfg.mesh)


def place_frozen(cfg, mesh, frozen: FrozenModels):
    """The frozen parameters on the mesh (every process loads them from the same files)."""
    shardings = frozen_shardings(cfg, mesh, frozen)
    host = jax.device_get(frozen.params)
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i]), host, shardings)


def make_train_step(cfg, mesh, frozen: FrozenModels = NO_FROZEN):
    """`step(state, frozen_params, batch) -> (state, metrics)` jitted with the state's shardings in
    and out (state donated), the frozen parameters sharded as `frozen_shardings`, and the batch
    split over the mesh's batch axes."""
    key = _fingerprint(cfg, mesh, "step", frozen.signature())
    if key not in _CACHE:
        _, state_shard = state_shardings(cfg, mesh)
        bs = batch_sharding(mesh, cfg.mesh)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        _CACHE[key] = jax.jit(lambda s, f, b: train_step(cfg, frozen, s, f, b),
                              in_shardings=(state_shard, frozen_shardings(cfg, mesh, frozen),
                                            {k: bs for k in batch_keys(cfg)}),
                              out_shardings=(state_shard, replicated), donate_argnums=0)
    return _CACHE[key]


def compiled_train_step(cfg, mesh, state, frozen_params, batch, frozen: FrozenModels = NO_FROZEN):
    """The train step compiled ahead of time for these state and batch shapes (`.memory_analysis()`
    works on it); cached like `make_train_step`."""
    shapes = tuple((k, v.shape, str(v.dtype)) for k, v in sorted(batch.items()))
    key = _fingerprint(cfg, mesh, "compiled", frozen.signature(), shapes)
    if key not in _CACHE:
        _CACHE[key] = make_train_step(cfg, mesh, frozen).lower(state, frozen_params, batch).compile()
    return _CACHE[key]
