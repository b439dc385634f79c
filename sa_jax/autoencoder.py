"""`Autoencoder`: the public API around the Flax VAE modules.

    ae = Autoencoder.load(path)   # sa-jax checkpoint dir, stable-audio-tools file/dir, diffusers folder
    z = ae.encode(audio)          # (batch, channels, samples) -> (batch, latent_dim, frames), posterior mean
    y = ae.decode(z)              # (batch, latent_dim, frames) -> (batch, channels, frames x ratio)

Arrays at the API are channels-first NumPy (as in the reference); inside they are channels-last.
Long inputs are processed in overlapping chunks of a fixed size, so memory stays bounded and the
jitted functions compile once per chunk shape. Decoding chooses by default: one shot when the one-shot
program's memory (XLA's memory analysis of one chunk, scaled to the length) fits in the memory free on the
device (chunking does ~1.4x the work), chunks otherwise.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.audio import check_finite
from sa_jax.checkpoints import autoencoder as importer
from sa_jax.checkpoints import sat_config, store
from sa_jax.checkpoints.io import read_state_dict
from sa_jax.config import check_seed, load_yaml, naming, read_json, to_dict
from sa_jax.errors import AudioError, CheckpointError, ConfigError
from sa_jax.models.autoencoder import AudioAutoencoder, AutoencoderConfig, config_from_dict
from sa_jax.nn import compute_dtype

log = logging.getLogger("sa_jax.autoencoder")

DEFAULT_CHUNK_FRAMES = 128
# "auto" decodes in one shot when the program's own allocations (XLA's memory analysis: temporaries and
# output) take at most this share of the memory free on the device, leaving room for everything else.
ONE_SHOT_MEMORY_SHARE = 0.5


def free_memory_bytes(device=None) -> int | None:
    """Bytes free on `device` (default: the first device): an accelerator's limit less what is in use, the
    host's MemAvailable for the CPU; None when unknown (then "auto" decoding chunks)."""
    device = jax.devices()[0] if device is None else device
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def scale_chunk_bytes(chunk_bytes: int, chunk_batch: int, chunk_frames: int, batch: int, frames: int) -> int:
    """A decode's allocations for batch x frames from those of a chunk_batch x chunk_frames decode. The decoder
    is convolutional, so its activations grow linearly in batch x frames (measured on the Oobleck decoder:
    bytes per frame equal within 0.01% from 128 to 2048 frames and batch 1 to 2); the small fixed part scales too,
    which errs toward chunking. This spares compiling the one-shot program of every new length only to measure
    it: long-form canvases come in many lengths and are mostly chunked anyway."""
    return -(-chunk_bytes * batch * frames // (chunk_batch * chunk_frames))


def fits_one_shot(need: int | None, free: int | None) -> bool:
    """Whether a one-shot decode needing `need` bytes runs in `free` bytes: at most ONE_SHOT_MEMORY_SHARE of it
    (unknown either way: no, chunk)."""
    return need is not None and free is not None and need <= ONE_SHOT_MEMORY_SHARE * free


def _as_config(config: Any) -> AutoencoderConfig:
    """An AutoencoderConfig from a config object, a plain dict, or a JSON/YAML path."""
    if isinstance(config, AutoencoderConfig):
        return config
    if isinstance(config, (str, Path)):
        path = Path(config)
        if path.suffix == ".json":
            return sat_config.autoencoder_config(sat_config.read(path))
        data = load_yaml(path)
        return config_from_dict(data.get("autoencoder", data))
    if isinstance(config, dict):
        if "model_type" in config and "model" in config:
            return sat_config.autoencoder_config(config)
        return config_from_dict(config.get("autoencoder", config))
    raise ConfigError("an autoencoder config must be an AutoencoderConfig, a dict or a path, "
                      f"got {type(config).__name__}")


class Autoencoder:
    """A loaded VAE: parameters, config, and jitted chunked encode/decode."""

    def __init__(self, config: AutoencoderConfig, params: Any, dtype: str = "float32"):
        self.module = AudioAutoencoder(config, dtype=compute_dtype(dtype))
        self.config = config
        self.params = jax.tree_util.tree_map(jnp.asarray, params)
        self.dtype = dtype
        self._encode_stats = jax.jit(functools.partial(self.module.apply, method=self.module.encode_stats))
        self._decode = jax.jit(functools.partial(self.module.apply, method=self.module.decode))
        self._reference_bytes: int | None | bool = False   # one chunk's decode allocations (False: not measured)

    # --- facts -------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def io_channels(self) -> int:
        return self.config.io_channels

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def downsampling_ratio(self) -> int:
        return self.config.downsampling_ratio

    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(self.params))

    # --- construction --------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Any, seed: int = 0, dtype: str = "float32") -> "Autoencoder":
        """A randomly initialised autoencoder (for training from scratch and for tests)."""
        config = _as_config(config)
        module = AudioAutoencoder(config)
        x = jnp.zeros((1, config.downsampling_ratio, config.io_channels), jnp.float32)
        params = module.init(jax.random.key(seed), x, jax.random.key(0))["params"]
        return cls(config, params, dtype)

    @classmethod
    def load(cls, path: str | Path, config: Any = None, dtype: str = "float32") -> "Autoencoder":
        """Load from an sa-jax checkpoint directory, a stable-audio-tools checkpoint (a
        `.safetensors`/`.ckpt` file, or a folder with `model_config.json` and the weights), or a
        diffusers `AutoencoderOobleck` folder (or a pipeline folder with `vae/`).

        `config` (an AutoencoderConfig, a dict, or a path to a model_config.json / YAML) is needed
        only for a stable-audio-tools weight file with no `model_config.json` beside it."""
        config, params = load_weights(path, config)
        return cls(config, params, dtype)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write an sa-jax checkpoint directory that `Autoencoder.load` reads without the source."""
        return store.save(path, {"model_type": "autoencoder", "autoencoder": to_dict(self.config)},
                          jax.device_get(self.params), overwrite=overwrite)

    # --- encode / decode -------------------------------------------------------------------------
    def encode(self, audio: np.ndarray, sample: bool = False, seed: int | None = None,
               chunk_frames: int | None = 128, overlap_frames: int = 32) -> np.ndarray:
        """(batch, channels, samples) at `sample_rate` -> latents (batch, latent_dim, frames).

        Returns the posterior mean, or with `sample=True` a draw mean + std * noise from `seed`.
        Audio is zero-padded at the end to a multiple of `downsampling_ratio`; mono input is
        copied to every channel of a multi-channel model. Inputs longer than `chunk_frames`
        latent frames are encoded in chunks overlapping by `overlap_frames` (None: one shot)."""
        x = self._check_audio(audio)
        if sample and seed is None:
            raise ValueError("encode(sample=True) needs a seed (an int) so the draw is reproducible")
        if sample:
            seed = check_seed(seed)   # 0 <= seed < 2**32
        ratio = self.downsampling_ratio
        pad = (-x.shape[-1]) % ratio
        x = np.pad(x, ((0, 0), (0, 0), (0, pad))).transpose(0, 2, 1)  # -> (B, T, C)

        def stats(chunk):
            mean, std = self._encode_stats({"params": self.params}, jnp.asarray(chunk))
            return np.concatenate([np.asarray(mean), np.asarray(std)], axis=-1)

        h = _chunked(stats, x, x.shape[1] // ratio, ratio, 1, chunk_frames, overlap_frames)
        mean, std = np.split(h, 2, axis=-1)
        z = mean
        if sample:
            noise = np.asarray(jax.random.normal(jax.random.key(seed), mean.shape, jnp.float32))
            z = mean + std * noise
        return (z / self.config.scale).transpose(0, 2, 1).astype(np.float32)

    def decode(self, latents: np.ndarray, chunk_frames: int | str | None = "auto",
               overlap_frames: int = 32) -> np.ndarray:
        """Latents (batch, latent_dim, frames) -> audio (batch, channels, frames x ratio), float32.

        `chunk_frames`: an int decodes inputs longer than that many frames in chunks overlapping by
        `overlap_frames`; None decodes in one shot; "auto" (the default) in one shot where it fits in memory
        (`decode_chunk_frames`), else in chunks of DEFAULT_CHUNK_FRAMES."""
        z = np.asarray(latents, dtype=np.float32)
        if z.ndim != 3 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latents must be (batch, {self.latent_dim}, frames); got shape {z.shape}")
        if z.shape[0] == 0 or z.shape[2] == 0:
            raise ValueError(f"latents are empty (shape {z.shape}); batch and frames must be at least 1")
        check_finite(z, "latents")
        if chunk_frames == "auto":
            chunk_frames = self.decode_chunk_frames(z.shape)
        elif chunk_frames is not None and (isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int)
                                           or chunk_frames < 1):
            raise ValueError(f"chunk_frames must be a positive int, None (one shot) or 'auto'; got {chunk_frames!r}")
        z = (z * self.config.scale).transpose(0, 2, 1)  # -> (B, frames, D)

        def dec(chunk):
            return np.asarray(self._decode({"params": self.params}, jnp.asarray(chunk)))

        y = _chunked(dec, z, z.shape[1], 1, self.downsampling_ratio, chunk_frames, overlap_frames)
        return y.transpose(0, 2, 1)

    def decode_chunk_frames(self, shape: tuple[int, int, int]) -> int | None:
        """The `chunk_frames` that decode(chunk_frames="auto") uses for latents of `shape` (batch, latent_dim,
        frames): None (one shot) when `one_shot_bytes` fits in `free_memory_bytes()` (`fits_one_shot`);
        DEFAULT_CHUNK_FRAMES otherwise."""
        batch, _, frames = shape
        if frames <= DEFAULT_CHUNK_FRAMES:
            return DEFAULT_CHUNK_FRAMES   # one chunk: the same program either way
        need, free = self.one_shot_bytes(batch, frames), free_memory_bytes()
        one_shot = fits_one_shot(need, free)
        log.info("decode of %d x %d frames: one shot needs about %s MiB, %s MiB free: %s", batch, frames,
                 "?" if need is None else need >> 20, "?" if free is None else free >> 20,
                 "one shot" if one_shot else f"chunks of {DEFAULT_CHUNK_FRAMES}")
        return None if one_shot else DEFAULT_CHUNK_FRAMES

    def one_shot_bytes(self, batch: int, frames: int) -> int | None:
        """About what the one-shot decode of `batch` x `frames` latent frames allocates (temporaries and output):
        XLA's memory analysis of the decode of one chunk (1 x DEFAULT_CHUNK_FRAMES), compiled once per model,
        scaled by batch x frames (`scale_chunk_bytes`); None when XLA gives no analysis."""
        if self._reference_bytes is False:
            shape = (1, DEFAULT_CHUNK_FRAMES, self.latent_dim)
            memory = self._decode.lower({"params": self.params},
                                        jax.ShapeDtypeStruct(shape, jnp.float32)).compile().memory_analysis()
            self._reference_bytes = None if memory is None else int(memory.temp_size_in_bytes
                                                                    + memory.output_size_in_bytes)
        if self._reference_bytes is None:
            return None
        return scale_chunk_bytes(self._reference_bytes, 1, DEFAULT_CHUNK_FRAMES, batch, frames)

    def _check_audio(self, audio: np.ndarray) -> np.ndarray:
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 3:
            raise AudioError(f"audio must be a (batch, channels, samples) array; got shape {x.shape}"
                             + (" (add a batch axis: audio[None])" if x.ndim == 2 else ""))
        if x.shape[0] == 0 or x.shape[2] == 0:
            raise AudioError(f"audio is empty (shape {x.shape}); batch and samples must be at least 1")
        if x.shape[1] != self.io_channels:
            if x.shape[1] != 1:
                raise AudioError(f"audio has {x.shape[1]} channels; this autoencoder takes "
                                 f"{self.io_channels} (or 1, copied to every channel)")
            x = np.repeat(x, self.io_channels, axis=1)
        check_finite(x, "audio")
        return x


def _chunked(fn, x: np.ndarray, frames: int, in_per_frame: int, out_per_frame: int,
             chunk: int | None, overlap: int) -> np.ndarray:
    """Apply `fn` along time in overlapping chunks and stitch the centres.

    `x` is (B, frames * in_per_frame, C); `fn` maps a chunk of `n` frames of input to `n` frames of
    output, each frame `out_per_frame` long. Every chunk has the same length (the last one is
    aligned to the end), so `fn` compiles once; each output frame is taken from the chunk in
    which it lies furthest from an edge, at least overlap/2 frames inside it.
    """
    if chunk is None or frames <= chunk:
        return fn(x)
    if not 0 <= overlap < chunk or overlap % 2:
        raise ValueError(f"overlap_frames must be even and in [0, chunk_frames={chunk}); got {overlap}")
    hop = chunk - overlap
    starts = list(range(0, frames - chunk, hop)) + [frames - chunk]
    out = None
    for i, start in enumerate(starts):
        y = fn(x[:, start * in_per_frame:(start + chunk) * in_per_frame])
        # Keep this chunk's frames up to the middle of its overlap with each neighbour.
        lo = 0 if i == 0 else (start + starts[i - 1] + chunk) // 2
        hi = frames if i == len(starts) - 1 else (starts[i + 1] + start + chunk) // 2
        if out is None:
            out = np.empty((y.shape[0], frames * out_per_frame, y.shape[-1]), y.dtype)
        out[:, lo * out_per_frame:hi * out_per_frame] = y[:, (lo - start) * out_per_frame:(hi - start) * out_per_frame]
    return out


# --- finding and reading weights -------------------------------------------------------------------

def find_sat_weights(folder: Path) -> Path:
    for name in ("model.safetensors", "model.ckpt", "vae_model.safetensors", "vae_model.ckpt"):
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.ckpt"))
    if len(candidates) == 1:
        return candidates[0]
    raise CheckpointError(f"{folder} has a model_config.json but no single weight file "
                          f"(looked for model.safetensors / model.ckpt; found {[c.name for c in candidates]})")


def load_weights(path: str | Path, config: Any = None) -> tuple[AutoencoderConfig, dict]:
    """(config, params) from any supported autoencoder source; see `Autoencoder.load`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        if store.is_checkpoint(path):
            saved = store.read_config(path)
            if saved["model_type"] != "autoencoder" and "autoencoder" not in saved:
                raise CheckpointError(f"{path} is an sa-jax {saved['model_type']} checkpoint without an autoencoder")
            with naming(path / store.CONFIG_FILE):   # a value of the wrong type names the file and the key
                cfg = config_from_dict(saved["autoencoder"])
            params = store.load_params(path)
            if saved["model_type"] != "autoencoder":  # a whole model: its params nest the autoencoder
                params = params["autoencoder"]
            return cfg, params
        if (path / "vae" / "config.json").is_file():  # a diffusers pipeline folder
            path = path / "vae"
        if (path / "config.json").is_file() and not (path / "model_config.json").is_file():
            dcfg = read_json(path / "config.json")
            cfg = importer.diffusers_config(dcfg)
            weights = path / "diffusion_pytorch_model.safetensors"
            if not weights.is_file():
                raise CheckpointError(f"diffusers folder {path} has no diffusion_pytorch_model.safetensors")
            return cfg, importer.from_diffusers(read_state_dict(weights), cfg, str(weights))
        if (path / "model_config.json").is_file():
            cfg = _as_config(path / "model_config.json") if config is None else _as_config(config)
            weights = find_sat_weights(path)
            return cfg, importer.from_sat(read_state_dict(weights), cfg, str(weights))
        raise CheckpointError(f"{path} is not a model folder sa-jax knows: expected an sa-jax checkpoint "
                              "(config.yaml + params/), a diffusers AutoencoderOobleck (config.json + "
                              "diffusion_pytorch_model.safetensors) or a stable-audio-tools folder "
                              "(model_config.json + weights)")
    if config is None:
        sibling = path.parent / "model_config.json"
        if not sibling.is_file():
            raise ConfigError(f"{path} holds weights only; pass config= (a model_config.json or YAML) "
                              f"or put its model_config.json beside it")
        config = sibling
    cfg = _as_config(config)
    return cfg, importer.from_sat(read_state_dict(path), cfg, str(path))
