"""Typed configs: YAML files, dotted overrides, unknown keys, stable-audio-tools model_config.json."""

import json
from dataclasses import dataclass, field

import pytest

from sa_jax.checkpoints import sat_config
from sa_jax.config import ConfigError, apply_overrides, from_dict, load, load_yaml, to_dict
from sa_jax.models.autoencoder import (DACDecoderConfig, OobleckEncoderConfig, config_from_dict)


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-4
    betas: tuple[float, ...] = (0.9, 0.999)


@dataclass(frozen=True)
class Run:
    name: str = "run"
    steps: int = 10
    optim: Optim = field(default_factory=Optim)


def test_yaml_with_dotted_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: base\noptim:\n  lr: 0.001\n")
    run = load(Run, path, ["steps=500", "optim.betas=[0.8, 0.99]", "name=ablation"])
    assert run == Run(name="ablation", steps=500, optim=Optim(lr=0.001, betas=(0.8, 0.99)))
    assert load(Run, path, ["optim.lr=5e-5"]).optim.lr == 5e-5  # YAML 1.1 reads 5e-5 as a string
    assert from_dict(Run, to_dict(run)) == run


def test_unknown_keys_list_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"optim: unknown key\(s\) \['learning_rate'\]; valid keys are \['betas', 'lr'\]"):
        load(Run, None, ["optim.learning_rate=3"])
    with pytest.raises(ConfigError, match="valid keys are"):
        from_dict(Run, {"stepz": 3})


def test_wrong_types_and_malformed_overrides():
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        from_dict(Run, {"steps": "many"})
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides({}, ["steps"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"steps": 3}, ["steps.x=1"])


def test_shipped_configs_build():
    sao = config_from_dict(load_yaml("configs/vae_sao.yaml")["autoencoder"])
    assert isinstance(sao.encoder.config, OobleckEncoderConfig) and sao.downsampling_ratio == 2048
    sa1 = config_from_dict(load_yaml("configs/vae_sa1.yaml")["autoencoder"])
    assert isinstance(sa1.decoder.config, DACDecoderConfig) and sa1.downsampling_ratio == 1024


def test_autoencoder_config_is_checked():
    data = load_yaml("configs/vae_sao.yaml")["autoencoder"]
    with pytest.raises(ConfigError, match="multiply to 2048, but downsampling_ratio is 1024"):
        config_from_dict({**data, "downsampling_ratio": 1024})
    with pytest.raises(ConfigError, match="choose one of"):
        config_from_dict({**data, "encoder": {"type": "wavelet", "config": {}}})
    with pytest.raises(ConfigError, match="2 x latent_dim = 64"):
        config_from_dict({**data, "latent_dim": 32})


SAO_MODEL_CONFIG = {
    # The shape of Stable Audio Open 1.0's model_config.json (its autoencoder part in full).
    "model_type": "diffusion_cond", "sample_size": 2097152, "sample_rate": 44100, "audio_channels": 2,
    "model": {
        "pretransform": {"type": "autoencoder", "iterate_batch": True, "config": {
            "encoder": {"type": "oobleck", "requires_grad": False, "config": {
                "in_channels": 2, "channels": 128, "c_mults": [1, 2, 4, 8, 16], "strides": [2, 4, 4, 8, 8],
                "latent_dim": 128, "use_snake": True}},
            "decoder": {"type": "oobleck", "config": {
                "out_channels": 2, "channels": 128, "c_mults": [1, 2, 4, 8, 16], "strides": [2, 4, 4, 8, 8],
                "latent_dim": 64, "use_snake": True, "final_tanh": False}},
            "bottleneck": {"type": "vae"}, "latent_dim": 64, "downsampling_ratio": 2048, "io_channels": 2}},
        "conditioning": {"configs": [], "cond_dim": 768},
        "diffusion": {"type": "dit", "config": {}},
        "io_channels": 64},
    "training": {"learning_rate": 5e-5},
}


def test_stable_audio_tools_model_config_loads_as_is(tmp_path):
    path = tmp_path / "model_config.json"
    path.write_text(json.dumps(SAO_MODEL_CONFIG))
    cfg = sat_config.autoencoder_config(sat_config.read(path))
    ours = config_from_dict(load_yaml("configs/vae_sao.yaml")["autoencoder"])
    assert cfg.encoder.requires_grad is False  # kept from the file (a training flag)
    assert cfg.encoder.config == ours.encoder.config and cfg.decoder == ours.decoder
    assert (cfg.latent_dim, cfg.downsampling_ratio, cfg.sample_rate, cfg.scale) == (64, 2048, 44100, 1.0)


def test_stable_audio_tools_config_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        sat_config.read(bad)
    no_ae = {**SAO_MODEL_CONFIG, "model": {"diffusion": {}}}
    with pytest.raises(ConfigError, match="no pretransform"):
        sat_config.autoencoder_config(no_ae)
    wavelet = {**SAO_MODEL_CONFIG, "model": {"pretransform": {"type": "wavelet", "config": {}}}}
    with pytest.raises(ConfigError, match="supports 'autoencoder'"):
        sat_config.autoencoder_config(wavelet)
