"""Fine-tuning a diffusion run from a model (`init.from`), in whole or with LoRA adapters (`lora:`).

    cfg, init = load_init(cfg)      # the model at cfg.init.from: the run's model section, its weights,
                                    # its text encoder and autoencoder (frozen), its content hash
    tree = adapter_tree(adapters)   # sa_jax.nn.lora's {path: {"down", "up"}} <-> nested, as the state holds it
    flat = adapter_dict(tree)

`init.from` takes anything `StableAudio.load` reads (an sa-jax checkpoint, a stable-audio-tools release
with its T5 in t5/ or at text.path, a diffusers folder, a run's export). The run's model section comes
from that model; a model setting of the config that is not its default and differs from the model's is an
error naming both values (compute_dtype and remat are the run's own choices). The model's trainable tree
{"conditioner", "denoiser"} becomes the run's starting parameters (and EMA); its text encoder and
autoencoder are the run's frozen ones. `init.hash` records the content hash of that tree
(sa_jax.nn.lora.content_hash): the checkpoints keep it, and a resume on other weights is refused.

With `lora.rank > 0` the loaded tree is the frozen base (a step argument, `frozen_params["base"]`) and
the train state holds only the adapters, nested by their kernel paths (Orbax stores nested names).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Optional

import jax
import numpy as np

from sa_jax.config import to_dict
from sa_jax.errors import CheckpointError, ConfigError
from sa_jax.training.engine import flatten
from sa_jax.tree import unflatten

# Model settings that are the run's choice, not the loaded model's.
RUN_CHOICES = ("compute_dtype", "remat")


@dataclass
class InitModel:
    """What a run takes from the model at `init.from`."""

    path: str
    params: Any                 # {"conditioner", "denoiser"}: float32 host arrays
    hash: str                   # sa_jax.nn.lora.content_hash(params)
    text_encoder: Any
    text_kind: str              # "t5" or "clap"
    text_layer: int
    autoencoder: Any
    defaults: Any               # the model's SamplingDefaults (for the export and demos)


def _model_of(sa, cfg):
    """(ModelConfig fields the loaded model fixes, its trainable tree, text kind, text layer)."""
    f = sa.family
    if f.name == "sao":
        fields = {"family": "sao", "dit": f.dit_config, "conditioning": f.cond_config}
        return fields, f.trainable(), "t5", cfg.text.layer
    start, total = f.timing
    if start != total:
        raise ConfigError(f"init.from {cfg.init_from}: its seconds_start and seconds_total embeddings have "
                          f"different ranges ({start} vs {total}); a training run uses one range for both")
    fields = {"family": "sa1", "unet": f.unet_config, "timing": start, "text_tokens": f.text_encoder.max_length,
              "text_dim": f.unet_config.context_embedding_features}
    return fields, f.trainable(), "clap", f.text_layer


def _plain(value):
    return json.loads(json.dumps(to_dict(value)))


def resolve_model(cfg, fields: dict):
    """cfg.model with the loaded model's `fields`; ConfigError when the config sets one of them (a value
    other than the schema's default) to something else, naming both values."""
    model_cls = type(cfg.model)
    default = flatten(_plain(model_cls()), "model.")
    given = flatten(_plain(cfg.model), "model.")
    resolved = dataclasses.replace(cfg.model, **fields)
    loaded = flatten(_plain(resolved), "model.")
    clashes = [f"{k}: the config says {json.dumps(given[k])}, the model has {json.dumps(loaded.get(k))}"
               for k in sorted(given) if k.split(".")[1] not in RUN_CHOICES
               and given[k] != default.get(k) and given[k] != loaded.get(k)]
    if clashes:
        raise ConfigError(f"init.from {cfg.init_from}: the config's model section contradicts the model it starts "
                          "from (" + "; ".join(clashes) + "). Remove those settings (the model's are used) or "
                          "start from another model")
    resolved.validate()
    return resolved


