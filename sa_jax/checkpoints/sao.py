"""Importing the Stable Audio Open DiT and its conditioners (the T5 encoder: sa_jax.checkpoints.t5).

Formats:
* stable-audio-tools: one `model.safetensors` (or `.ckpt`) of the whole conditioned diffusion model
  (`model.model.*` the DiT, `conditioner.conditioners.*` the number conditioners and the optional
  T5 projection, `pretransform.*` the autoencoder, imported elsewhere), plus `model_config.json`.
  T5 itself is not in that file (the reference keeps it out of the state dict); it comes from a
  local Hugging Face folder.
* diffusers `StableAudioPipeline` folder: `transformer/`, `projection_model/`, `text_encoder/`,
  `tokenizer/` (and `vae/`, imported elsewhere).

Each format is a table of rows (foreign key pattern, our parameter path pattern, transform) with
`{i}` standing for the block index (sa_jax.checkpoints.table), plus buffers the reference stores
that hold no learned state (LayerNorm betas kept at zero, rotary frequencies), which are checked
rather than loaded. Every key that does not line up -- a file key no row takes, a parameter no key
provides, a shape that differs, a buffer with an unexpected value -- is collected, and all of them
are raised together as one CheckpointError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sa_jax.checkpoints.io import read_state_dict, read_weights
from sa_jax.checkpoints.t5 import convert_t5, load_t5
from sa_jax.checkpoints.table import Report, Row, conv1x1, convert_into, equals, expand, flat, fuse, linear, zeros
from sa_jax.config import from_dict, read_json
from sa_jax.errors import CheckpointError, ConfigError
from sa_jax.models import conditioners as cond_mod
from sa_jax.models import dit as dit_mod
from sa_jax.models.conditioners import ConditioningConfig, NumberConditionerConfig
from sa_jax.models.dit import DiTConfig
from sa_jax.models.t5 import T5Config

# --------------------------------------------------------------------------------------------
# Tables

_SAT_DIT_TOP: list[Row] = [
    ("timestep_features.weight", "timestep_features/kernel", flat),
    ("to_timestep_embed.0.weight", "to_timestep_embed/in_proj/kernel", linear),
    ("to_timestep_embed.0.bias", "to_timestep_embed/in_proj/bias", None),
    ("to_timestep_embed.2.weight", "to_timestep_embed/out_proj/kernel", linear),
    ("to_timestep_embed.2.bias", "to_timestep_embed/out_proj/bias", None),
    ("to_cond_embed.0.weight", "to_cond_embed/in_proj/kernel", linear),
    ("to_cond_embed.2.weight", "to_cond_embed/out_proj/kernel", linear),
    ("to_global_embed.0.weight", "to_global_embed/in_proj/kernel", linear),
    ("to_global_embed.2.weight", "to_global_embed/out_proj/kernel", linear),
    ("preprocess_conv.weight", "preprocess_conv/kernel", conv1x1),
    ("postprocess_conv.weight", "postprocess_conv/kernel", conv1x1),
    ("transformer.project_in.weight", "project_in/kernel", linear),
    ("transformer.project_out.weight", "project_out/kernel", linear),
]
_SAT_DIT_BLOCK: list[Row] = [
    ("transformer.layers.{i}.pre_norm.gamma", "layers_{i}/pre_norm/scale", None),
    ("transformer.layers.{i}.self_attn.to_qkv.weight", "layers_{i}/self_attn/qkv/kernel", linear),
    ("transformer.layers.{i}.self_attn.to_out.weight", "layers_{i}/self_attn/out/kernel", linear),
    ("transformer.layers.{i}.cross_attend_norm.gamma", "layers_{i}/cross_attn_norm/scale", None),
    ("transformer.layers.{i}.cross_attn.to_q.weight", "layers_{i}/cross_attn/q/kernel", linear),
    ("transformer.layers.{i}.cross_attn.to_kv.weight", "layers_{i}/cross_attn/kv/kernel", linear),
    ("transformer.layers.{i}.cross_attn.to_out.weight", "layers_{i}/cross_attn/out/kernel", linear),
    ("transformer.layers.{i}.ff_norm.gamma", "layers_{i}/ff_norm/scale", None),
    ("transformer.layers.{i}.ff.ff.0.proj.weight", "layers_{i}/ff/proj_in/kernel", linear),
    ("transformer.layers.{i}.ff.ff.0.proj.bias", "layers_{i}/ff/proj_in/bias", None),
    ("transformer.layers.{i}.ff.ff.2.weight", "layers_{i}/ff/proj_out/kernel", linear),
    ("transformer.layers.{i}.ff.ff.2.bias", "layers_{i}/ff/proj_out/bias", None),
]
_SAT_DIT_BLOCK_BUFFERS = ["transformer.layers.{i}.pre_norm.beta", "transformer.layers.{i}.cross_attend_norm.beta",
                          "transformer.layers.{i}.ff_norm.beta"]

_DIFFUSERS_DIT_TOP: list[Row] = [
    ("time_proj.weight", "timestep_features/kernel", None),
    ("timestep_proj.0.weight", "to_timestep_embed/in_proj/kernel", linear),
    ("timestep_proj.0.bias", "to_timestep_embed/in_proj/bias", None),
    ("timestep_proj.2.weight", "to_timestep_embed/out_proj/kernel", linear),
    ("timestep_proj.2.bias", "to_timestep_embed/out_proj/bias", None),
    ("cross_attention_proj.0.weight", "to_cond_embed/in_proj/kernel", linear),
    ("cross_attention_proj.2.weight", "to_cond_embed/out_proj/kernel", linear),
    ("global_proj.0.weight", "to_global_embed/in_proj/kernel", linear),
    ("global_proj.2.weight", "to_global_embed/out_proj/kernel", linear),
    ("preprocess_conv.weight", "preprocess_conv/kernel", conv1x1),
    ("postprocess_conv.weight", "postprocess_conv/kernel", conv1x1),
    ("proj_in.weight", "project_in/kernel", linear),
    ("proj_out.weight", "project_out/kernel", linear),
]
_DIFFUSERS_DIT_BLOCK: list[Row] = [
    ("transformer_blocks.{i}.norm1.weight", "layers_{i}/pre_norm/scale", None),
    (("transformer_blocks.{i}.attn1.to_q.weight", "transformer_blocks.{i}.attn1.to_k.weight",
      "transformer_blocks.{i}.attn1.to_v.weight"), "layers_{i}/self_attn/qkv/kernel", fuse),
    ("transformer_blocks.{i}.attn1.to_out.0.weight", "layers_{i}/self_attn/out/kernel", linear),
    ("transformer_blocks.{i}.norm2.weight", "layers_{i}/cross_attn_norm/scale", None),
    ("transformer_blocks.{i}.attn2.to_q.weight", "layers_{i}/cross_attn/q/kernel", linear),
    (("transformer_blocks.{i}.attn2.to_k.weight", "transformer_blocks.{i}.attn2.to_v.weight"),
     "layers_{i}/cross_attn/kv/kernel", fuse),
    ("transformer_blocks.{i}.attn2.to_out.0.weight", "layers_{i}/cross_attn/out/kernel", linear),
    ("transformer_blocks.{i}.norm3.weight", "layers_{i}/ff_norm/scale", None),
    ("transformer_blocks.{i}.ff.net.0.proj.weight", "layers_{i}/ff/proj_in/kernel", linear),
    ("transformer_blocks.{i}.ff.net.0.proj.bias", "layers_{i}/ff/proj_in/bias", None),
    ("transformer_blocks.{i}.ff.net.2.weight", "layers_{i}/ff/proj_out/kernel", linear),
    ("transformer_blocks.{i}.ff.net.2.bias", "layers_{i}/ff/proj_out/bias", None),
]
# diffusers' LayerNorms carry a bias; Stable Audio's are bias-free, so a converted model has zeros.
_DIFFUSERS_DIT_BLOCK_BUFFERS = ["transformer_blocks.{i}.norm1.bias", "transformer_blocks.{i}.norm2.bias",
                                "transformer_blocks.{i}.norm3.bias"]


def _number_rows(src: str, dst: str) -> list[Row]:
    return [(f"{src}.0.weights", f"{dst}/embedder/weights", flat),
            (f"{src}.1.weight", f"{dst}/embedder/proj/kernel", linear),
            (f"{src}.1.bias", f"{dst}/embedder/proj/bias", None)]


def _sat_conditioner_rows(config: ConditioningConfig) -> list[Row]:
    rows = _number_rows("seconds_start.embedder.embedding", "seconds_start")
    rows += _number_rows("seconds_total.embedder.embedding", "seconds_total")
    if config.text_projection:
        rows += [("prompt.proj_out.weight", "prompt_proj/kernel", linear),
                 ("prompt.proj_out.bias", "prompt_proj/bias", None)]
    return rows


def _diffusers_projection_rows(config: ConditioningConfig) -> list[Row]:
    rows = _number_rows("start_number_conditioner.time_positional_embedding", "seconds_start")
    rows += _number_rows("end_number_conditioner.time_positional_embedding", "seconds_total")
    if config.text_projection:
        rows += [("text_projection.weight", "prompt_proj/kernel", linear),
                 ("text_projection.bias", "prompt_proj/bias", None)]
    return rows


def _rotary_inv_freq(config: DiTConfig) -> np.ndarray:
    d = config.rotary_features
    return (1.0 / (config.rotary_base ** (np.arange(0, d, 2, dtype=np.float32) / d))).astype(np.float32)


def _dit_sat(state, config: DiTConfig, report: Report, prefix: str) -> dict:
    rows = expand(_SAT_DIT_TOP + _SAT_DIT_BLOCK, i=range(config.depth))
    checks = [(k.format(i=i), zeros) for k in _SAT_DIT_BLOCK_BUFFERS for i in range(config.depth)]
    checks.append(("transformer.rotary_pos_emb.inv_freq", equals(_rotary_inv_freq(config), "rotary frequencies")))
    return convert_into(report, state, rows, dit_mod.param_shapes(config), prefix, checks)


def _dit_diffusers(state, config: DiTConfig, report: Report) -> dict:
    rows = expand(_DIFFUSERS_DIT_TOP + _DIFFUSERS_DIT_BLOCK, i=range(config.depth))
    checks = [(k.format(i=i), zeros) for k in _DIFFUSERS_DIT_BLOCK_BUFFERS for i in range(config.depth)]
    return convert_into(report, state, rows, dit_mod.param_shapes(config), "", checks)


# --------------------------------------------------------------------------------------------
# Public importers

def import_dit_sat(state: dict[str, np.ndarray], config: DiTConfig, prefix: str = "model.model.",
                   source: str = "the stable-audio-tools state dict") -> dict:
    """DiT parameters from a stable-audio-tools state dict (keys under `prefix`)."""
    report = Report()
    params = _dit_sat(state, config, report, prefix)
    report.raise_if_any(f"the DiT ({_describe_dit(config)})", source)
    return params


def import_dit_diffusers(state: dict[str, np.ndarray], config: DiTConfig,
                         source: str = "the diffusers StableAudioDiTModel state dict") -> dict:
    """DiT parameters from a diffusers `StableAudioDiTModel` state dict."""
    report = Report()
    params = _dit_diffusers(state, config, report)
    report.raise_if_any(f"the DiT ({_describe_dit(config)})", source)
    return params


def import_conditioners_sat(state: dict[str, np.ndarray], config: ConditioningConfig,
                            prefix: str = "conditioner.conditioners.",
                            source: str = "the stable-audio-tools state dict") -> dict:
    """Number conditioners (and the optional text projection) from a stable-audio-tools state dict."""
    report = Report()
    params = convert_into(report, state, _sat_conditioner_rows(config), cond_mod.param_shapes(config), prefix,
                          ignore=(r"prompt\.model\..*",))
    report.raise_if_any("the SAO conditioners", source)
    return params


def import_projection_diffusers(state: dict[str, np.ndarray], config: ConditioningConfig,
                                source: str = "the diffusers StableAudioProjectionModel state dict") -> dict:
    """Number conditioners (and the optional text projection) from diffusers' projection model."""
    report = Report()
    params = convert_into(report, state, _diffusers_projection_rows(config), cond_mod.param_shapes(config))
    report.raise_if_any("the SAO conditioners", source)
    return params


