"""`--plan`: the train step and the sampling program compiled without weights or data, for the devices
present and for a real TPU topology (v5e:4x4, 16 chips) through libtpu on this CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sa_jax import Autoencoder
from sa_jax.config import load
from sa_jax.errors import ConfigError
from sa_jax.pipeline import shipped_model
from sa_jax.training import TrainConfig
from sa_jax.training.frozen import plan_frozen
from sa_jax.training.plan import LIBTPU, follow_init, json_line, libtpu_path, plan_sampling, plan_train, topology_name

ROOT = Path(__file__).resolve().parents[1]


def _has_libtpu() -> bool:
    try:
        libtpu_path()
        return True
    except ConfigError:
        return False


needs_libtpu = pytest.mark.skipif(not _has_libtpu(), reason=f"libtpu is not installed (`bash setup.sh tpu` puts it in "
                                                            f"{LIBTPU.parents[1]}): no TPU topology to compile for")


def sa_jax(*args, cwd) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Run the CLI as a user does; (the process, its last line as JSON when it is one)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # one CPU device, as a plain shell
    p = subprocess.run([sys.executable, "-m", "sa_jax.cli", *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600)
    lines = p.stdout.strip().splitlines()
    try:
        return p, json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return p, None


def test_train_plan_reads_no_data_and_writes_nothing(tmp_path):
    missing = tmp_path / "no-latents-here"
    run_dir = tmp_path / "run"
    p, plan = sa_jax("train", "--config", "train_dit_tiny", "--plan", f"data.path={missing}",
                     f"checkpoint.dir={run_dir}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert plan is not None, p.stdout
    assert plan["devices"] == 1 and plan["global_batch"] == 8
    assert plan["bytes_per_device"] > 0 and plan["flops_per_step"] > 0
    assert plan["params"] > 0 and plan["mesh"] == {"data": 1, "fsdp": 1}
    assert "topology" not in plan   # a CPU has no compiler time estimate
    assert "memory per device, train step: arguments" in p.stdout and "temporaries" in p.stdout
    assert not missing.exists() and not run_dir.exists()


@pytest.mark.slow   # moved out of the default run for its time (~25s on 2 AVX2 cores); run with -m slow
def test_plan_frozen_models_from_configs_alone(tmp_path):
    """Audio data with the frozen VAE encoding in the step, the VAE given as a config in place of its weights;
    a T5 that is not on disk is planned with T5-base's shapes, which a 32-wide tiny model refuses."""
    cfg = load(TrainConfig, "train_dit_tiny", ["data.kind=folder", f"data.path={tmp_path / 'nothing'}",
                                               "autoencoder.path=vae_small", "model.dit.io_channels=16",
                                               "data.batch_size=2", "data.window=8192"])
    report = plan_train(cfg)
    assert report["input"] == "audio (2, 2, 8192)" and report["notes"] == []
    assert report["bytes_per_device"] > 0
    assert json.loads(json_line(report))["devices"] == 1
    cfg = load(TrainConfig, "train_dit_tiny", ["text.source=t5", f"text.path={tmp_path / 't5-base'}"])
    with pytest.raises(ConfigError, match="768 wide but the model takes 32-d"):
        plan_train(cfg)


def test_train_plan_follows_init_from(tmp_path):
    """A run from init.from trains that model: the plan takes its model, text encoder and autoencoder from an sa-jax
    checkpoint's config.yaml, refuses a config that contradicts it (as the run does), and says when it cannot
    read the model."""
    small = ROOT / "sa_jax" / "assets" / "small"   # the shipped model: a small U-Net, CLAP text tower, DAC VAE
    cfg, notes = follow_init(load(TrainConfig, "train_unet_small", [f"init.from={small}", "text.path=elsewhere",
                                                                   "autoencoder.path=null"]))
    assert notes == [f"model, text encoder and autoencoder: init.from {small}'s (its config.yaml)"]
    assert cfg.model.unet.channels == 64 and cfg.text.source == "clap" and cfg.autoencoder.path == str(small)
    frozen, notes = plan_frozen(cfg)
    assert notes == [] and frozen.text_encoder.config.hidden_size == 64
    assert frozen.autoencoder.downsampling_ratio == 1024

    p, _ = sa_jax("train", "--config", "train_unet_tiny", "--plan", f"init.from={small}", cwd=tmp_path)
    assert p.returncode != 0 and "contradicts the model it starts from" in p.stderr and "unet.channels" in p.stderr
    gone = tmp_path / "gone"
    cfg = load(TrainConfig, "train_dit_tiny", [f"init.from={gone}"])
    assert follow_init(cfg) == (cfg, [f"init.from {gone} is not on this machine: planned with the config's model "
                                      "section, which the run checks against that model"])


def test_plan_flags_are_checked(tmp_path):
    p, _ = sa_jax("train", "--config", "train_dit_tiny", "--topology", "v5e:4x4", cwd=tmp_path)
    assert p.returncode == 2 and "add --plan" in p.stderr
    assert topology_name("v5p-64") == "v5p:2x4x4" and topology_name("v5litepod-16") == "v5e:4x4"
    assert topology_name("v5e:4x4") == "v5e:4x4"
    with pytest.raises(ConfigError, match="no slice shape known"):
        topology_name("v5e-12")
    with pytest.raises(ConfigError, match="not supported for trainer 'vae'"):
        from sa_jax.training.vae import VAETrainConfig

        plan_train(load(VAETrainConfig, "train_vae_tiny"))