def load_init(cfg):
    """(cfg resolved against the model at cfg.init.from, InitModel), or (cfg, None) without init.from."""
    if not cfg.init_from:
        return cfg, None
    from sa_jax.nn.lora import content_hash
    from sa_jax.pipeline import StableAudio

    path = cfg.init_from
    t = cfg.text
    # a stable-audio-tools release keeps its text encoder apart: text.path (and text.tokenizer) name it
    try:
        sa = StableAudio.load(path, t5=t.path if t.source != "clap" else None,
                              clap=t.path if t.source == "clap" else None, clap_tokenizer=t.tokenizer)
    except (FileNotFoundError, CheckpointError) as e:   # said as the run's setting
        raise type(e)(f"init.from: {e}") from e
    fields, params, kind, layer = _model_of(sa, cfg)
    params = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), params)
    digest = content_hash(params)
    pinned = cfg.init.get("hash")
    if pinned and pinned != digest:
        raise ConfigError(f"init.from {path}: its weights have content hash {digest}, but the run's init.hash is "
                          f"{pinned} (the model it was started from); resume with that model, or start a new "
                          "run (a new checkpoint.dir)")
    model = resolve_model(cfg, fields)
    text = dataclasses.replace(cfg.text, source=kind, layer=layer)
    resolved = dataclasses.replace(cfg, model=model, text=text, init={**cfg.init, "hash": digest})
    resolved.validate()
    init = InitModel(str(path), params, digest, sa.family.text_encoder, kind, layer, sa.autoencoder, sa.defaults)
    return resolved, init


def check_same_base(saved_config: dict, cfg, where) -> None:
    """A resumed run continues on the model it started from: ConfigError when the checkpoint's init.hash
    differs from the model's now at init.from (or the checkpoint is not of a run started from a model)."""
    if not cfg.init_from:
        return
    saved = (saved_config.get("init") or {})
    if saved.get("hash") != cfg.init.get("hash"):
        what = "adapters of" if cfg.lora.enabled else "a fine-tune of"
        raise ConfigError(f"{where} holds {what} the model at {saved.get('from')} (content hash {saved.get('hash')}), "
                          f"but init.from {cfg.init_from} has content hash {cfg.init.get('hash')}: a checkpoint "
                          "resumes only on the model it started from. Point init.from at that model, or use a new "
                          "checkpoint.dir")


# ---------------------------------------------------------------------------------------------
# LoRA: adapters as the state holds them


def adapter_tree(adapters: dict) -> dict:
    """{"a/b/kernel": {"down", "up"}} -> {"a": {"b": {"kernel": {"down", "up"}}}}."""
    return unflatten({f"{path}/{part}": x for path, ad in adapters.items() for part, x in ad.items()})


def adapter_dict(tree: dict, prefix: str = "") -> dict:
    """The inverse of `adapter_tree`."""
    out = {}
    for k, v in tree.items():
        if set(v) == {"down", "up"} and not isinstance(v["down"], dict):
            out[prefix + k] = dict(v)
        else:
            out.update(adapter_dict(v, f"{prefix}{k}/"))
    return out


def lora_targets(cfg) -> tuple[str, ...]:
    from sa_jax.nn.lora import default_targets

    return tuple(cfg.lora.targets) or default_targets(cfg.model.family)


def merged_params(cfg, adapters_tree, base, key: Optional[jax.Array] = None):
    """The base with the adapters added (LoRA dropout when `key` is given and lora.dropout > 0)."""
    from sa_jax.nn.lora import apply_adapters

    dropout = cfg.lora.dropout if key is not None else 0.0
    return apply_adapters(base, adapter_dict(adapters_tree), cfg.lora.scale, dropout=dropout, key=key)


def adapter_meta(cfg, step: int) -> dict:
    """adapter.json's fields for a LoRA run's export."""
    return {"family": cfg.model.family, "rank": cfg.lora.rank,
            "alpha": float(cfg.lora.rank if cfg.lora.alpha is None else cfg.lora.alpha),
            "targets": list(lora_targets(cfg)), "base_hash": cfg.init["hash"], "base_path": str(cfg.init_from),
            "step": int(step)}
