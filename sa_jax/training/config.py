"""`TrainConfig`: the typed schema of a diffusion training run (a YAML, e.g. a packaged one, + dotted overrides).

    from sa_jax.config import load
    from sa_jax.training import TrainConfig
    cfg = load(TrainConfig, "train_dit_tiny", ["steps=100", "optim.lr=1e-4"])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from sa_jax.data.config import DataConfig
from sa_jax.errors import ConfigError
from sa_jax.families import OLD_NAMES as OLD_FAMILY_NAMES
from sa_jax.models.conditioners import ConditioningConfig
from sa_jax.models.dit import DiTConfig
from sa_jax.models.sa1_conditioning import IntConditionerConfig
from sa_jax.models.unet import UNetConfig
from sa_jax.nn.attention import REMAT_POLICIES, remat_mode

# The two model families, named as everywhere in sa-jax (checkpoints, pipeline, CLI): `sao` is Stable Audio
# Open (T5 + number timing conditioners -> DiT), `sa1` the paper, Stable Audio 1.0 (CLAP + integer timing
# tokens -> U-Net). Older training configs named them by their denoiser; those names (sa_jax.families.OLD_NAMES)
# are read as these.


@dataclass
class ModelConfig:
    """The denoiser and its conditioners. `family: sao` is Stable Audio Open (DiT + number
    conditioners), `family: sa1` the paper (U-Net + integer timing tokens); the old names
    `dit` and `unet` are read as these."""

    family: Literal["sao", "sa1"] = field(default="sao", metadata={"aliases": OLD_FAMILY_NAMES})
    dit: DiTConfig = field(default_factory=DiTConfig)                              # sao only
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)   # sao only
    unet: UNetConfig = field(default_factory=UNetConfig)                           # sa1 only
    timing: IntConditionerConfig = field(default_factory=IntConditionerConfig)     # sa1 only
    text_tokens: int = 77          # sa1 only: text tokens before the two timing tokens
    text_dim: int = 768            # sa1 only: width of the text features
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    # Rematerialisation (less memory, more compute): "none" keeps every activation for the backward pass,
    # "block" recomputes each block, "attention" recomputes each block but keeps its attention outputs.
    # true / false (older configs) read as block / none.
    remat: Union[Literal["none", "block", "attention"], bool] = "none"

    def validate(self) -> None:
        try:
            self.remat = remat_mode(self.remat)
        except ValueError:
            raise ConfigError(f"model.remat {self.remat!r} is not known; "
                              f"choose one of {list(REMAT_POLICIES)}") from None
        if self.family == "sa1":
            if self.text_tokens + 2 > self.unet.context_embedding_max_length:
                raise ConfigError(f"model: text_tokens {self.text_tokens} + 2 timing tokens exceed the U-Net's "
                                  f"context_embedding_max_length {self.unet.context_embedding_max_length}")
            if self.text_dim != self.unet.context_embedding_features:
                raise ConfigError(f"model: text_dim {self.text_dim} must equal unet.context_embedding_features "
                                  f"{self.unet.context_embedding_features}")
        else:
            c, d = self.conditioning, self.dit
            if c.cond_dim != d.cond_token_dim:
                raise ConfigError(f"model: conditioning.cond_dim {c.cond_dim} != dit.cond_token_dim {d.cond_token_dim}")
            if c.global_dim != d.global_cond_dim:
                raise ConfigError(f"model: the conditioners give a global vector of {c.global_dim}, "
                                  f"dit.global_cond_dim is {d.global_cond_dim}")

    @property
    def latent_dim(self) -> int:
        return self.dit.io_channels if self.family == "sao" else self.unet.in_channels


@dataclass
class TextConfig:
    """Where the text features come from. `t5`: a frozen T5 encoder (a local Hugging Face folder at
    `path`), as Stable Audio Open; `clap`: a frozen CLAP text tower (a transformers ClapModel folder,
    a LAION `.pt` with a `tokenizer` folder, an sa-jax CLAP export, or an sa-jax model folder: that
    model's own text tower, tokenizer included), hidden states of `layer`,
    as the paper. Both run inside the train step. `hash`: a fixed pseudo-random embedding per
    prompt string (a stand-in for an encoder, enough to test conditioning); `zeros`: no text."""

    source: Literal["hash", "zeros", "t5", "clap"] = "hash"
    tokens: int = 8                # hash only: non-zero (real) tokens per prompt
    path: Optional[str] = None     # t5 / clap: where the encoder is
    tokenizer: Optional[str] = None   # its tokenizer folder when not inside `path`
    layer: int = -2                # clap only: which hidden state (-2: the penultimate layer)



@dataclass
class AutoencoderSource:
    """The frozen autoencoder (any path `sa_jax.Autoencoder.load` reads). Needed to train on audio
    (data.kind folder or tfds: the step encodes each batch), for demo audio, and for an export that
    `StableAudio.load` reads."""

    path: Optional[str] = None


@dataclass
class DemoConfig:
    """Demo audio for fixed prompts every `every` steps (0: off), from the EMA weights, written to
    run_dir/demo/<step>/ and TensorBoard. Needs a real text encoder and the autoencoder."""

    every: int = 0
    prompts: tuple[str, ...] = ("a piano melody",)
    seconds_total: Optional[float] = None    # None: the whole window
    steps: int = 50
    cfg_scale: float = 6.0
    sampler: str = "dpmpp-3m-sde"
    seed: int = 0

    def validate(self) -> None:
        if self.every < 0 or self.steps < 1 or not self.prompts:
            raise ConfigError("demo: every must be >= 0, steps >= 1, and prompts non-empty")


@dataclass
class DiffusionConfig:
    objective: Literal["v", "rectified_flow"] = "v"
    timesteps: Literal["uniform", "low-discrepancy", "logit-normal"] = "uniform"
    timestep_shift: float = 1.0    # > 1: more training at high noise (sa_jax.diffusion.objectives)
    cfg_dropout: float = 0.1

    def validate(self) -> None:
        if not 0.0 <= self.cfg_dropout <= 1.0:
            raise ConfigError(f"diffusion: cfg_dropout must be in [0, 1], got {self.cfg_dropout}")
        if not (math.isfinite(self.timestep_shift) and self.timestep_shift > 0):
            raise ConfigError(f"diffusion: timestep_shift must be a finite number > 0 (1: no shift), "
                              f"got {self.timestep_shift}")


@dataclass
class OptimConfig:
    """AdamW with a learning-rate schedule. `inverse`: stable-audio-tools' InverseLR,
    lr * (1 - warmup**(step+1)) * (1 + step/inv_gamma)**-power, floored at final_lr;
    `cosine`: linear warm-up over warmup_steps then cosine to final_lr; `constant`."""

    lr: float = 5e-5
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 1e-3
    schedule: Literal["inverse", "cosine", "constant"] = "inverse"
    inv_gamma: float = 1e6
    power: float = 0.5
    warmup: float = 0.99           # inverse only: the exponential warm-up factor
    warmup_steps: int = 0          # cosine only
    final_lr: float = 0.0
    clip_norm: Optional[float] = None   # global-norm gradient clipping; None: off
    mu_dtype: Literal["float32", "bfloat16"] = "float32"   # AdamW's first moments (bfloat16: half their memory)
    accumulate: int = 1            # microbatches per step: gradients of data.batch_size / accumulate items at a
                                   # time, summed, one update (the same update as the whole batch at once)
    offload: bool = False          # optimiser state and EMA live in host memory (pinned_host), on the device
                                   # only inside the step: device memory for activations, at a transfer per step

    def validate(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optim: lr must be positive, got {self.lr}")
        if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0):
            raise ConfigError(f"optim: betas must be in [0, 1), got ({self.b1}, {self.b2})")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"optim: warmup must be in [0, 1), got {self.warmup}")
        if self.inv_gamma <= 0:
            raise ConfigError(f"optim: inv_gamma must be positive, got {self.inv_gamma}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ConfigError(f"optim: clip_norm must be positive or null, got {self.clip_norm}")
        if self.warmup_steps < 0 or self.final_lr < 0:
            raise ConfigError("optim: warmup_steps and final_lr must be >= 0")
        if self.accumulate < 1:
            raise ConfigError(f"optim: accumulate must be >= 1 (microbatches per step), got {self.accumulate}")


@dataclass
class EMAConfig:
    """EMA of the parameters. decay(step) = min(decay, 1 - (1 + step / inv_gamma) ** -power)
    (the k-diffusion/stable-audio-tools warm-up; power 3/4 reaches 0.999 after ~10k steps);
    `warmup: false` uses the constant decay."""

    enabled: bool = True
    decay: float = 0.9999
    warmup: bool = True
    inv_gamma: float = 1.0
    power: float = 0.75

    def validate(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"ema: decay must be in [0, 1), got {self.decay}")


@dataclass
class MeshConfig:
    """Device mesh: axis names and sizes (-1 at most once: the rest of the devices). Parameters are
    sharded over `fsdp_axis` by the first `fsdp_rules` regex that matches their path ("a/b/kernel");
    the batch over `batch_axes`."""

    axes: tuple[str, ...] = ("data", "fsdp")
    shape: tuple[int, ...] = (1, -1)
    batch_axes: tuple[str, ...] = ("data", "fsdp")
    fsdp_axis: Optional[str] = "fsdp"
    fsdp_min_size: int = 2 ** 12   # smaller arrays stay replicated
    fsdp_rules: tuple[str, ...] = (".*",)

    def validate(self) -> None:
        if len(self.axes) != len(self.shape):
            raise ConfigError(f"mesh: axes {list(self.axes)} and shape {list(self.shape)} differ in length")
        if list(self.shape).count(-1) > 1 or any(s == 0 or s < -1 for s in self.shape):
            raise ConfigError(f"mesh: sizes must be positive, with at most one -1; got {list(self.shape)}")
        unknown = [a for a in (*self.batch_axes, *([self.fsdp_axis] if self.fsdp_axis else [])) if a not in self.axes]
        if unknown:
            raise ConfigError(f"mesh: axis name(s) {unknown} are not among axes {list(self.axes)}")


@dataclass
class CheckpointConfig:
    dir: str = "runs/default"     # the run directory: checkpoints/, config.yaml, export/
    every: int = 1000             # save every this many steps (and at the end, and on SIGTERM)
    keep: int = 3                 # keep the last N
    async_save: bool = True
    resume: bool = True           # continue from the latest checkpoint in dir when there is one
    keep_best: bool = True        # export the EMA weights to dir/best when a checkpoint interval's
                                  # mean training loss is the lowest so far

    def validate(self) -> None:
        if self.every <= 0 or self.keep <= 0:
            raise ConfigError(f"checkpoint: every and keep must be positive, got {self.every}, {self.keep}")


@dataclass
class LogConfig:
    every: int = 10               # console line every N steps
    memory_analysis: bool = True  # print the compiled step's memory analysis at start


@dataclass
class LoraConfig:
    """Low-rank adapters (LoRA) instead of training the whole model: the model (`init.from`) stays
    frozen and only `down` (fan_in x rank) and `up` (rank x fan_out, zero at the start) matrices of the
    weights whose path matches one of `targets` are trained, W' = W + (alpha / rank) * down @ up.
    rank 0: off (the whole model is trained). `targets`: regexes over "/"-joined parameter paths of
    {"conditioner", "denoiser"}; empty: sa_jax.nn.lora.default_targets(model.family). `base_dtype`:
    how the frozen model is held on the devices (bfloat16 halves it)."""

    rank: int = 0
    alpha: Optional[float] = None      # None: alpha = rank (scale 1)
    dropout: float = 0.0               # dropout on the adapters' input during training
    targets: tuple[str, ...] = ()
    base_dtype: Literal["float32", "bfloat16"] = "float32"

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    def validate(self) -> None:
        if self.rank < 0:
            raise ConfigError(f"lora.rank must be >= 0 (0: off), got {self.rank}")
        if self.alpha is not None and not self.alpha > 0:
            raise ConfigError(f"lora.alpha must be positive or null (= rank), got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        import re

        for t in self.targets:
            try:
                re.compile(t)
            except re.error as e:
                raise ConfigError(f"lora.targets: {t!r} is not a regular expression ({e})") from None


# The keys of the `init:` section (a mapping, as `from` cannot be a dataclass field's name).
INIT_KEYS = {"from": "the model the run starts from: any folder StableAudio.load reads",
             "hash": "its content hash (written by the run when it loads the model; a resume on other "
                     "weights is refused)"}


@dataclass
class TrainConfig:
    trainer: Literal["diffusion"] = "diffusion"   # picks this schema in `sa-jax train` (see commands/train.py)
    # init.from: PATH starts the denoiser and conditioners from a model (sa-jax checkpoint, stable-audio-tools
    # release, diffusers folder, a run's export); the model section, text encoder and autoencoder come from it
    init: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(kind="latents"))
    text: TextConfig = field(default_factory=TextConfig)
    autoencoder: AutoencoderSource = field(default_factory=AutoencoderSource)
    demo: DemoConfig = field(default_factory=DemoConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    steps: int = 1000
    seed: int = 0
    max_bad_steps: int = 10       # stop after this many non-finite steps in a row

    @property
    def init_from(self) -> Optional[str]:
        """The model the run starts from (`init.from`), or None (random weights)."""
        return self.init.get("from")

    def validate(self) -> None:
        if self.steps <= 0:
            raise ConfigError(f"steps must be positive, got {self.steps}")
        unknown = sorted(set(self.init) - set(INIT_KEYS), key=repr)
        if unknown:
            raise ConfigError(f"init: unknown key(s) {unknown}; valid keys are {sorted(INIT_KEYS)}")
        for k, v in self.init.items():
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"init.{k} must be a string (init.from: a model folder), got {v!r}")
        if self.lora.enabled and not self.init_from:
            raise ConfigError("lora.rank > 0 trains adapters of a model: set init.from (the model to adapt)")
        if self.data.kind != "latents" and not self.autoencoder.path and not self.init_from:
            raise ConfigError(f"data.kind {self.data.kind!r} is audio: set autoencoder.path (a frozen VAE encodes "
                              "each batch), or pre-encode with `sa-jax encode` and use data.kind latents")
        if self.demo.every and not self.init_from and (self.text.source not in ("t5", "clap")
                                                       or not self.autoencoder.path):
            raise ConfigError("demo.every needs a real text encoder (text.source t5 or clap) and autoencoder.path")
        want = {"sao": "t5", "sa1": "clap"}[self.model.family]
        if self.text.source in ("t5", "clap") and not self.text.path and not self.init_from:
            raise ConfigError(f"text.source {self.text.source} needs text.path (a local {self.text.source} encoder)")
        if self.text.source in ("t5", "clap") and self.text.source != want:
            raise ConfigError(f"text.source {self.text.source} does not fit model.family {self.model.family} "
                              f"(which takes {want} features)")
        if self.max_bad_steps <= 0:
            raise ConfigError("max_bad_steps must be positive")
