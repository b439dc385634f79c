"""The frozen networks of a diffusion run: the text encoder and the autoencoder.

    frozen = load_frozen(cfg)                     # from cfg.text and cfg.autoencoder (either may be absent)
    ids, mask = frozen.tokenize(prompts)          # host side, numpy
    feats = frozen.encode_text(params["text"], ids, mask)          # inside the jitted step
    latents = frozen.encode_audio(params["vae"], audio, key)       # inside the jitted step

Both run inside the train step on the batch's devices, as pure functions of parameters that are a
separate, non-donated step argument (sharded by the same FSDP rules as the trained model, never
updated, never checkpointed: they come from their own files on every start). Gradients stop at
their outputs. The autoencoder encodes as stable-audio-tools' pretransform does in training: a
posterior draw, divided by the latent scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.errors import ConfigError


class FrozenModels:
    """`base`: a LoRA run's frozen model, the trainable tree {"conditioner", "denoiser"} the adapters are
    added to (in lora.base_dtype); None otherwise."""

    def __init__(self, text_encoder=None, text_kind: str | None = None, text_layer: int = -2, autoencoder=None,
                 base=None):
        self.text_encoder, self.text_kind, self.text_layer = text_encoder, text_kind, text_layer
        self.autoencoder = autoencoder
        self.base = base

    @property
    def params(self) -> dict:
        out = {}
        if self.text_encoder is not None:
            out["text"] = self.text_encoder.params
        if self.autoencoder is not None:
            out["vae"] = self.autoencoder.params
        if self.base is not None:
            out["base"] = self.base
        return out

    def signature(self) -> str:
        """What the jitted step depends on besides parameter values (for compile caches)."""
        text = None if self.text_encoder is None else (self.text_kind, self.text_encoder.config,
                                                       self.text_encoder.max_length, self.text_layer)
        vae = None if self.autoencoder is None else self.autoencoder.config
        return repr((text, vae))

    # --- text ------------------------------------------------------------------------------------
    def tokenize(self, prompts) -> tuple[np.ndarray, np.ndarray]:
        return self.text_encoder.tokenize(list(prompts))

    def encode_text(self, params, ids, mask):
        """(batch, tokens) ids and mask -> (batch, tokens, width) float32 features, zero at padding."""
        enc = self.text_encoder
        if self.text_kind == "t5":
            h = enc.module.apply({"params": params}, ids, mask)
        else:
            states, _ = enc.module.apply({"params": params}, ids, mask)
            h = states[self.text_layer]
        h = h.astype(jnp.float32)
        if self.text_kind == "t5":   # as T5Conditioner: padding positions zeroed
            h = h * mask[..., None].astype(h.dtype)
        return jax.lax.stop_gradient(h)

    # --- audio ---------------------------------------------------------------------------------
    def encode_audio(self, params, audio, key):
        """(batch, channels, samples) -> latents (batch, latent_dim, samples // ratio), a posterior draw."""
        ae = self.autoencoder
        x = jnp.swapaxes(audio.astype(jnp.float32), 1, 2)
        mean, std = ae.module.apply({"params": params}, x, method=ae.module.encode_stats)
        z = mean + std * jax.random.normal(key, mean.shape, mean.dtype)
        return jax.lax.stop_gradient(jnp.swapaxes(z / ae.config.scale, 1, 2).astype(jnp.float32))


def base_params(cfg, params):
    """A LoRA run's frozen base as the step holds it: float32 `params` in lora.base_dtype."""
    dtype = jnp.bfloat16 if cfg.lora.base_dtype == "bfloat16" else jnp.float32
    return jax.tree.map(lambda x: np.asarray(x).astype(dtype), params)


def load_frozen(cfg, init=None) -> FrozenModels:
    """The text encoder named by cfg.text (sources t5 and clap) and the autoencoder at
    cfg.autoencoder.path, checked against the model config; with `init` (the model at init.from,
    sa_jax.training.finetune.InitModel) its text encoder and autoencoder (an autoencoder.path still
    wins), and for a LoRA run its weights as the frozen base."""
    from sa_jax.training.model import text_shape

    t, text_encoder = cfg.text, None
    n, d = text_shape(cfg.model)
    if init is not None:
        autoencoder = init.autoencoder
        if cfg.autoencoder.path:
            from sa_jax.autoencoder import Autoencoder

            autoencoder = Autoencoder.load(cfg.autoencoder.path)
        base = base_params(cfg, init.params) if cfg.lora.enabled else None
        frozen = FrozenModels(init.text_encoder, init.text_kind, init.text_layer,
                              autoencoder, base)
        check_autoencoder(cfg, autoencoder, f"init.from {init.path}")
        return frozen
    if t.source in ("t5", "clap") and t.path and _is_model_folder(t.path):
        # an sa-jax model: its own text encoder, so a new denoiser learns that model's conditioning
        from sa_jax.pipeline import StableAudio

        text_encoder = StableAudio.load(t.path).family.text_encoder    # the config fits source to family
        config = text_encoder.config
        width = config.d_model if t.source == "t5" else config.hidden_size
        if text_encoder.max_length != n:
            raise ConfigError(f"text.path {t.path}: its text encoder takes {text_encoder.max_length} tokens but the "
                              f"model is configured for {n} (model.text_tokens)")
    elif t.source == "t5":
        from sa_jax.encoders import T5TextEncoder

        text_encoder = T5TextEncoder.load(t.path, t.tokenizer, max_length=n)
        width = text_encoder.config.d_model
    elif t.source == "clap":
        from sa_jax.encoders import load_clap_text_encoder

        text_encoder = load_clap_text_encoder(t.path, t.tokenizer or t.path, max_length=n)
        width = text_encoder.config.hidden_size
        layers = text_encoder.config.num_layers
        if not -(layers + 1) <= t.layer <= layers:
            raise ConfigError(f"text.layer {t.layer} is outside the CLAP text tower's "
                              f"{-(layers + 1)}..{layers} hidden states")
    if text_encoder is not None and width != d:
        raise ConfigError(f"the {t.source} text encoder at {t.path} is {width} wide but the model takes {d}-d "
                          "text features (model.text_dim / model.conditioning.text_dim)")
    autoencoder = None
    if cfg.autoencoder.path:
        from sa_jax.autoencoder import Autoencoder

        autoencoder = Autoencoder.load(cfg.autoencoder.path)
        check_autoencoder(cfg, autoencoder, cfg.autoencoder.path)
    return FrozenModels(text_encoder, t.source if text_encoder is not None else None, t.layer, autoencoder)


def _is_model_folder(path) -> bool:
    from pathlib import Path

    from sa_jax.checkpoints import store

    return Path(path).is_dir() and store.is_checkpoint(path)


def check_autoencoder(cfg, autoencoder, where) -> None:
    """The autoencoder fits the denoiser (latent channels) and, for audio data, the data's window and rate."""
    if autoencoder.latent_dim != cfg.model.latent_dim:
        raise ConfigError(f"the autoencoder of {where} has {autoencoder.latent_dim} latent "
                          f"channels but the denoiser takes {cfg.model.latent_dim}")
    if cfg.data.kind != "latents":
        if cfg.data.window % autoencoder.downsampling_ratio:
            raise ConfigError(f"data.window {cfg.data.window} must be a multiple of the autoencoder's "
                              f"downsampling ratio {autoencoder.downsampling_ratio}")
        if cfg.data.sample_rate != autoencoder.sample_rate:
            raise ConfigError(f"data.sample_rate {cfg.data.sample_rate} differs from the autoencoder's "
                              f"{autoencoder.sample_rate} Hz")


def plan_frozen(cfg) -> tuple[FrozenModels, list[str]]:
    """The frozen models of `cfg` with abstract parameters (jax.ShapeDtypeStruct trees) for `--plan`:
    no weights are read, only config files. The text encoder's shapes come from the config.json in
    text.path (a T5 or ClapModel/BERT folder); the autoencoder's from the config at autoencoder.path (an
    sa-jax checkpoint's config.yaml, a stable-audio-tools model_config.json, a diffusers vae/config.json)
    or from a config given in its place (a VAE YAML or a packaged name such as vae_sao). A model with no
    config on disk is planned with its family's reference shapes (T5-base; CLAP's RoBERTa-base text tower;
    vae_sao / vae_sa1); each such substitution is one line of the returned notes."""
    import types
    from pathlib import Path

    from sa_jax.checkpoints import sat_config, store
    from sa_jax.checkpoints.autoencoder import diffusers_config
    from sa_jax.config import from_dict, load_yaml, read_json, resolve_config
    from sa_jax.models.autoencoder import AudioAutoencoder, config_from_dict
    from sa_jax.training.model import text_shape

    notes, key = [], jax.random.key(0)
    t, text_encoder = cfg.text, None
    n, d = text_shape(cfg.model)
    if t.source in ("t5", "clap"):
        # a run from init.from takes its encoder from that model: without text.path, the reference shapes
        hf_config = Path(t.path) / "config.json" if t.path else Path("/nonexistent/config.json")
        # an sa-jax checkpoint keeps its encoder's config in config.yaml (`plan.follow_init` points text.path there)
        section = store.read_config(t.path).get({"t5": "t5", "clap": "clap_text"}[t.source]) if (
            t.path and Path(t.path).is_dir() and store.is_checkpoint(t.path)) else None
        if t.source == "t5":
            from sa_jax.models.t5 import T5Config, T5Encoder

            config = (from_dict(T5Config, section, "t5") if section is not None else
                      T5Config.from_hf(read_json(hf_config)) if hf_config.is_file() else T5Config())
            module, width, what = T5Encoder(config), config.d_model, "T5-base"
        else:
            from sa_jax.checkpoints.bert import read_bert_config
            from sa_jax.models.bert import BertConfig, BertEncoder

            config = (from_dict(BertConfig, section, "clap_text") if section is not None else
                      read_bert_config(t.path) if hf_config.is_file() else BertConfig())
            module, width, what = BertEncoder(config), config.hidden_size, "CLAP's RoBERTa-base text tower"
            if not -(config.num_layers + 1) <= t.layer <= config.num_layers:
                raise ConfigError(f"text.layer {t.layer} is outside the CLAP text tower's "
                                  f"{-(config.num_layers + 1)}..{config.num_layers} hidden states")
        if section is None and not hf_config.is_file():
            notes.append(f"text.path {t.path} has no config.json here: planned with {what}'s shapes")
        if width != d:
            raise ConfigError(f"the {t.source} text encoder ({t.path}) is {width} wide but the model takes {d}-d "
                              "text features (model.text_dim / model.conditioning.text_dim)")
        ids, mask = jnp.zeros((1, n), jnp.int32), jnp.ones((1, n), bool)
        params = jax.eval_shape(lambda: module.init(key, ids, mask)["params"])
        text_encoder = types.SimpleNamespace(module=module, config=config, params=params, max_length=n)
    autoencoder = None
    if cfg.autoencoder.path:
        path = Path(cfg.autoencoder.path)
        if path.is_dir() and store.is_checkpoint(path):
            ae = config_from_dict(store.read_config(path)["autoencoder"])
        elif path.is_dir() and (path / "model_config.json").is_file():
            ae = sat_config.autoencoder_config(sat_config.read(path / "model_config.json"))
        elif path.is_dir() and any((p / "config.json").is_file() for p in (path / "vae", path)):
            ae = diffusers_config(read_json(path / "vae" / "config.json" if (path / "vae").is_dir()
                                            else path / "config.json"))
        elif path.suffix == ".json" and path.is_file():
            ae = sat_config.autoencoder_config(sat_config.read(path))
        else:
            try:   # a VAE config in place of the weights: a YAML or a packaged name
                data = load_yaml(resolve_config(path))
            except ConfigError:
                reference = {"sao": "vae_sao", "sa1": "vae_sa1"}[cfg.model.family]
                notes.append(f"autoencoder.path {path} is neither a model folder nor a config here: planned with "
                             f"{reference}'s shapes")
                data = load_yaml(reference)
            ae = config_from_dict(data.get("autoencoder", data))
        if ae.latent_dim != cfg.model.latent_dim:
            raise ConfigError(f"the autoencoder ({path}) has {ae.latent_dim} latent channels but the denoiser takes "
                              f"{cfg.model.latent_dim}")
        if cfg.data.kind != "latents" and cfg.data.window % ae.downsampling_ratio:
            raise ConfigError(f"data.window {cfg.data.window} must be a multiple of the autoencoder's downsampling "
                              f"ratio {ae.downsampling_ratio}")
        if cfg.data.kind != "latents" and cfg.data.sample_rate != ae.sample_rate:
            raise ConfigError(f"data.sample_rate {cfg.data.sample_rate} differs from the autoencoder's "
                              f"{ae.sample_rate} Hz")
        module = AudioAutoencoder(ae)
        x = jnp.zeros((1, ae.downsampling_ratio, ae.io_channels), jnp.float32)
        params = jax.eval_shape(lambda: module.init(key, x, key)["params"])
        autoencoder = types.SimpleNamespace(module=module, config=ae, params=params,
                                            downsampling_ratio=ae.downsampling_ratio, latent_dim=ae.latent_dim,
                                            sample_rate=ae.sample_rate)
    base = None
    if cfg.lora.enabled:   # a LoRA run's frozen model: a step argument, as in training
        from sa_jax.training.model import init_params

        dtype = jnp.bfloat16 if cfg.lora.base_dtype == "bfloat16" else jnp.float32
        base = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, dtype),
                            jax.eval_shape(lambda: init_params(cfg.model, key)))
    frozen = FrozenModels(text_encoder, t.source if text_encoder is not None else None, t.layer, autoencoder, base)
    return frozen, notes
