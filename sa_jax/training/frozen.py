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
    def __init__(self, text_encoder=None, text_kind: str | None = None, text_layer: int = -2, autoencoder=None):
        self.text_encoder, self.text_kind, self.text_layer = text_encoder, text_kind, text_layer
        self.autoencoder = autoencoder

    @property
    def params(self) -> dict:
        out = {}
        if self.text_encoder is not None:
            out["text"] = self.text_encoder.params
        if self.autoencoder is not None:
            out["vae"] = self.autoencoder.params
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


def load_frozen(cfg) -> FrozenModels:
    """The text encoder named by cfg.text (sources t5 and clap) and the autoencoder at
    cfg.autoencoder.path, checked against the model config."""
    from sa_jax.training.model import text_shape

    t, text_encoder = cfg.text, None
    n, d = text_shape(cfg.model)
    if t.source == "t5":
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
        if autoencoder.latent_dim != cfg.model.latent_dim:
            raise ConfigError(f"the autoencoder at {cfg.autoencoder.path} has {autoencoder.latent_dim} latent "
                              f"channels but the denoiser takes {cfg.model.latent_dim}")
        if cfg.data.kind != "latents":
            if cfg.data.window % autoencoder.downsampling_ratio:
                raise ConfigError(f"data.window {cfg.data.window} must be a multiple of the autoencoder's "
                                  f"downsampling ratio {autoencoder.downsampling_ratio}")
            if cfg.data.sample_rate != autoencoder.sample_rate:
                raise ConfigError(f"data.sample_rate {cfg.data.sample_rate} differs from the autoencoder's "
                                  f"{autoencoder.sample_rate} Hz")
    return FrozenModels(text_encoder, t.source if text_encoder is not None else None, t.layer, autoencoder)
