"""Teach a VAE's decoder to play silence for silence latents (the small recipe's `vae_quiet` stage).

Why: the small VAE, trained as the paper does, decodes the silence latent to a steady hum at about
-46 dBFS (harmonics of 43 Hz, its 1024-sample stride) and the window's last frame to about -37 dBFS.
A U-Net that correctly stops at seconds_total then still plays that hum within 40 dB of its music, so
the timing metric (sa_jax.eval.timing) sees no end. The paper's second VAE stage (the decoder alone,
same losses) made the silence louder, not quieter, in the budget of a CPU run (bench/RESULTS.md).

What: only the decoder changes, so the encoder, the latents of an encoded corpus, the silence centring
and the latent scale all stay valid (a U-Net trained on those latents keeps working). The autoencoder
must be silence-centred (`sa_jax.commands.recipe.centre_on_silence`): zero latents are silence. Each
batch holds latent crops of the encoded corpus:

- half of them the end of a clip followed by silence latents (what a timing-conditioned model
  generates), a quarter music only, a quarter silence only;
- silence latents get the small noise a denoiser leaves behind (a per-channel offset and per-frame
  noise of random size), or none; the last frame of a crop that ends in silence gets more (`edge_noise`):
  a denoiser is least accurate at the window's edge (the small U-Net's last frame: RMS 0.24, against
  0.03 over the rest of its silence), and the decoder, which has no right context there, would click;
- loss = music_weight * L1(decoder, frozen decoder) / mean |frozen decoder| on the samples of music
  (distillation: the decoder keeps playing what it played, at any level)
  + spectral_weight * the L1 of log STFT magnitudes (the VAE's resolutions) between the two decoders'
  music samples (the rest zeroed in both): L1 on the waveform is ruled by the loud low frequencies, and a
  decoder pushed to silence can drift in the quiet high bands that make the timbre (#22's study: the
  instrument match fell from 0.56 to 0.34 with L1 alone)
  + silence_weight * the mean power in dB of the samples after a clip's end
  (past a `margin` that neither term covers, where a note's release may still sound). The power is
  taken in dB so that it pushes at -60 dB as hard as at -40.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sa_jax.errors import ConfigError
from sa_jax.models.autoencoder import AutoencoderConfig
from sa_jax.training import engine
from sa_jax.training.config import CheckpointConfig, LogConfig, MeshConfig
from sa_jax.training.engine import RunResult, Task, TrainStateBase, guarded_update
from sa_jax.training.losses import REFERENCE_FFT_SIZES, STFTLossConfig, multi_resolution_stft_loss


@dataclasses.dataclass
class QuietConfig:
    steps: int = 600
    lr: float = 1e-4
    batch_size: int = 4
    frames: int = 48                 # latent frames per crop
    music_weight: float = 5.0
    spectral_weight: float = 0.0     # 0: no spectral term (the shipped model's quiet stage)
    silence_weight: float = 0.2
    margin: int = 2048               # samples after a clip's end that no loss term covers
    noise: float = 0.06              # largest std of the per-frame noise on silence latents
    offset: float = 0.04             # std of the per-channel offset on silence latents
    edge_noise: float = 0.3          # largest std of the noise on the last frame of a crop that ends in silence
    seed: int = 0
    checkpoint_every: int = 100      # checkpoint the run (and its batch RNG) every N steps
    log_every: int = 50

    def validate(self) -> None:
        for name in ("steps", "batch_size", "frames", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"quiet: {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or min(self.music_weight, self.spectral_weight, self.silence_weight, self.margin,
                                  self.noise, self.offset, self.edge_noise) < 0:
            raise ConfigError("quiet: lr must be positive; the weights, margin, noise, offset and edge_noise >= 0")


@dataclasses.dataclass
class QuietData:
    batch_size: int


@dataclasses.dataclass
class QuietRunConfig:
    """What the engine runs: the stage's settings, the autoencoder's config (a resumed run must have the
    same), and the engine's sections."""

    quiet: QuietConfig
    model: AutoencoderConfig
    data: QuietData
    checkpoint: CheckpointConfig
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    steps: int = 600
    seed: int = 0
    max_bad_steps: int = 10

    @classmethod
    def of(cls, ae, c: QuietConfig, run_dir) -> "QuietRunConfig":
        return cls(quiet=c, model=ae.config, data=QuietData(c.batch_size), steps=c.steps, seed=c.seed,
                   checkpoint=CheckpointConfig(dir=str(run_dir), every=c.checkpoint_every, keep=1, async_save=False,
                                               keep_best=False),
                   log=LogConfig(every=c.log_every, memory_analysis=False))


def silence_levels(ae, seconds: float = 4.0) -> tuple[float, float]:
    """(loudest 50 ms frame away from the edges, the last frame) in dBFS of decode(zero latents)."""
    from sa_jax.eval.timing import frame_levels_db

    frames = int(np.ceil(seconds * ae.sample_rate / ae.downsampling_ratio))
    y = ae.decode(np.zeros((1, ae.latent_dim, frames), np.float32), chunk_frames=None)[0]
    db = frame_levels_db(y, ae.sample_rate)
    return float(db[2:-2].max()), float(db[-1])