def import_sat_checkpoint(state: dict[str, np.ndarray], dit: DiTConfig, conditioning: ConditioningConfig,
                          t5: T5Config | None = None, source: str = "the stable-audio-tools checkpoint"
                          ) -> dict[str, dict | None]:
    """The DiT and conditioners of a whole stable-audio-tools SAO checkpoint, checked together.

    Keys under `pretransform.` (the autoencoder) are left to the autoencoder importer; any other
    key that neither the DiT nor the conditioner table takes is reported. If the file carries a
    trainable T5 (`conditioner.conditioners.prompt.model.*`) and `t5` is given, it is imported too.
    Returns {"dit": ..., "conditioners": ..., "t5": ... or None}.
    """
    report = Report()
    known = ("model.model.", "conditioner.conditioners.", "pretransform.")
    report.unmatched += [k for k in state if not k.startswith(known)]
    out: dict[str, dict | None] = {"t5": None}
    out["dit"] = _dit_sat(state, dit, report, "model.model.")
    cond_prefix = "conditioner.conditioners."
    t5_prefix = cond_prefix + "prompt.model."
    out["conditioners"] = convert_into(report, state, _sat_conditioner_rows(conditioning),
                                       cond_mod.param_shapes(conditioning), cond_prefix,
                                       ignore=() if t5 is None else (r"prompt\.model\..*",))
    if t5 is not None and any(k.startswith(t5_prefix) for k in state):
        out["t5"] = convert_t5(report, state, t5, t5_prefix)
    report.raise_if_any(f"Stable Audio Open (DiT {_describe_dit(dit)})", source)
    return out


