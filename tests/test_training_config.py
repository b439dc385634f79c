"""Training config schema, schedules, EMA decay and FSDP rules (no model compiles)."""

import math

import numpy as np
import pytest

from sa_jax.config import load
from sa_jax.errors import ConfigError
from sa_jax.parallel import leaf_spec, mesh_shape
from sa_jax.training.config import EMAConfig, MeshConfig, OptimConfig, TrainConfig
from sa_jax.training.optim import ema_decay, learning_rate, make_optimizer


@pytest.mark.parametrize("path", ["configs/train_dit_tiny.yaml", "configs/train_dit_sao.yaml",
                                  "configs/train_unet_sa1.yaml", "configs/train_unet_tiny.yaml"])
def test_shipped_configs_load(path):
    cfg = load(TrainConfig, path, ["steps=7"])
    assert cfg.steps == 7 and cfg.data.kind == "latents"


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown key"),
    ("optim.lr=0", "lr must be positive"),
    ("optim.schedule=linear", "not allowed"),
    ("mesh.shape=[2]", "differ in length"),
    ("mesh.shape=[-1,-1]", "at most one -1"),
    ("mesh.batch_axes=[model]", "not among axes"),
    ("data.kind=folder", "set autoencoder.path"),
    ("demo.every=10", "demo.every needs a real text encoder"),
    ("text.source=t5", "needs text.path"),
    ("diffusion.cfg_dropout=1.5", "cfg_dropout"),
    ("diffusion.timestep_shift=0", "timestep_shift must be a finite number > 0"),
    ("diffusion.objective=eps", "not allowed"),
    ("model.conditioning.cond_dim=16", "cond_dim"),
    ("model.family=unet", "text_dim 32 must equal"),
    ("steps=0", "steps must be positive"),
    ("ema.decay=1.0", "decay"),
])
def test_bad_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load(TrainConfig, "configs/train_dit_tiny.yaml", [override, "model.text_dim=32"]
             if override.startswith("model.family") else [override])


def test_family_names_and_their_old_spellings(tmp_path):
    """`sao` / `sa1` are the families; a config or override that says `dit` / `unet` (the names before) reads
    as them, so code compares only the new names."""
    assert load(TrainConfig, "configs/train_dit_tiny.yaml").model.family == "sao"
    assert load(TrainConfig, "configs/train_unet_tiny.yaml").model.family == "sa1"
    old = tmp_path / "old.yaml"
    old.write_text("base: train_unet_tiny\nmodel: {family: unet}\n")
    assert load(TrainConfig, old).model.family == "sa1"
    assert load(TrainConfig, "configs/train_unet_tiny.yaml", ["model.family=unet"]).model.family == "sa1"
    cfg = load(TrainConfig, "configs/train_dit_tiny.yaml", ["model.family=dit"])
    assert cfg.model.family == "sao" and cfg.model.latent_dim == 8
    with pytest.raises(ConfigError, match=r"choose one of \['sao', 'sa1'\]"):
        load(TrainConfig, "configs/train_dit_tiny.yaml", ["model.family=transformer"])


def test_unet_text_tokens_must_fit_context():
    with pytest.raises(ConfigError, match="exceed"):
        load(TrainConfig, "configs/train_unet_sa1.yaml", ["model.text_tokens=78"])


def test_mesh_shape():
    assert mesh_shape((2, -1), 8) == (2, 4)
    assert mesh_shape((1, -1), 1) == (1, 1)
    with pytest.raises(ConfigError, match="cannot be split"):
        mesh_shape((3, -1), 8)
    with pytest.raises(ConfigError, match="needs 6 devices"):
        mesh_shape((2, 3), 8)


def test_inverse_lr_matches_stable_audio_tools_formula():
    c = OptimConfig(lr=5e-5, schedule="inverse", inv_gamma=1e6, power=0.5, warmup=0.99, final_lr=1e-6)
    lr = learning_rate(c)
    for step in (0, 1, 10, 1000, 10 ** 6, 10 ** 9):
        want = (1 - 0.99 ** (step + 1)) * max(1e-6, 5e-5 * (1 + step / 1e6) ** -0.5)
        assert math.isclose(float(lr(step)), want, rel_tol=1e-5), step