@pytest.mark.slow   # moved out of the default run for its time (~30s on 2 AVX2 cores); run with -m slow
@needs_libtpu
def test_train_and_sample_plans_for_a_v5e_slice(tmp_path):
    p, plan = sa_jax("train", "--config", "train_dit_tiny", "--plan", "--topology", "v5e:4x4",
                     f"data.path={tmp_path / 'none'}", "data.batch_size=16", "mesh.shape=[4,4]", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert plan is not None, p.stdout
    assert plan["topology"] == "v5e:4x4" and plan["devices"] == 16 and plan["mesh"] == {"data": 4, "fsdp": 4}
    assert plan["global_batch"] == 64   # 16 per process x the slice's 4 hosts
    assert plan["hbm_per_device"] == 16 * 2**30 and plan["fits"] is True
    assert 0 < plan["bytes_per_device"] < plan["hbm_per_device"]
    assert plan["flops_per_step"] == pytest.approx(16 * plan["flops_per_device"])
    assert plan["estimated_step_seconds"] > 0 and 0 < plan["mfu"] < 1
    assert "16 x TPU v5 lite (topology v5e:4x4)" in p.stdout and "MFU" in p.stdout

    # the tiny DiT alone (no autoencoder: a VAE's TPU compile takes minutes of CPU; the decode is planned in
    # test_sample_plan_on_the_devices_present)
    p, plan = sa_jax("sample", "--plan", "--topology", "v5e:4x4", "--batch-size", "16", "--steps", "2",
                     "--model", "train_dit_tiny", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert plan is not None, p.stdout
    assert plan["devices"] == 16 and plan["batch"] == 16 and plan["steps"] == 2 and plan["mesh"] == {"batch": 16}
    assert plan["estimated_step_seconds"] > 0 and plan["seconds_per_clip"] == pytest.approx(
        plan["estimated_step_seconds"] / 16)
    assert "memory per device, sampling loop" in p.stdout and "the VAE decode is not planned" in p.stdout


@pytest.mark.slow   # moved out of the default run for its time (~25s on 2 AVX2 cores); run with -m slow
@needs_libtpu
def test_block_remat_recomputes_only_each_chips_share():
    """Block remat adds at most one more forward pass: at most 4/3 of the FLOPs of the step without it. Before the
    blocks kept their input split over the batch (`constrain_batch`), the v5p compiler recomputed attention and
    dense layers for the whole global batch on every chip: 1.46x here, 2.5x for SAO's DiT at full size."""
    plans = {remat: plan_train(load(TrainConfig, "train_dit_tiny", [f"model.remat={remat}", "model.dit.depth=1",
                                                                    "data.path=nowhere", "data.batch_size=16"]),
                               topology="v5p:2x2x2")
             for remat in ("none", "block")}
    assert plans["block"]["global_batch"] == 32   # 2 hosts of 4 chips
    assert 1 < plans["block"]["flops_per_step"] / plans["none"]["flops_per_step"] <= 4 / 3


@pytest.mark.slow   # moved out of the default run for its time (~35s on 2 AVX2 cores); run with -m slow
def test_sample_plan_on_the_devices_present(tmp_path):
    """The shipped model's sampling loop and VAE decode, planned from its config.yaml alone. The decode planned is
    the one the run chooses (Autoencoder.decode_chunk_frames): its 384 frames need ~40 MiB, so one shot here."""
    p, plan = sa_jax("sample", "--plan", "--batch-size", "1", "--steps", "2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert plan is not None, p.stdout
    assert plan["devices"] == 1 and plan["batch"] == 1 and plan["steps"] == 2
    assert plan["bytes_per_device"] > 0 and plan["flops_per_step"] > 0
    assert "memory per device, sampling loop" in p.stdout and "VAE decode (one shot of 384 frames)" in p.stdout
    ae = Autoencoder.load(shipped_model())
    assert ae.decode_chunk_frames((1, ae.latent_dim, 384)) is None   # the run decodes in one shot too


@pytest.mark.slow
def test_sample_plan_flops_grow_with_the_steps(tmp_path):
    """XLA counts a loop body once whatever its trip count: the plan takes a one-step program's cost times
    the steps, plus the decoder's per chunk."""
    model = tmp_path / "tiny_sample.yaml"   # the tiny DiT on the small VAE's 16 latent channels
    model.write_text("base: train_dit_tiny\nmodel: {dit: {io_channels: 16}}\nautoencoder: {path: vae_small}\n"
                     "data: {latent_window: 16}\n")
    one, three = (plan_sampling(str(model), batch=2, steps=s) for s in (1, 3))
    assert one["notes"] == [] and one["decode"]["calls"] == 1 and one["decode"]["chunk_frames"] == 16
    decode = one["decode"]["flops_per_device"]
    assert 0 < decode < one["flops_per_step"]
    assert three["flops_per_step"] - decode == pytest.approx(3 * (one["flops_per_step"] - decode), rel=1e-6)


def test_pod_configs_train_at_global_batch_256_and_state_their_plan():
    """configs/pod_*.yaml: the paper's global batch on their slice (hosts of 4 chips), with the plan in a comment."""
    chips = {"v5p": 32, "v5e": 64}   # v5p-64 (v5p:2x4x4), v5e-64 (v5e:8x8)
    pods = sorted((ROOT / "configs").glob("pod_*.yaml"))
    assert pods
    for path in pods:
        cfg = load(TrainConfig, path)
        hosts = chips[path.stem.split("_")[-1]] // 4
        assert cfg.data.batch_size * hosts == 256, path
        assert cfg.model.compute_dtype == "bfloat16" and cfg.mesh.shape == (1, -1)
        assert "Planned (`sa-jax train --config configs/" in path.read_text() and "GiB" in path.read_text()