def _describe_dit(c: DiTConfig) -> str:
    return (f"{c.depth} layers, width {c.embed_dim}, {c.num_heads} heads, {c.kv_heads} kv heads, "
            f"{c.io_channels} io channels")


# --------------------------------------------------------------------------------------------
# Configs from foreign files

def dit_config_from_diffusers(cfg: dict) -> DiTConfig:
    """Our DiT config from a diffusers `StableAudioDiTModel` config.json dict."""
    name = cfg.get("_class_name", "StableAudioDiTModel")
    if name != "StableAudioDiTModel":
        raise CheckpointError(f"diffusers model class {name!r} is not a StableAudioDiTModel")
    heads = cfg.get("num_attention_heads", 24)
    head_dim = cfg.get("attention_head_dim", 64)
    io = cfg.get("in_channels", 64)
    if cfg.get("out_channels", io) != io:
        raise CheckpointError(f"in_channels {io} != out_channels {cfg.get('out_channels')}: the DiT maps latents to "
                              "latents of the same width")
    return from_dict(DiTConfig, {
        "io_channels": io, "embed_dim": heads * head_dim, "depth": cfg.get("num_layers", 24),
        "num_heads": heads, "cond_token_dim": cfg.get("cross_attention_input_dim", 768),
        "cond_embed_dim": cfg.get("cross_attention_dim", 768),
        "num_kv_heads": cfg.get("num_key_value_attention_heads", 12),
        "global_cond_dim": cfg.get("global_states_input_dim", 1536),
        "timestep_features_dim": cfg.get("time_proj_dim", 256),
        # the diffusers pipeline rotates head_dim // 2 features (stable-audio-tools: at least 32)
        "rotary_dim": head_dim // 2,
    })


