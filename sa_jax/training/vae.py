"""VAE training with adversarial losses, as stable-audio-tools' AutoencoderTrainingWrapper does it.

    from sa_jax.config import load
    from sa_jax.training.vae import VAETrainConfig, train_vae
    result = train_vae(load(VAETrainConfig, "configs/train_vae_tiny.yaml", ["data.path=data/synth"]))

or `sa-jax train --config configs/train_vae_sa1.yaml data.path=... checkpoint.dir=runs/vae` (the
YAML's `trainer: vae` picks this trainer).

Each batch of audio crops is one step, alternating as the reference does: even steps update the
generator (encoder + decoder), odd steps the discriminator. The generator loss is

    mrstft * [SD-STFT(reals, decoded) + (STFT(L) + STFT(R)) / 2]     A-weighted, FFT 2048..32, hop 1/4
    + kl * KL + adversarial * hinge_G + feature_matching * FM + l1 * |reals - decoded|

(adversarial and feature-matching terms from step `losses.disc_start` on); the discriminator's is
the hinge loss on reals against the (fixed) reconstructions. Two AdamW optimisers, betas (0.8, 0.99)
by default; an EMA of the generator (updated on generator steps; with `ema.enabled: false` the demos
and the export use the raw weights). `freeze_encoder: true` is the paper's second stage: the
encoder gets no gradient and no update, the decoder is fine-tuned (resume the stage-1 run directory
with it set, or start from scratch with it).

Run directory (`checkpoint.dir`): config.yaml, checkpoints/<step>/ (Orbax: generator and
discriminator parameters, both optimiser states, EMA, counters, RNG; the grain iterator; the
config), tensorboard/ (losses, learning rates, demo audio), demos/recon_<step>.wav (reals and
reconstructions interleaved, as the reference's demo callback), export/ (the generator as an
sa-jax autoencoder checkpoint: `sa_jax.Autoencoder.load(run_dir / "export")`). A kill -9 run
resumes bitwise equal to an uninterrupted one; SIGTERM saves and stops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sa_jax.data.config import DataConfig
from sa_jax.errors import ConfigError
from sa_jax.models.autoencoder import AudioAutoencoder, AutoencoderConfig, config_from_dict
from sa_jax.models.discriminator import DiscriminatorConfig, MultiScaleSTFTDiscriminator
from sa_jax.nn import DTYPES
from sa_jax.training import engine
from sa_jax.training import losses as L
from sa_jax.training.config import CheckpointConfig, EMAConfig, MeshConfig
from sa_jax.training.engine import RunResult, Task, TrainStateBase, guarded_update, mean_finite
from sa_jax.training.optim import ema_decay

log = logging.getLogger("sa_jax.training.vae")


def _sa1_vae() -> AutoencoderConfig:
    """The paper's VAE (the packaged configs/vae_sa1.yaml): the default model when a config gives none."""
    from sa_jax.config import load_yaml

    return config_from_dict(load_yaml("vae_sa1")["autoencoder"])


@dataclass
class VAELossConfig:
    """Loss weights (stable-audio-tools' `loss_configs`; defaults are its trainer's)."""

    stft: L.STFTLossConfig = field(default_factory=L.STFTLossConfig)
    mrstft: float = 1.0            # sum/difference STFT loss; each of L and R gets mrstft / 2
    channel_terms: bool = True     # the per-channel L/R STFT terms (stereo only)
    kl: float = 1e-6               # SA 1.0 recipe; Stable Audio Open used 1e-4
    adversarial: float = 0.1
    feature_matching: float = 5.0
    l1: float = 0.0                # time-domain L1
    disc_start: int = 0            # the reference's warmup_steps: adversarial terms from this step on

    def validate(self) -> None:
        for name in ("mrstft", "kl", "adversarial", "feature_matching", "l1"):
            if getattr(self, name) < 0:
                raise ConfigError(f"losses: {name} weight must be >= 0, got {getattr(self, name)}")
        if self.disc_start < 0:
            raise ConfigError(f"losses: disc_start must be >= 0, got {self.disc_start}")


