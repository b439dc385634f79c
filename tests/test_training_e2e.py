"""A paper-family run end to end: the frozen CLAP text tower runs inside the train step, the
export is a whole model that `StableAudio.load` reads, and a small U-Net overfits a handful of
clips well enough that its samples keep a training clip's timing (content, then silence at
seconds_total).

The corpus is pre-encoded latents at a toy rate (64 Hz audio, 16x VAE: 4 latent frames per
second, an 8 s window) so that integer seconds span several frames. Each clip is a few seconds of
structured latents, zero-padded to the window by the data pipeline, as silence is. The VAE is
random with every bias zeroed, so zero latents decode to exact silence.
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from sa_jax import StableAudio
from sa_jax.autoencoder import Autoencoder
from sa_jax.config import load
from sa_jax.errors import ConfigError
from sa_jax.training import TrainConfig, train

SR, RATIO, DIM, WINDOW = 64, 16, 8, 32
VAE = {"encoder": {"type": "dac", "config": {"in_channels": 2, "latent_dim": 16, "d_model": 4, "strides": [2, 4, 2]}},
       "decoder": {"type": "dac", "config": {"out_channels": 2, "latent_dim": 8, "channels": 16, "rates": [2, 4, 2]}},
       "bottleneck": {"type": "vae"}, "latent_dim": DIM, "downsampling_ratio": RATIO, "io_channels": 2,
       "sample_rate": SR}
SECONDS = {0: 2, 1: 4, 2: 6}      # clip -> seconds of content (its seconds_total)
PROMPT = "clip number {}"


def write_corpus(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "latents").mkdir(parents=True)
    rows = []
    for i, seconds in SECONDS.items():
        frames = seconds * SR // RATIO
        t = np.arange(frames)[None, :]
        z = np.sin(2 * np.pi * rng.uniform(0.1, 0.3, (DIM, 1)) * t + rng.uniform(0, 6, (DIM, 1))) * 1.5
        np.save(root / "latents" / f"clip{i}.npy", z.astype(np.float32))
        rows.append({"latents": f"latents/clip{i}.npy", "relpath": f"clip{i}.wav", "samples": frames * RATIO,
                     "frames": frames, "metadata_json": json.dumps({"description": PROMPT.format(i)})})
    (root / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "info.json").write_text(json.dumps({
        "format": "sa-jax-latents", "version": 1, "sample_rate": SR, "downsampling_ratio": RATIO,
        "latent_dim": DIM, "channels": 2, "count": len(rows), "source": "synthetic"}))
    return root


def silent_at_zero_vae(path: Path) -> Path:
    ae = Autoencoder.from_config(VAE, seed=0)
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: np.zeros_like(x) if "bias" in jax.tree_util.keystr(p) else np.asarray(x), ae.params)
    return Autoencoder(ae.config, params).save(path)


def run_config(root: Path, clap_dir: Path, steps: int, **extra) -> TrainConfig:
    items = {"data.path": str(root / "corpus"), "data.latent_window": WINDOW, "data.window": WINDOW * RATIO,
             "data.sample_rate": SR, "data.batch_size": 3, "data.shard_index": 0, "data.shard_count": 1,
             "data.num_threads": 1, "data.random_crop": False, "data.prompt_keys": "[description]",
             "data.p_key_value": 0.0, "text.source": "clap", "text.path": str(clap_dir),
             "autoencoder.path": str(root / "vae"), "model.text_tokens": 16,
             "model.unet.context_embedding_max_length": 18, "checkpoint.dir": str(root / "run"),
             "checkpoint.every": steps, "checkpoint.async_save": False, "log.every": 25,
             "ema.decay": 0.99, "optim.lr": 3.0e-3, "optim.clip_norm": 1.0, "diffusion.cfg_dropout": 0.1,
             "steps": steps}
    items.update(extra)
    return load(TrainConfig, "configs/train_unet_tiny.yaml", [f"{k}={v}" for k, v in items.items()])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from test_clap_api import clap_folder

    root = tmp_path_factory.mktemp("e2e")
    write_corpus(root / "corpus")
    silent_at_zero_vae(root / "vae")
    _, _, clap_dir = clap_folder(str(root))
    return root, clap_dir


@pytest.mark.slow   # moved out of the default run for its time (~30s on 2 AVX2 cores); run with -m slow
def test_text_source_must_fit_the_family(setup):
    root, clap_dir = setup
    with pytest.raises(ConfigError, match="does not fit model.family sa1"):
        run_config(root, clap_dir, 10, **{"text.source": "t5"})
    with pytest.raises(ConfigError, match="needs text.path"):
        run_config(root, clap_dir, 10, **{"text.path": "null"})


@pytest.mark.slow   # ~2000 steps and a few generations: 3-5 minutes on 2 cores
def test_overfit_then_the_export_keeps_the_clip_timing(setup):
    """Three clips, each its own prompt, no CFG dropout (every example conditioned), cosine decay:
    the loss falls by at least 10x, and the exported model regenerates each clip (latents within
    30% RMS of the training clip) followed by silence (tail RMS under a tenth of the content's).
    Timing is read from the latents: the random VAE's decoder is no ear, and zero latents are its
    silence by construction."""
    root, clap_dir = setup
    lines = []
    cfg = run_config(root, clap_dir, 2000, **{
        "diffusion.cfg_dropout": 0.0, "optim.schedule": "cosine", "optim.final_lr": 1.0e-5,
        "demo.every": 1000, "demo.prompts": "['clip number 1']", "demo.steps": 5})
    train(cfg, print_fn=lines.append)
    assert sorted(p.name for p in (root / "run" / "demo").iterdir()) == ["00001000", "00002000"]
    assert (root / "run" / "demo" / "00002000" / "0.wav").is_file()
    curve = [float(x.split("loss ")[1].split()[0]) for x in lines if x.startswith("step ")]
    assert np.mean(curve[-4:]) < curve[0] / 10, curve   # overfits: the loss falls by at least 10x

    sa = StableAudio.load(root / "run" / "export")      # a whole model: CLAP, timing tables, U-Net, VAE
    assert sa.family.name == "sa1" and sa.window_seconds == WINDOW * RATIO / SR
    assert (root / "run" / "best" / "config.yaml").is_file() and (root / "run" / "tensorboard").is_dir()
    for i, seconds in SECONDS.items():
        kw = dict(seconds_total=seconds, steps=30, cfg_scale=1.0, sampler="dpmpp-2m", seed=1)
        z = sa.generate_latents(PROMPT.format(i), **kw)[0]
        clip = np.load(root / "corpus" / "latents" / f"clip{i}.npy")
        frames = clip.shape[1]
        rms = lambda a: float(np.sqrt(np.mean(np.square(a))))
        assert rms(z[:, :frames] - clip) < 0.3 * rms(clip), i       # the training clip ...
        assert rms(z[:, frames:]) < 0.1 * rms(z[:, :frames]), i     # ... then silence at seconds_total
        assert sa.generate(PROMPT.format(i), **kw).shape == (1, 2, seconds * SR)


@pytest.mark.slow   # moved out of the default run for its time (~100s on 2 AVX2 cores); run with -m slow
def test_training_on_audio_encodes_in_the_step(setup, tmp_path):
    """data.kind folder: the frozen VAE encodes each audio batch inside the step; the export loads."""
    import soundfile as sf

    root, clap_dir = setup
    audio = tmp_path / "audio"
    audio.mkdir()
    t = np.arange(5 * SR) / SR
    rows = []
    for i, freq in enumerate((3.0, 7.0, 11.0)):
        sf.write(audio / f"tone{i}.wav", np.stack([np.sin(2 * np.pi * freq * t)] * 2, 1) * 0.5, SR)
        rows.append(json.dumps({"path": f"tone{i}.wav", "description": f"a tone at {freq:g} hertz"}))
    (audio / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    cfg = run_config(root, clap_dir, 4, **{"data.kind": "folder", "data.path": str(audio), "data.random_crop": True,
                                           "data.silence_db": -100, "checkpoint.dir": str(tmp_path / "run"),
                                           "log.every": 2})
    lines = []
    state = train(cfg, print_fn=lines.append).state
    curve = [float(x.split("loss ")[1].split()[0]) for x in lines if x.startswith("step ")]
    assert len(curve) == 2 and all(np.isfinite(curve)) and int(state.bad_steps) == 0
    sa = StableAudio.load(tmp_path / "run" / "export")
    assert sa.family.name == "sa1" and sa.sample_rate == SR