def conditioning_config_from_diffusers(cfg: dict, max_length: int = 128) -> ConditioningConfig:
    """Our conditioning config from a diffusers `StableAudioProjectionModel` config.json dict."""
    name = cfg.get("_class_name", "StableAudioProjectionModel")
    if name != "StableAudioProjectionModel":
        raise CheckpointError(f"diffusers model class {name!r} is not a StableAudioProjectionModel")
    text_dim, cond_dim = cfg["text_encoder_dim"], cfg["conditioning_dim"]
    number = {"min_val": float(cfg["min_value"]), "max_val": float(cfg["max_value"])}
    return from_dict(ConditioningConfig, {
        "cond_dim": cond_dim, "text_dim": text_dim, "text_projection": text_dim != cond_dim,
        "max_length": max_length, "seconds_start": number, "seconds_total": number})


# stable-audio-tools DiT options and the values sa-jax implements (the reference's defaults).
_SAT_DIT_FIXED = {
    "patch_size": 1, "input_concat_dim": 0, "prepend_cond_dim": 0, "transformer_type": "continuous_transformer",
    "global_cond_type": "prepend", "timestep_cond_type": "global", "rotary_pos_emb": True, "causal": False,
    "zero_init_branch_outputs": True, "conformer": False, "use_sinusoidal_emb": False, "use_abs_pos_emb": False,
    "num_memory_tokens": 0, "sliding_window": None, "final_cross_attn_ix": -1, "add_rope": False,
    "layer_scale": False, "remove_norms": False, "attn_kwargs": {}, "ff_kwargs": {}, "norm_kwargs": {},
}
_SAT_DIT_USED = {"io_channels", "embed_dim", "depth", "num_heads", "cond_token_dim", "global_cond_dim",
                 "project_cond_tokens", "project_global_cond", "diffusion_objective", "timestep_embed_dim"}