@dataclass
class VAEOptimConfig:
    """AdamW for the generator or the discriminator. `exponential`: lr * gamma ** updates (torch's
    ExponentialLR stepped per update, the SA 1.0 recipe); `constant` (the reference trainer's default)."""

    lr: float = 1e-4
    b1: float = 0.8
    b2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 1e-2     # torch AdamW's default, which the reference leaves in place
    schedule: Literal["constant", "exponential"] = "constant"
    gamma: float = 0.999996
    clip_norm: Optional[float] = None

    def validate(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optim: lr must be positive, got {self.lr}")
        if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0):
            raise ConfigError(f"optim: betas must be in [0, 1), got ({self.b1}, {self.b2})")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"optim: gamma must be in (0, 1], got {self.gamma}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ConfigError(f"optim: clip_norm must be positive or null, got {self.clip_norm}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim: weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class VAELogConfig:
    every: int = 10                # console line + TensorBoard scalars every N steps
    memory_analysis: bool = True   # print the compiled generator step's memory analysis at start
    tensorboard: bool = True
    demo_every: int = 2000         # demo reconstructions (EMA weights if on) every N steps; 0: only at the end
    demo_count: int = 4            # clips per demo (from the first batch of the run)

    def validate(self) -> None:
        if self.every <= 0 or self.demo_every < 0 or self.demo_count < 0:
            raise ConfigError("log: every must be positive, demo_every and demo_count >= 0")


