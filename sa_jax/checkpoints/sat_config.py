"""Reading stable-audio-tools `model_config.json` files as they are.

The reference describes a model as `{model_type, sample_rate, sample_size, audio_channels,
model: {...}, training: {...}}`. Each model family takes its own section from here; for now the
autoencoder (a bare `autoencoder` model, or the `pretransform` of a diffusion model).
"""

from __future__ import annotations

from pathlib import Path

from sa_jax.config import read_json
from sa_jax.errors import ConfigError
from sa_jax.models.autoencoder import AutoencoderConfig, config_from_dict

# Runtime switches of the reference's AutoencoderPretransform that do not change the weights.
_PRETRANSFORM_RUNTIME_KEYS = {"type", "config", "scale", "model_half", "iterate_batch", "chunked",
                              "enable_grad"}


def read(path: str | Path) -> dict:
    path = Path(path)
    data = read_json(path, "model config")   # one-line ConfigError naming the file and line
    if not isinstance(data, dict) or "model_type" not in data or "model" not in data:
        raise ConfigError(f"{path} is not a stable-audio-tools model config "
                          "(it needs model_type and model)")
    return data


def autoencoder_config(model_config: dict) -> AutoencoderConfig:
    """The autoencoder of a stable-audio-tools model config, as our typed config."""
    model_type = model_config.get("model_type")
    model = model_config["model"]
    scale = 1.0
    if model_type == "autoencoder":
        section = model
    else:
        pretransform = model.get("pretransform")
        if pretransform is None:
            raise ConfigError(f"this {model_type!r} model config has no pretransform (autoencoder) section")
        if pretransform.get("type") != "autoencoder":
            raise ConfigError(f"the pretransform is of type {pretransform.get('type')!r}; "
                              "sa-jax supports 'autoencoder' pretransforms")
        unknown = set(pretransform) - _PRETRANSFORM_RUNTIME_KEYS
        if unknown:
            raise ConfigError(f"pretransform: unknown key(s) {sorted(unknown)}; "
                              f"valid keys are {sorted(_PRETRANSFORM_RUNTIME_KEYS)}")
        section = pretransform["config"]
        scale = float(pretransform.get("scale", 1.0))
    if "pretransform" in section:
        raise ConfigError("autoencoders with their own pretransform are not supported by sa-jax")
    return config_from_dict({**section, "sample_rate": model_config.get("sample_rate", 44100), "scale": scale})