class _Crops:
    """Random batches {z: latents (B, frames, D) scaled for the decoder, music mask, silence mask}: an
    iterator whose state (the RNG's) the engine checkpoints beside the train state."""

    def __init__(self, latents_dir, ae, c: QuietConfig):
        from sa_jax.data.latents import open_latents

        entries, _, info = open_latents(latents_dir)
        if int(info["latent_dim"]) != ae.latent_dim or int(info["downsampling_ratio"]) != ae.downsampling_ratio:
            raise ValueError(f"{latents_dir} holds latents of dim {info['latent_dim']} at "
                             f"{info['downsampling_ratio']}x; the autoencoder has {ae.latent_dim} at "
                             f"{ae.downsampling_ratio}x")
        self.clips = [(np.load(e["path"]), int(e["samples"])) for e in entries]
        self.c, self.r, self.d, self.scale = c, ae.downsampling_ratio, ae.latent_dim, ae.config.scale
        self.rng = np.random.default_rng(c.seed)

    def _silence(self, frames: int) -> np.ndarray:
        rng, c = self.rng, self.c
        if rng.random() < 0.25:
            return np.zeros((self.d, frames), np.float32)
        return (rng.normal(0, rng.uniform(0, c.noise), (self.d, frames))
                + rng.normal(0, c.offset, (self.d, 1))).astype(np.float32)

    def batch(self):
        c, r, rng, F = self.c, self.r, self.rng, self.c.frames
        z = np.zeros((c.batch_size, self.d, F), np.float32)
        music = np.zeros((c.batch_size, F * r), np.float32)
        silence = np.zeros_like(music)
        for b in range(c.batch_size):
            zc, n = self.clips[int(rng.integers(len(self.clips)))]
            frames = zc.shape[1]
            kind = rng.random()
            if kind < 0.5:      # a clip's last k frames, then silence
                k = int(rng.integers(1, min(F, frames) + 1))
                z[b, :, :k] = zc[:, frames - k:]
                z[b, :, k:] = self._silence(F - k)
                end = k * r - (frames * r - n)     # the clip's end inside the crop (its last frame holds >= 1 sample)
                music[b, :end] = 1
                silence[b, end + c.margin:] = 1
            elif kind < 0.75:   # music only (a clip shorter than the crop ends in silence)
                o = int(rng.integers(0, max(frames - F, 0) + 1))
                piece = zc[:, o:o + F]
                z[b, :, :piece.shape[1]] = piece
                end = min(piece.shape[1] * r, n - o * r)
                music[b, :end] = 1
                if piece.shape[1] < F:
                    z[b, :, piece.shape[1]:] = self._silence(F - piece.shape[1])
                    silence[b, end + c.margin:] = 1
            else:
                z[b] = self._silence(F)
                silence[b] = 1
            if silence[b, -1]:
                z[b, :, -1] += rng.normal(0, rng.uniform(0, c.edge_noise), self.d)
        return (z * self.scale).transpose(0, 2, 1), music, silence

    # the iterator protocol, and the state grain's checkpoint handler saves and restores
    def __iter__(self):
        return self

    def __next__(self) -> dict:
        z, music, silence = self.batch()
        return {"z": z, "music": music, "silence": silence}

    def get_state(self) -> bytes:
        return json.dumps(self.rng.bit_generator.state).encode()

    def set_state(self, state: bytes) -> None:
        self.rng.bit_generator.state = json.loads(state)

    def start_prefetch(self) -> None:
        pass


@flax.struct.dataclass
class QuietState(TrainStateBase):
    decoder: Any
    opt_state: Any