@dataclass
class VAETrainConfig:
    trainer: Literal["vae"] = "vae"   # picks this schema in `sa-jax train` (see commands/train.py)
    model: AutoencoderConfig = field(default_factory=_sa1_vae)
    data: DataConfig = field(default_factory=lambda: DataConfig(kind="folder", window=65536, batch_size=8))
    losses: VAELossConfig = field(default_factory=VAELossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    optim: VAEOptimConfig = field(default_factory=VAEOptimConfig)        # the generator's
    disc_optim: VAEOptimConfig = field(default_factory=VAEOptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: VAELogConfig = field(default_factory=VAELogConfig)
    steps: int = 1000
    seed: int = 0
    freeze_encoder: bool = False     # the paper's stage 2: train the decoder only
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    max_bad_steps: int = 10          # stop after this many non-finite steps in a row

    def validate(self) -> None:
        m, d = self.model, self.data
        if self.steps <= 0:
            raise ConfigError(f"steps must be positive, got {self.steps}")
        if self.max_bad_steps <= 0:
            raise ConfigError("max_bad_steps must be positive")
        if d.kind == "latents":
            raise ConfigError("data.kind must be 'folder' or 'tfds' (audio crops) to train a VAE, got 'latents'")
        if d.window % m.downsampling_ratio:
            raise ConfigError(f"data.window {d.window} must be a multiple of the model's downsampling_ratio "
                              f"{m.downsampling_ratio}")
        if d.channels != m.io_channels:
            raise ConfigError(f"data.channels {d.channels} != model.io_channels {m.io_channels}")
        if d.sample_rate != m.sample_rate:
            raise ConfigError(f"data.sample_rate {d.sample_rate} != model.sample_rate {m.sample_rate}")
        if self.discriminator.in_channels != m.io_channels:
            raise ConfigError(f"discriminator.in_channels {self.discriminator.in_channels} must equal "
                              f"model.io_channels {m.io_channels}")
        need = max(max(self.losses.stft.fft_sizes) // 2 + 1, self.discriminator.min_samples())
        if d.window < need:
            raise ConfigError(f"data.window {d.window} is too short for the largest STFT (losses.stft.fft_sizes "
                              f"{list(self.losses.stft.fft_sizes)}, discriminator.n_ffts "
                              f"{list(self.discriminator.n_ffts)}); it needs at least {need} samples")


# ---------------------------------------------------------------------------------------------
# State and steps


@flax.struct.dataclass
class VAETrainState(TrainStateBase):   # step: batches consumed (generator + discriminator steps)
    params: Any              # generator (autoencoder) parameters, float32
    opt_state: Any
    ema: Any                 # EMA of the generator (a copy of params when EMA is off)
    disc_params: Any
    disc_opt_state: Any
    g_steps: jax.Array       # int32: generator updates attempted
    d_steps: jax.Array       # int32: discriminator updates attempted


def _modules(cfg):
    dtype = DTYPES[cfg.compute_dtype]
    return AudioAutoencoder(cfg.model, dtype=dtype), MultiScaleSTFTDiscriminator(cfg.discriminator, dtype=dtype)


def make_optimizer(c: VAEOptimConfig):
    """(AdamW with optional clipping, schedule(updates) -> lr)."""
    if c.schedule == "exponential":
        schedule = lambda n: c.lr * jnp.power(jnp.float32(c.gamma), jnp.asarray(n, jnp.float32))
    else:
        schedule = lambda n: jnp.asarray(c.lr, jnp.float32)
    adamw = optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay)
    return (optax.chain(optax.clip_by_global_norm(c.clip_norm), adamw) if c.clip_norm else adamw), schedule


def _init_state(cfg, key_data):
    k_g, k_d, k_train = jax.random.split(jax.random.wrap_key_data(key_data), 3)
    gen, disc = _modules(cfg)
    n = max(cfg.model.downsampling_ratio, cfg.discriminator.min_samples())
    n = -(-n // cfg.model.downsampling_ratio) * cfg.model.downsampling_ratio
    x = jnp.zeros((1, n, cfg.model.io_channels), jnp.float32)
    params = gen.init(k_g, x, jax.random.key(0))["params"]
    disc_params = disc.init(k_d, x)["params"]
    g_opt, _ = make_optimizer(cfg.optim)
    d_opt, _ = make_optimizer(cfg.disc_optim)
    zero = jnp.zeros((), jnp.int32)
    return VAETrainState(params=params, opt_state=g_opt.init(params), ema=params, disc_params=disc_params,
                         disc_opt_state=d_opt.init(disc_params), g_steps=zero, d_steps=zero,
                         **engine.counters(k_train))


def state_shardings(cfg, mesh):
    return engine.abstract_state(lambda k: _init_state(cfg, k), cfg.seed, mesh, cfg.mesh)


def _fingerprint(cfg, mesh, *extra):
    return ("vae", repr((cfg.model, cfg.losses, cfg.discriminator, cfg.optim, cfg.disc_optim, cfg.ema, cfg.mesh,
                         cfg.freeze_encoder, cfg.compute_dtype)), mesh, *extra)


def create_state(cfg, mesh) -> VAETrainState:
    return engine.init_state(lambda k: _init_state(cfg, k), cfg.seed, state_shardings(cfg, mesh)[1],
                             _fingerprint(cfg, mesh, "init"))


def _reconstruct(cfg, gen, params, audio, key, frozen_encoder: bool):
    """(decoded, latents, kl): posterior sample -> decoder, trimmed to the input length."""
    enc = {"params": params}
    mean, std = gen.apply(enc, audio, method=gen.encode_stats)
    if frozen_encoder:
        mean, std = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(std)
    z = mean + std * jax.random.normal(key, mean.shape, mean.dtype)
    decoded = gen.apply(enc, z, method=gen.decode)[:, :audio.shape[1]]
    return decoded, z, L.kl_loss(mean, std)


def generator_step(cfg, state: VAETrainState, batch: dict):
    gen, disc = _modules(cfg)
    opt, schedule = make_optimizer(cfg.optim)
    w = cfg.losses
    audio = batch["audio"]
    key = engine.step_key(state)
    adv_on = (state.step >= w.disc_start).astype(jnp.float32)

    def loss_fn(params):
        decoded, z, kl = _reconstruct(cfg, gen, params, audio, key, cfg.freeze_encoder)
        rec = L.reconstruction_losses(audio, decoded, w.stft, cfg.model.sample_rate)
        terms = {"mrstft": w.mrstft * rec["mrstft"], "kl": w.kl * kl}
        if w.channel_terms and "stft_left" in rec:
            terms["stft_left"] = w.mrstft * rec["stft_left"]
            terms["stft_right"] = w.mrstft * rec["stft_right"]
        if w.l1:
            terms["l1"] = w.l1 * jnp.mean(jnp.abs(audio - decoded))
        if w.adversarial or w.feature_matching:
            dp = {"params": state.disc_params}
            _, adv, fm = L.discriminator_losses(disc.apply(dp, audio), disc.apply(dp, decoded),
                                                cfg.discriminator.normalize_losses)
            terms["adversarial"] = adv_on * w.adversarial * adv
            terms["feature_matching"] = adv_on * w.feature_matching * fm
        total = sum(terms.values())
        return total, (terms, jnp.std(z))

    (loss, (terms, latent_std)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt = opt.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    if cfg.freeze_encoder:   # no update at all (AdamW's weight decay would still move it)
        new_params = {**new_params, "encoder": state.params["encoder"]}
    g_steps = state.g_steps + 1
    if cfg.ema.enabled:
        d = ema_decay(cfg.ema, g_steps)
        new_ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state.ema, new_params)
    else:
        new_ema = new_params
    new_state = guarded_update(state, ok, params=new_params, opt_state=new_opt, ema=new_ema).replace(g_steps=g_steps)
    metrics = {"loss": loss, **terms, "grad_norm": grad_norm, "lr": schedule(state.g_steps),
               "latent_std": latent_std, "finite": ok}
    return new_state, metrics


def discriminator_step(cfg, state: VAETrainState, batch: dict):
    gen, disc = _modules(cfg)
    opt, schedule = make_optimizer(cfg.disc_optim)
    audio = batch["audio"]
    decoded, _, _ = _reconstruct(cfg, gen, state.params, audio, engine.step_key(state), True)
    decoded = jax.lax.stop_gradient(decoded)

    def loss_fn(dparams):
        dp = {"params": dparams}
        dis, _, _ = L.discriminator_losses(disc.apply(dp, audio), disc.apply(dp, decoded))
        return dis

    loss, grads = jax.value_and_grad(loss_fn)(state.disc_params)
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt = opt.update(grads, state.disc_opt_state, state.disc_params)
    new_dp = optax.apply_updates(state.disc_params, updates)
    new_state = guarded_update(state, ok, disc_params=new_dp, disc_opt_state=new_opt).replace(
        d_steps=state.d_steps + 1)
    return new_state, {"disc_loss": loss, "disc_grad_norm": grad_norm, "disc_lr": schedule(state.d_steps),
                       "finite": ok}


def uses_discriminator(cfg) -> bool:
    return bool(cfg.losses.adversarial or cfg.losses.feature_matching)


def is_discriminator_step(cfg, step: int) -> bool:
    """The reference's schedule: odd steps train the discriminator (when there is one)."""
    return uses_discriminator(cfg) and step % 2 == 1


def compiled_steps(cfg, mesh, state, batch):
    """(generator step, discriminator step or None), each jitted with the state's shardings (donated)
    and compiled ahead of time for these shapes; cached per config, mesh and shapes."""
    def build():
        _, shard = state_shardings(cfg, mesh)
        out = []
        for fn in (generator_step, discriminator_step):
            jitted = engine.jit_step(lambda s, b, fn=fn: fn(cfg, s, b), mesh, cfg.mesh, shard, batch)
            out.append(jitted.lower(state, batch).compile() if fn is generator_step or uses_discriminator(cfg)
                       else None)
        return tuple(out)
    return engine.cached(_fingerprint(cfg, mesh, engine.batch_shapes(batch)), build)


# ---------------------------------------------------------------------------------------------
# Evaluation, demos, export


def _posterior_mean_fn(cfg, what: str, shape, finish):
    """jit(params, x -> finish(x, reconstruction from the posterior mean)), cached per model and shape."""
    def build():
        gen, _ = _modules(cfg)

        def fn(p, x):
            mean, _ = gen.apply({"params": p}, x, method=gen.encode_stats)
            return finish(x, gen.apply({"params": p}, mean, method=gen.decode)[:, :x.shape[1]])
        return jax.jit(fn)
    return engine.cached(("vae", what, repr((cfg.model, cfg.compute_dtype)), shape), build)


def _samples_last(audio: np.ndarray):
    return jnp.asarray(np.swapaxes(np.asarray(audio, np.float32), 1, 2))


def stft_distance(cfg, params, audio: np.ndarray, stft: L.STFTLossConfig | None = None) -> float:
    """The multi-resolution STFT distance of reconstructions (posterior mean) of `audio`
    (batch, channels, samples): the sum/difference A-weighted loss (`losses.stft`, the reference's
    resolutions by default), with the reals as input and reconstructions as target, as in training."""
    stft = stft or cfg.losses.stft
    fn = _posterior_mean_fn(cfg, ("eval", repr(stft)), audio.shape,
                            lambda x, y: L.reconstruction_losses(x, y, stft, cfg.model.sample_rate)["mrstft"])
    return float(fn(params, _samples_last(audio)))


def reconstruct(cfg, params, audio: np.ndarray) -> np.ndarray:
    """Posterior-mean reconstructions of (batch, channels, samples) audio, same layout."""
    fn = _posterior_mean_fn(cfg, "recon", audio.shape, lambda x, y: y)
    return np.swapaxes(np.asarray(fn(params, _samples_last(audio))), 1, 2)


def _weights(cfg, state):
    """The generator weights to demo and export: the EMA when it is on, else the raw weights (a run
    resumed with the EMA turned off still holds the old EMA until its next generator step)."""
    return state.ema if cfg.ema.enabled else state.params


def export_autoencoder(cfg, state, path) -> Path:
    """The generator (its EMA when `ema.enabled`, else the raw weights) as an sa-jax autoencoder
    checkpoint (`sa_jax.Autoencoder.load(path)`), by the engine's export rule."""
    return engine.export(VAETask(cfg), state, Path(path))


# ---------------------------------------------------------------------------------------------
# The task

_G_KEYS = ("loss", "mrstft", "stft_left", "stft_right", "kl", "adversarial", "feature_matching", "l1")


class VAETask(Task):

    def __init__(self, cfg: VAETrainConfig):
        super().__init__(cfg)
        self.tensorboard = cfg.log.tensorboard
        self.demo_every = cfg.log.demo_every if cfg.log.demo_count else 0
        self.demo_at_end = bool(cfg.log.demo_count)

    def state_shardings(self, mesh):
        return state_shardings(self.cfg, mesh)

    def create_state(self, mesh):
        return create_state(self.cfg, mesh)

    def describe(self, state, mesh, global_bs):
        count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))
        return (f"VAE {count(state.params):,} params, discriminator {count(state.disc_params):,}; "
                + super().describe(state, mesh, global_bs) + ("; encoder frozen" if self.cfg.freeze_encoder else ""))

    def prepare(self, raw):
        return {"audio": np.swapaxes(np.asarray(raw["audio"], np.float32), 1, 2)}

    def first_batch(self, batch):
        # the demo clips: the run's first clips, (batch, channels, samples)
        self.demo_clips = np.swapaxes(np.asarray(jax.device_get(batch["audio"])[:self.cfg.log.demo_count]), 1, 2)

    def compile(self, mesh, state, batch):
        self.g_step, self.d_step = compiled_steps(self.cfg, mesh, state, batch)
        return self.g_step

    def step(self, step, state, batch):
        return (self.d_step if is_discriminator_step(self.cfg, step) else self.g_step)(state, batch)

    def report(self, window):
        g = [m for m in window if "loss" in m]
        d = [m for m in window if "disc_loss" in m]
        values = {f"train/{k}": mean_finite(g, k) for k in _G_KEYS if g and k in g[0]}
        if g:
            values.update({"train/gen_lr": float(g[-1]["lr"]), "train/latent_std": mean_finite(g, "latent_std"),
                           "train/grad_norm": float(g[-1]["grad_norm"])})
        if d:
            values.update({"train/disc_loss": mean_finite(d, "disc_loss"), "train/disc_lr": float(d[-1]["disc_lr"])})
        v = lambda k: values.get(f"train/{k}", float("nan"))
        return values, (f"loss {v('loss'):.4f}  mrstft {v('mrstft'):.4f}  kl {v('kl'):.3e}  "
                        f"adv {v('adversarial'):.4f}  fm {v('feature_matching'):.4f}  disc {v('disc_loss'):.4f}")

    def demo(self, state, run_dir, telemetry):
        """Reconstruct the demo clips (EMA weights when on); write demos/recon_<step>.wav (reals and
        reconstructions interleaved, one after another), log them and their STFT distance."""
        from sa_jax.audio import write_audio

        cfg, step, clips = self.cfg, int(state.step), self.demo_clips
        weights = jax.device_get(_weights(cfg, state))
        fakes = reconstruct(cfg, weights, clips)
        pieces = [a for pair in zip(clips, fakes) for a in pair]
        write_audio(run_dir / "demos" / f"recon_{step:08d}.wav", np.clip(np.concatenate(pieces, axis=-1), -1, 1),
                    cfg.model.sample_rate)
        for i, fake in enumerate(fakes):
            telemetry.audio(step, f"demo/recon_{i}", fake, cfg.model.sample_rate)
        dist = stft_distance(cfg, weights, clips)
        telemetry.scalars(step, {"demo/stft_distance": dist}, line=f"step {step}: demo STFT distance {dist:.4f}")

    def export_weights(self, state):
        return _weights(self.cfg, state)

    def export(self, weights, step, path):
        from sa_jax.autoencoder import Autoencoder

        return Autoencoder(self.cfg.model, weights).save(path, overwrite=True)

    def exported(self, path):
        return f"exported the autoencoder ({'EMA' if self.cfg.ema.enabled else 'raw'} weights) to {path}"


def train_vae(cfg: VAETrainConfig, *, stop_at: int | None = None, print_fn=print) -> RunResult:
    """Train until cfg.steps (or `stop_at`, for tests), checkpointing into cfg.checkpoint.dir and
    resuming from it (`sa_jax.training.engine.run`); at the end export to checkpoint.dir/export."""
    return engine.run(VAETask(cfg), stop_at=stop_at, print_fn=print_fn)
