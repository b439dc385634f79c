"""Typed configs: YAML files, dotted overrides, unknown keys, stable-audio-tools model_config.json."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sa_jax.checkpoints import sat_config
from sa_jax.config import apply_overrides, from_dict, load, load_yaml, to_dict
from sa_jax.errors import ConfigError
from sa_jax.models.autoencoder import DACDecoderConfig, OobleckEncoderConfig, config_from_dict


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
    with pytest.raises(ConfigError,
                       match=r"optim: unknown key\(s\) \['learning_rate'\]; valid keys are \['betas', 'lr'\]"):
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


# --- base: chains and packaged config names ---------------------------------------------------------------

def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@dataclass
class Inner:
    lr: float = 1e-3
    depth: int = 2


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_base_chain_later_keys_override(tmp_path):
    _write(tmp_path / "a.yaml", "x: 1\nsec: {p: 1, q: [1, 2], deep: {u: 1, v: 1}}\nonly_a: a\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\nx: 2\nsec: {q: [3], deep: {v: 2}}\n")
    _write(tmp_path / "c.yaml", "base: [b.yaml, d.yaml]\nsec: {p: 5}\n")
    _write(tmp_path / "d.yaml", "x: 4\nonly_d: d\n")
    assert load_yaml(tmp_path / "b.yaml") == {
        "x": 2, "sec": {"p": 1, "q": [3], "deep": {"u": 1, "v": 2}}, "only_a": "a"}   # lists replace
    # a list of bases: each later one on top of the earlier, the file's own keys last
    assert load_yaml(tmp_path / "c.yaml") == {
        "x": 4, "sec": {"p": 5, "q": [3], "deep": {"u": 1, "v": 2}}, "only_a": "a", "only_d": "d"}
    # the schema is built from the resolved data, overrides on top
    _write(tmp_path / "ob.yaml", "inner: {lr: 0.1, depth: 3}\n")
    cfg = load(Outer, _write(tmp_path / "o.yaml", "base: ob.yaml\nname: own\n"), ["inner.lr=0.5"])
    assert (cfg.name, cfg.inner.lr, cfg.inner.depth) == ("own", 0.5, 3)


def test_base_relative_paths_resolve_against_the_including_file(tmp_path, monkeypatch):
    _write(tmp_path / "models" / "arch.yaml", "inner: {lr: 0.25, depth: 7}\n")
    _write(tmp_path / "runs" / "run.yaml", "base: ../models/arch.yaml\nname: run\n")
    _write(tmp_path / "runs" / "sub" / "deeper.yaml", "base: ../run.yaml\ninner: {depth: 9}\n")
    monkeypatch.chdir(tmp_path / "models")   # not the files' folders
    cfg = load(Outer, tmp_path / "runs" / "sub" / "deeper.yaml")
    assert (cfg.name, cfg.inner.lr, cfg.inner.depth) == ("run", 0.25, 9)


def test_base_of_a_section_and_a_packaged_name(tmp_path):
    # a section based on one section of a packaged model config: the architecture written once
    run = _write(tmp_path / "run.yaml", 'model: {base: "unet_sa1#unet", channels: 8}\n')
    data = load_yaml(run)
    assert data["model"] == {**load_yaml("unet_sa1")["unet"], "channels": 8}
    assert load_yaml("configs/unet_sa1.yaml") == load_yaml("unet_sa1") == load_yaml("unet_sa1.yaml")
    assert load_yaml("data/synth")["kind"] == "folder"
    with pytest.raises(ConfigError, match="has no section 'nope'"):
        load_yaml(_write(tmp_path / "bad.yaml", 'model: {base: "unet_sa1#nope"}\n'))
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_yaml(_write(tmp_path / "bad2.yaml", 'model: {base: "unet_sa1#model_type"}\n'))


def test_base_cycles_are_errors_naming_the_chain(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: [c.yaml]\n")
    _write(tmp_path / "c.yaml", "sec: {base: a.yaml}\n")
    with pytest.raises(ConfigError, match=r"base cycle: .*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml"):
        load_yaml(tmp_path / "a.yaml")
    _write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match="base cycle"):
        load_yaml(tmp_path / "self.yaml")


def test_unknown_config_names_list_the_packaged_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"'unet_sa2' is neither a file nor a packaged config; .*unet_sa1"):
        load_yaml("unet_sa2")
    with pytest.raises(ConfigError, match=r"'missing.yaml' is neither a file .* nor a packaged config"):
        load_yaml(_write(tmp_path / "r.yaml", "base: missing.yaml\n"))
    with pytest.raises(ConfigError, match="base must be a config name or path"):
        load_yaml(_write(tmp_path / "n.yaml", "base: [3]\n"))


def test_packaged_configs_are_the_repository_configs():
    from sa_jax.config import CONFIG_DIR, config_names

    names = config_names()
    repo = Path(__file__).resolve().parents[1] / "configs"
    assert CONFIG_DIR.resolve() == repo.resolve()
    assert set(names) == {p.relative_to(repo).with_suffix("").as_posix() for p in repo.rglob("*.yaml")}
    assert {"unet_sa1", "vae_sa1", "vae_sao", "train_unet_small", "data/synth"} <= set(names)


def test_run_configs_point_at_their_model_configs():
    """Each architecture is written once: the run configs take it from the model config by `base:`."""
    from sa_jax.config import CONFIG_DIR

    for run, ref in [("train_vae_sa1", "vae_sa1#autoencoder"), ("train_unet_sa1", "unet_sa1#unet"),
                     ("train_vae_small", "vae_small#autoencoder"), ("train_unet_small", "unet_small#unet")]:
        assert ref in (CONFIG_DIR / f"{run}.yaml").read_text()
    assert load_yaml("train_vae_sa1")["model"] == load_yaml("vae_sa1")["autoencoder"]
    assert load_yaml("train_unet_sa1")["model"]["unet"] == load_yaml("unet_sa1")["unet"]
    from sa_jax.training.vae import VAETrainConfig

    assert VAETrainConfig().model == config_from_dict(load_yaml("vae_sa1")["autoencoder"])


def _cli(*args, cwd):
    import os
    import subprocess
    import sys

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-m", "sa_jax.cli", *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=300)
    return res.returncode, res.stdout, res.stderr


def test_cli_configs_and_params_by_name(tmp_path):
    code, out, err = _cli("configs", cwd=tmp_path)
    assert code == 0, err
    lines = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    assert lines["unet_sa1"].startswith("The paper's denoiser") and "train_vae_small" in lines
    code, out, err = _cli("params", "unet_sa1", cwd=tmp_path)
    assert code == 0 and "(906.7M)" in out, err
    code, out, err = _cli("params", "train_unet_small", "model.unet.channels=32", cwd=tmp_path)   # a run config
    assert code == 0 and "(2.0M)" in out, err
    code, out, err = _cli("params", "unet_sa2", cwd=tmp_path)
    assert code == 2 and "packaged configs" in err and "unet_sa1" in err
