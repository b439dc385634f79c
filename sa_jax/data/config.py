"""`DataConfig`: the typed schema of a data pipeline (build with `sa_jax.config.from_dict`/`load`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from sa_jax.errors import ConfigError


@dataclass
class DataConfig:
    # Where the data is: an audio folder, a TFDS data dir written by `build_tfds`, or a latents
    # folder written by `encode_dataset`.
    path: str = ""
    kind: Literal["folder", "tfds", "latents"] = "folder"
    manifest: Optional[str] = None        # folder only; default: metadata.jsonl/.csv at the root
    check: Literal["header", "full"] = "header"   # "full" decodes every file while indexing
    split: str = "train"                  # tfds only
    require_metadata: bool = False        # folder only: skip files with no manifest row and no sidecar

    # Audio as the model sees it.
    sample_rate: int = 44100
    channels: int = 2
    window: int = 4194304                 # samples per crop (95.1 s at 44.1 kHz); latents: window // ratio frames
    latent_window: Optional[int] = None   # latents only: frames per crop (default window // ratio)
    random_crop: bool = True
    # Audio only: random crops of clips longer than the window may run up to this many samples past the
    # clip's end (silence-padded and masked, as short clips are), so a model also sees clips ending in
    # silence; each such crop keeps at least window - crop_past_end samples of the clip.
    crop_past_end: int = 0
    phase_flip: bool = True               # invert polarity with p=0.5, as the reference does
    silence_db: float = -60.0             # crops whose peak is below this are skipped
    min_seconds: float = 0.0
    max_seconds: Optional[float] = None

    # Prompts from metadata.
    prompt_keys: tuple[str, ...] = ()     # empty: every non-reserved metadata key
    prompt_exclude: tuple[str, ...] = ()
    p_key_value: float = 0.5              # probability of the `key: value | ...` form

    # Order, sharding, batching, workers.
    seed: int = 0
    shuffle: bool = True
    num_epochs: Optional[int] = None      # None: repeat forever
    batch_size: int = 8
    drop_remainder: bool = True
    shard_index: Optional[int] = None     # None: jax.process_index()
    shard_count: Optional[int] = None     # None: jax.process_count()
    num_workers: int = 0                  # grain worker processes (0: in-process threads only)
    worker_buffer_size: int = 1
    num_threads: int = 2                  # decode threads per process
    prefetch_buffer_size: int = 4
    skip_log: Optional[str] = None        # JSONL of skipped examples (shared by workers)

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"data: {msg}")
        need(self.sample_rate > 0, f"sample_rate must be positive, got {self.sample_rate}")
        need(self.channels in (1, 2), f"channels must be 1 or 2, got {self.channels}")
        need(self.window > 0, f"window must be a positive number of samples, got {self.window}")
        need(self.latent_window is None or self.latent_window > 0, "latent_window must be positive")
        need(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        need(0 <= self.crop_past_end < self.window,
             f"crop_past_end must be in [0, window={self.window}), got {self.crop_past_end}")
        need(self.num_workers >= 0, "num_workers must be >= 0")
        need(self.num_threads >= 1, "num_threads must be >= 1")
        need(0.0 <= self.p_key_value <= 1.0, "p_key_value must be in [0, 1]")
        need(self.num_epochs is None or self.num_epochs > 0, "num_epochs must be positive or null")
        need((self.shard_index is None) == (self.shard_count is None),
             "give both shard_index and shard_count, or neither")
        if self.shard_count is not None:
            need(self.shard_count > 0 and 0 <= self.shard_index < self.shard_count,
                 f"shard_index {self.shard_index} must be in [0, shard_count={self.shard_count})")
        need(self.seed >= 0, "seed must be >= 0")