class QuietTask(Task):
    """The decoder fine-tune on the engine: the state is the decoder and its Adam state; the frozen
    teacher (the whole autoencoder) is the step's second argument."""


    def __init__(self, ae, latents_dir, c: QuietConfig, run_dir):
        super().__init__(QuietRunConfig.of(ae, c, run_dir))
        self.ae, self.latents_dir, self.c = ae, latents_dir, c
        self.tx = optax.adam(c.lr)
        self.last = {}
        # the VAE's resolutions that fit in a crop (a tiny test VAE's crops are shorter than 2048 samples);
        # log magnitudes only: spectral convergence's sqrt has no gradient where both signals are silent
        sizes = tuple(n for n in REFERENCE_FFT_SIZES if n <= c.frames * ae.downsampling_ratio)
        self.stft = STFTLossConfig(fft_sizes=sizes, hop_sizes=tuple(n // 4 for n in sizes), win_lengths=sizes,
                                   w_sc=0.0)

    def setup(self, run_dir, mesh, global_bs, print_fn):
        self.iterator = _Crops(self.latents_dir, self.ae, self.c)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self.teacher_sharding = jax.tree.map(lambda _: replicated, self.ae.params)
        self.teacher = jax.device_put(self.ae.params, self.teacher_sharding)

    def _init(self, key_data):
        decoder = self.ae.params["decoder"]
        return QuietState(decoder=decoder, opt_state=self.tx.init(decoder),
                          **engine.counters(jax.random.wrap_key_data(key_data)))

    def state_shardings(self, mesh):
        return engine.abstract_state(self._init, self.c.seed, mesh, self.cfg.mesh)

    def create_state(self, mesh):
        return jax.jit(self._init, out_shardings=self.state_shardings(mesh)[1])(engine.seed_key_data(self.c.seed))

    def prepare(self, raw):
        return raw

    def _step(self, state, teacher, batch):
        c, module = self.c, self.ae.module
        decode = lambda decoder, z: module.apply({"params": {**teacher, "decoder": decoder}}, z,
                                                 method=module.decode)
        z, music, silence = batch["z"], batch["music"], batch["silence"]
        target = decode(teacher["decoder"], z)

        def loss_fn(decoder):
            y = decode(decoder, z)
            count = jnp.maximum(music.sum(), 1)
            l1 = (jnp.abs(y - target).mean(-1) * music).sum() / count
            level = (jnp.abs(target).mean(-1) * music).sum() / count
            power = ((y ** 2).mean(-1) * silence).sum() / jnp.maximum(silence.sum(), 1)
            silence_db = 10 * jnp.log10(power + 1e-10)
            loss = c.music_weight * l1 / (level + 1e-4) + c.silence_weight * silence_db
            if c.spectral_weight:
                loss = loss + c.spectral_weight * multi_resolution_stft_loss(
                    y * music[..., None], target * music[..., None], self.stft, sample_rate=self.ae.sample_rate)
            return loss, (l1, silence_db)

        (loss, (l1, silence_db)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.decoder)
        ok = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
        updates, opt_state = self.tx.update(grads, state.opt_state, state.decoder)
        new = guarded_update(state, ok, decoder=optax.apply_updates(state.decoder, updates), opt_state=opt_state)
        return new, {"loss": loss, "music_l1": l1, "silence_db": silence_db, "finite": ok}

    def compile(self, mesh, state, batch):
        self.compiled = engine.jit_step(self._step, mesh, self.cfg.mesh, self.state_shardings(mesh)[1], batch,
                                        (self.teacher_sharding,)).lower(state, self.teacher, batch).compile()
        return self.compiled

    def step(self, step, state, batch):
        return self.compiled(state, self.teacher, batch)

    def report(self, window):
        self.last = {"music_l1": float(window[-1]["music_l1"]), "silence_db": float(window[-1]["silence_db"])}
        return self.last, f"music L1 {self.last['music_l1']:.4f}  silence {self.last['silence_db']:.1f} dB"

    def autoencoder(self, decoder):
        from sa_jax.autoencoder import Autoencoder

        return Autoencoder(self.ae.config, {**self.ae.params, "decoder": decoder})

    def export_weights(self, state):
        return state.decoder

    def export(self, weights, step, path):
        return self.autoencoder(weights).save(path, overwrite=True)

    def exported(self, path):
        return f"[quiet] exported the autoencoder with the fine-tuned decoder to {path}"


def train_quiet(ae, latents_dir: str | Path, config: QuietConfig | None = None, run_dir=None, *,
                stop_at: int | None = None, print_fn=print) -> tuple[RunResult, Any, dict]:
    """Fine-tune `ae`'s decoder (a silence-centred Autoencoder) as the module docstring says on the
    latents folder `latents_dir` (written by `encode_dataset` with this autoencoder), on the training
    engine: checkpoints in `run_dir` (None: a temporary folder, no resume), export in run_dir/export.
    Returns (the engine's RunResult, the autoencoder with the fine-tuned decoder, {"before": silence_levels,
    "after": silence_levels, "music_l1": the last logged L1})."""
    c = config or QuietConfig()
    c.validate()
    if run_dir is None:
        with tempfile.TemporaryDirectory(prefix="sa_jax_quiet_") as tmp:
            result, out, stats = train_quiet(ae, latents_dir, c, tmp, stop_at=stop_at, print_fn=print_fn)
        return dataclasses.replace(result, export_path=None), out, stats   # the folder is gone
    task = QuietTask(ae, latents_dir, c, run_dir)
    before = silence_levels(ae)
    result = engine.run(task, stop_at=stop_at, print_fn=print_fn)
    out = task.autoencoder(jax.device_get(result.state.decoder))
    return result, out, {"before": before, "after": silence_levels(out), "music_l1": task.last.get("music_l1")}


def quiet_decoder(ae, latents_dir: str | Path, config: QuietConfig | None = None, log=print, run_dir=None):
    """`train_quiet` to the end: (autoencoder with the fine-tuned decoder, its silence stats)."""
    _, out, stats = train_quiet(ae, latents_dir, config, run_dir, print_fn=log)
    return out, stats