def test_cosine_and_constant_schedules():
    _, cos = make_optimizer(OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=10, final_lr=1e-5), 110)
    assert float(cos(0)) == 0.0 and math.isclose(float(cos(10)), 1e-3, rel_tol=1e-6)
    assert math.isclose(float(cos(110)), 1e-5, rel_tol=1e-4)
    _, const = make_optimizer(OptimConfig(lr=2e-4, schedule="constant"), 10)
    assert math.isclose(float(const(12345)), 2e-4, rel_tol=1e-6)


def test_ema_decay_warmup():
    c = EMAConfig(decay=0.9999, inv_gamma=1.0, power=0.75)
    assert float(ema_decay(c, 1)) == 0.0                      # the first update copies the parameters
    assert math.isclose(float(ema_decay(c, 11)), 1 - 11 ** -0.75, rel_tol=1e-6)
    assert math.isclose(float(ema_decay(c, 10 ** 9)), 0.9999, rel_tol=1e-6)
    assert float(ema_decay(EMAConfig(decay=0.99, warmup=False), 1)) == np.float32(0.99)


class FakeMesh:
    shape = {"data": 2, "fsdp": 4}


def test_fsdp_rules_pick_dimension_and_replicate():
    cfg = MeshConfig(shape=(2, 4), fsdp_min_size=16, fsdp_rules=("!norm", "kernel$", "embedding"))
    m = FakeMesh()
    assert tuple(leaf_spec("params/denoiser/qkv/kernel", (64, 192), m, cfg)) == (None, "fsdp")
    assert tuple(leaf_spec("opt_state/0/mu/denoiser/qkv/kernel", (64, 192), m, cfg)) == (None, "fsdp")
    assert tuple(leaf_spec("params/x/kernel", (6, 8), m, cfg)) == (None, "fsdp")   # 6 is not divisible by 4
    assert tuple(leaf_spec("params/x/kernel", (6, 7), m, cfg)) == ()               # nothing divisible
    assert tuple(leaf_spec("params/pre_norm/kernel", (64, 64), m, cfg)) == ()      # "!" rule first
    assert tuple(leaf_spec("params/x/bias", (1024,), m, cfg)) == ()                # no rule matches
    assert tuple(leaf_spec("params/x/kernel", (2, 4), m, cfg)) == ()               # below fsdp_min_size


def test_run_configs_by_name_and_through_base(tmp_path):
    """`--config NAME` takes a packaged config; a run YAML based on another inherits its trainer and model."""
    from sa_jax.commands.train import trainer_of

    assert trainer_of("train_vae_small") == "vae" and trainer_of("train_unet_small") == "diffusion"
    assert trainer_of("configs/train_clap_tiny.yaml") == "clap"
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: train_unet_small\nsteps: 20\nmodel: {unet: {channels: 32}}\n")
    cfg = load(TrainConfig, mine)
    small = load(TrainConfig, "train_unet_small")
    assert (cfg.steps, cfg.model.unet.channels, small.model.unet.channels) == (20, 32, 64)
    assert cfg.model.unet.multipliers == small.model.unet.multipliers and cfg.optim == small.optim
    with pytest.raises(ConfigError, match="packaged configs"):
        trainer_of("train_unet_huge")


def test_text_path_may_be_a_model_folder_whose_text_tower_is_taken():
    """text.path naming an sa-jax model trains a new denoiser on that model's own text encoder (tokenizer
    included): what #22's study did to train a new U-Net for the shipped model's conditioning."""
    import jax

    from sa_jax.pipeline import SHIPPED_MODEL, StableAudio
    from sa_jax.training.frozen import load_frozen

    frozen = load_frozen(load(TrainConfig, "train_unet_small", [f"text.path={SHIPPED_MODEL}", "autoencoder.path=null"]))
    shipped = StableAudio.load(SHIPPED_MODEL).family.text_encoder
    for a, b in zip(jax.tree.leaves(frozen.text_encoder.params), jax.tree.leaves(shipped.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    prompt = ["loudness: quiet"]
    assert frozen.text_encoder.tokenize(prompt)[0].tolist() == shipped.tokenize(prompt)[0].tolist()
    with pytest.raises(ConfigError, match="takes 32 tokens but the model is configured for 16"):
        load_frozen(load(TrainConfig, "train_unet_small", [f"text.path={SHIPPED_MODEL}", "autoencoder.path=null",
                                                            "model.text_tokens=16"]))
