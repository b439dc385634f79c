"""Model families: what differs between Stable Audio models.

A family is how prompts and timing become conditioning, what the unconditional branch of CFG sees,
and the denoiser network, plus reading that model from the formats it is published in:

    sao.py   Stable Audio Open: T5 tokens + Fourier-feature timing numbers -> DiT
             (sa-jax checkpoints, diffusers StableAudioPipeline folders, stable-audio-tools releases)
    sa1.py   Stable Audio 1.0, the paper: CLAP text tokens + integer timing embeddings -> 1-D U-Net
             (sa-jax checkpoints, stable-audio-tools releases)

Every family class has the same members, which `sa_jax.pipeline.StableAudio` uses:
`name`, `objective`, `cfg_rescale`, `defaults` (its `SamplingDefaults`), `latent_channels`,
`condition(prompts, seconds_start, seconds_total) -> cond`, `unconditional(cond, negative) -> uncond`,
`has_inpaint_inputs` and `inpaint_inputs(known_latents, mask) -> dict` (the extra conditioning of an
inpainting-trained checkpoint, merged into both CFG branches; ConfigError for models without it),
`network() -> Partial(params, x, t, cond) -> v`, `trainable()` / `set_trainable(tree)` (the
{"conditioner", "denoiser"} weights a run trains and LoRA adapts), `hold_weights(dtype)` (the denoiser and
text encoder kept in bfloat16), and for sa-jax checkpoints `config_sections()`,
`params()`, `save_files(folder)` and the classmethod `from_checkpoint(config, params, folder, dtype)`.
The foreign-format loaders return a `Loaded` (family, autoencoder, sample_size, defaults).

`FAMILIES` maps the `family:` name of an sa-jax checkpoint's config.yaml to its class; `family_class`
also reads the training configs' older names (`dit`, `unet`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from sa_jax.checkpoints import store
from sa_jax.errors import CheckpointError, ConfigError

TOKENIZER_DIR = "tokenizer"  # the text encoder's tokenizer inside an sa-jax checkpoint


@dataclass(frozen=True)
class SamplingDefaults:
    """What `generate` uses when an argument is None. Defaults are Stable Audio Open's model card."""

    sampler: str = "dpmpp-3m-sde"
    steps: int = 100
    cfg_scale: float = 7.0
    sigma_min: float = 0.3
    sigma_max: float = 500.0
    rho: float = 1.0

    def validate(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"sampling: need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.steps < 1:
            raise ConfigError(f"sampling: steps must be >= 1, got {self.steps}")


class Loaded(NamedTuple):
    """A whole model read from a foreign format: `StableAudio(*loaded)` makes the pipeline."""

    family: Any
    autoencoder: Any
    sample_size: int
    defaults: SamplingDefaults


class Family:
    """What the families share: the config.yaml sections they need, and saving the text encoder's
    tokenizer beside the parameters."""

    name: str
    title: str  # "an SAO model", for errors
    sections: tuple[str, ...] = ()  # the config.yaml sections `from_checkpoint` reads
    objective = "v"
    cfg_rescale = 0.0
    defaults = SamplingDefaults()
    text_encoder: Any
    has_inpaint_inputs = False  # the network takes inpainting inputs (stable-audio-tools' diffusion_cond_inpaint)

    def inpaint_inputs(self, known_latents, mask) -> dict:
        """Conditioning from the known latents and mask (1 = keep) for a model trained with inpainting
        inputs, merged into both CFG branches; families and checkpoints without them raise."""
        raise ConfigError(f"this model ({self.title}) has no inpainting inputs: it is not a stable-audio-tools "
                          "'diffusion_cond_inpaint' checkpoint. Inpaint it through sampling instead "
                          "(StableAudio.inpaint / sa_jax.diffusion.sample(known=, mask=), RePaint-style)")

    # {"conditioner": attribute, "denoiser": attribute}: where a family keeps the weights a run trains
    trainable_attributes: dict[str, str] = {}

    def trainable(self) -> dict:
        """The weights a training run trains and LoRA adapters address: {"conditioner": ..., "denoiser": ...}
        (the tree of sa_jax.training.model.init_params)."""
        return {part: getattr(self, attr) for part, attr in self.trainable_attributes.items()}

    def set_trainable(self, tree: dict) -> None:
        """Replace the weights `trainable` returns, e.g. with LoRA adapters merged; ValueError unless `tree`
        has the same structure and shapes."""
        import jax
        import jax.numpy as jnp

        old = jax.tree_util.tree_map(jnp.shape, self.trainable())
        if jax.tree_util.tree_map(jnp.shape, tree) != old:
            raise ValueError(f"set_trainable: the new weights of {self.title} differ in structure or shapes")
        for part, attr in self.trainable_attributes.items():
            setattr(self, attr, jax.tree_util.tree_map(jnp.asarray, tree[part]))

    weights_dtype = "float32"   # what the denoiser's and text encoder's weights are held in (`hold_weights`)

    def hold_weights(self, dtype: str) -> None:
        """Hold the denoiser's and the text encoder's weights in `dtype` ("bfloat16": half their memory).
        Merge LoRA adapters before this: they are added to the float32 weights. Matrices, convolution
        kernels and embedding tables are cast; vectors (biases, norm scales, Fourier frequencies) stay
        float32, a tiny share of the bytes that every activation passes through. The conditioner's
        projections (small) stay float32. The text encoder still computes in float32 (it runs once per
        generation, outside the sampling loop)."""
        from sa_jax.nn import compute_dtype

        target = compute_dtype(dtype)
        tree = self.trainable()
        tree["denoiser"] = cast_matrices(tree["denoiser"], target)
        self.set_trainable(tree)
        self.text_encoder.params = cast_matrices(self.text_encoder.params, target)
        self.weights_dtype = dtype

    def save_files(self, folder: Path) -> None:
        self.text_encoder.tokenizer.save_pretrained(str(Path(folder) / TOKENIZER_DIR))

    @classmethod
    def check_sections(cls, config: dict, folder: Path) -> None:
        missing = [k for k in cls.sections if k not in config]
        if missing:
            raise CheckpointError(f"{Path(folder) / store.CONFIG_FILE} lacks the section(s) {missing} of {cls.title}")


def cast_matrices(tree, dtype):
    """`tree` with its floating-point leaves of two or more dimensions cast to `dtype` (see `hold_weights`)."""
    import jax
    import jax.numpy as jnp

    def cast(leaf):
        leaf = jnp.asarray(leaf)
        return leaf.astype(dtype) if leaf.ndim >= 2 and jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return jax.tree_util.tree_map(cast, tree)


def sat_autoencoder(model_config: dict, state: dict, weights: Path, dtype: str):
    """The `Autoencoder` of a stable-audio-tools model (`pretransform.model.*` of its state dict)."""
    from sa_jax.autoencoder import Autoencoder
    from sa_jax.checkpoints import autoencoder as ae_importer
    from sa_jax.checkpoints import sat_config

    config = sat_config.autoencoder_config(model_config)
    return Autoencoder(config, ae_importer.from_sat(state, config, str(weights)), dtype)


from sa_jax.families.sa1 import SA1Family  # noqa: E402  (the classes use the names above)
from sa_jax.families.sao import SAOFamily  # noqa: E402

FAMILIES = {"sao": SAOFamily, "sa1": SA1Family}
# Names older training configs and their denoiser-only exports wrote under `family:`.
OLD_NAMES = {"dit": "sao", "unet": "sa1"}


def family_class(name: str, where: Any = "") -> type:
    """The family class called `name` ("sao", "sa1", or an old name); CheckpointError otherwise."""
    name = OLD_NAMES.get(name, name)
    if name not in FAMILIES:
        raise CheckpointError(f"{where}: model family {name!r} is not known; known: {sorted(FAMILIES)}")
    return FAMILIES[name]