_T5_DIMS = {"t5-small": 512, "t5-base": 768, "t5-large": 1024, "t5-3b": 1024, "t5-11b": 1024,
            "google/t5-v1_1-xl": 2048, "google/t5-v1_1-xxl": 4096, "google/flan-t5-small": 512,
            "google/flan-t5-base": 768, "google/flan-t5-large": 1024, "google/flan-t5-xl": 2048,
            "google/flan-t5-xxl": 4096}


def sat_model_configs(model_config: dict) -> tuple[DiTConfig, ConditioningConfig, str]:
    """(DiT config, conditioning config, T5 model name) of a stable-audio-tools SAO `model_config.json`."""
    if model_config.get("model_type") not in ("diffusion_cond", "diffusion_cond_inpaint"):
        raise ConfigError(f"model_type {model_config.get('model_type')!r} is not 'diffusion_cond' (a "
                          "conditioned diffusion model such as Stable Audio Open) or 'diffusion_cond_inpaint' "
                          "(one trained with inpainting inputs)")
    model = model_config.get("model", {})
    diffusion = model.get("diffusion", {})
    if diffusion.get("type") != "dit":
        raise ConfigError(f"diffusion type {diffusion.get('type')!r} is not 'dit'")
    dc = diffusion.get("config", {})
    problems = []
    for key, value in dc.items():
        if key in _SAT_DIT_USED or key == "input_concat_dim":
            continue
        if key not in _SAT_DIT_FIXED:
            problems.append(f"unknown DiT option {key!r}")
        elif value != _SAT_DIT_FIXED[key] and not (value in (None, {}) and _SAT_DIT_FIXED[key] in (None, {})):
            problems.append(f"DiT option {key}={value!r} is not supported (sa-jax implements {_SAT_DIT_FIXED[key]!r})")
    if problems:
        raise ConfigError("model_config.json: " + "; ".join(problems))
    embed = dc.get("embed_dim", 768)
    cond_tokens = dc.get("cond_token_dim", 0)
    if cond_tokens <= 0 or dc.get("global_cond_dim", 0) <= 0:
        raise ConfigError("model_config.json: sa-jax's DiT needs cond_token_dim > 0 and global_cond_dim > 0")
    if not dc.get("project_global_cond", True) and dc["global_cond_dim"] != embed:
        raise ConfigError("model_config.json: project_global_cond=false needs global_cond_dim == embed_dim")
    dit = from_dict(DiTConfig, {
        "io_channels": dc.get("io_channels", 32), "embed_dim": embed, "depth": dc.get("depth", 12),
        "num_heads": dc.get("num_heads", 8), "cond_token_dim": cond_tokens,
        "cond_embed_dim": embed if dc.get("project_cond_tokens", True) else None,
        "global_cond_dim": dc["global_cond_dim"]})

    conditioning = model.get("conditioning", {})
    cond_dim = conditioning.get("cond_dim", 768)
    by_id = {c.get("id"): c for c in conditioning.get("configs", [])}
    cross_ids = tuple(diffusion.get("cross_attention_cond_ids", []))
    global_ids = tuple(diffusion.get("global_cond_ids", []))
    if diffusion.get("prepend_cond_ids"):
        raise ConfigError("model_config.json: diffusion.prepend_cond_ids is not supported by sa-jax's SAO path")
    concat_ids = tuple(diffusion.get("input_concat_ids", []))
    bad = [i for i in concat_ids if i not in cond_mod.INPAINT_IDS] + sorted(
        {i for i in concat_ids if concat_ids.count(i) > 1})
    if bad:
        raise ConfigError(f"model_config.json: diffusion.input_concat_ids {list(concat_ids)}: sa-jax supports "
                          f"each of {list(cond_mod.INPAINT_IDS)} at most once, not {bad}")
    concat_dim = sum(1 if i == "inpaint_mask" else dit.io_channels for i in concat_ids)
    if dc.get("input_concat_dim", 0) != concat_dim:
        raise ConfigError(f"model_config.json: the DiT's input_concat_dim is {dc.get('input_concat_dim', 0)} but "
                          f"input_concat_ids {list(concat_ids)} give {concat_dim} channels (inpaint_mask 1, "
                          f"inpaint_masked_input io_channels {dit.io_channels})")
    dit = dit.replace(input_concat_dim=concat_dim)
    unknown = set(by_id) - set(cond_mod.ALL_IDS)
    if unknown:
        raise ConfigError(f"model_config.json: conditioners {sorted(unknown)} are not supported; "
                          f"sa-jax knows {list(cond_mod.ALL_IDS)}")
    numbers = {}
    for name in cond_mod.NUMBER_IDS:
        c = by_id.get(name, {"type": "number", "config": {}})
        if c.get("type") != "number":
            raise ConfigError(f"model_config.json: conditioner {name!r} has type {c.get('type')!r}, expected 'number'")
        cfg = c.get("config", {})
        numbers[name] = NumberConditionerConfig(float(cfg.get("min_val", 0)), float(cfg.get("max_val", 1)))
    prompt = by_id.get("prompt", {"type": "t5", "config": {}})
    if prompt.get("type") != "t5":
        raise ConfigError(f"model_config.json: the prompt conditioner has type {prompt.get('type')!r}; "
                          "sa-jax's SAO path supports 't5'")
    pc = prompt.get("config", {})
    t5_name = pc.get("t5_model_name", "t5-base")
    if t5_name not in _T5_DIMS:
        raise ConfigError(f"model_config.json: unknown T5 model {t5_name!r}; known: {sorted(_T5_DIMS)}")
    text_dim = _T5_DIMS[t5_name]
    conditioning_config = from_dict(ConditioningConfig, {
        "cond_dim": cond_dim, "text_dim": text_dim,
        "text_projection": bool(pc.get("project_out", False)) or text_dim != cond_dim,
        "max_length": pc.get("max_length", 128),
        "seconds_start": numbers["seconds_start"], "seconds_total": numbers["seconds_total"],
        "cross_attn_ids": cross_ids, "global_ids": global_ids, "input_concat_ids": concat_ids})
    if conditioning_config.global_dim != dit.global_cond_dim:
        raise ConfigError(f"model_config.json: the global conditioners give {conditioning_config.global_dim} "
                          f"features but the DiT expects global_cond_dim {dit.global_cond_dim}")
    if cond_dim != dit.cond_token_dim:
        raise ConfigError(f"model_config.json: cond_dim {cond_dim} != the DiT's cond_token_dim {dit.cond_token_dim}")
    return dit, conditioning_config, t5_name


# --------------------------------------------------------------------------------------------
# Files

_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                      "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin")


def _read_json(path: Path) -> dict:
    try:
        return read_json(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None


def load_diffusers_dit(folder: str | Path) -> tuple[DiTConfig, dict]:
    """(config, params) of the `transformer/` folder of a diffusers StableAudioPipeline."""
    folder = Path(folder)
    config = dit_config_from_diffusers(_read_json(folder / "config.json"))
    return config, import_dit_diffusers(read_weights(folder, _DIFFUSERS_WEIGHTS), config, source=str(folder))


def load_diffusers_projection(folder: str | Path, max_length: int = 128) -> tuple[ConditioningConfig, dict]:
    """(config, params) of the `projection_model/` folder of a diffusers StableAudioPipeline."""
    folder = Path(folder)
    config = conditioning_config_from_diffusers(_read_json(folder / "config.json"), max_length)
    return config, import_projection_diffusers(read_weights(folder, _DIFFUSERS_WEIGHTS), config, source=str(folder))


def load_diffusers_pipeline(folder: str | Path, max_length: int | None = None) -> dict:
    """DiT, conditioners, T5 encoder and tokenizer of a diffusers StableAudioPipeline folder.

    Returns {"dit": (DiTConfig, params), "conditioning": (ConditioningConfig, params),
    "t5": (T5Config, params), "tokenizer": the T5 tokenizer}. The VAE (`vae/`) is imported by the
    autoencoder importer. `max_length` (text tokens, in the conditioning config) defaults to the
    tokenizer's `model_max_length`, as the diffusers pipeline pads to it (128 if the tokenizer leaves
    it unbounded); Stable Audio Open uses 128.
    """
    from sa_jax.checkpoints.t5 import check_t5_folder
    from sa_jax.checkpoints.tokenizer import load_tokenizer

    folder = Path(folder)
    needed = ["transformer", "projection_model", "text_encoder", "tokenizer"]
    missing = [n + "/" for n in needed if not (folder / n).is_dir()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a diffusers StableAudioPipeline folder; missing {missing}")
    check_t5_folder(folder / "text_encoder", folder / "tokenizer")   # names missing files first
    tokenizer = load_tokenizer(folder / "tokenizer")
    t5 = load_t5(folder / "text_encoder")
    if max_length is None:
        max_length = getattr(tokenizer, "model_max_length", 128)
        if not isinstance(max_length, int) or max_length > 4096:   # "unbounded" sentinel in HF tokenizers
            max_length = 128
    cond = load_diffusers_projection(folder / "projection_model", max_length)
    return {"dit": load_diffusers_dit(folder / "transformer"), "conditioning": cond, "t5": t5,
            "tokenizer": tokenizer}


def unwrap_training_state(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The exported-model view of a stable-audio-tools *training* checkpoint.

    A training wrapper stores the model under `diffusion.` and, with EMA, the averaged denoiser
    under `diffusion_ema.ema_model.`. As the reference's `export_model` does, the EMA denoiser
    replaces the online one; EMA bookkeeping (`diffusion_ema.initted`, `.step`) is dropped. A
    state dict without `diffusion.` keys (an exported model) is returned unchanged; keys outside
    both prefixes stay, so the importer reports them.
    """
    if not any(k.startswith("diffusion.") for k in state):
        return state
    ema = "diffusion_ema.ema_model."
    has_ema = any(k.startswith(ema) for k in state)
    out = {}
    for k, v in state.items():
        if k.startswith("diffusion."):
            inner = k[len("diffusion."):]
            if not (has_ema and inner.startswith("model.")):
                out[inner] = v
        elif k.startswith(ema):
            out["model." + k[len(ema):]] = v
        elif k not in ("diffusion_ema.initted", "diffusion_ema.step"):
            out[k] = v
    return out


def load_sat(model_config: str | Path | dict, weights: str | Path) -> dict:
    """DiT and conditioners of a stable-audio-tools SAO model (`model_config.json` + `model.safetensors`
    or `.ckpt`; a training checkpoint is unwrapped, preferring its EMA weights).

    Returns {"dit": (DiTConfig, params), "conditioning": (ConditioningConfig, params), "t5_name": str}.
    The T5 encoder is loaded separately from a local folder (`sa_jax.encoders.T5TextEncoder.load`).
    """
    if not isinstance(model_config, dict):
        model_config = _read_json(Path(model_config))
    dit, cond, t5_name = sat_model_configs(model_config)
    state = unwrap_training_state(read_state_dict(weights))
    out = import_sat_checkpoint(state, dit, cond, source=str(weights))
    return {"dit": (dit, out["dit"]), "conditioning": (cond, out["conditioners"]), "t5_name": t5_name}
