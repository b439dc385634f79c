"""`sa-jax metrics` as a user runs it (a subprocess): FD_openl3, FD on CLAP embeddings and the CLAP
score on folders of mixed rates, lengths and channel counts; reference statistics saved once and
read back; weight files that are missing or of another model; empty and unmatched sets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_clap_api import clap_folder  # noqa: E402  (a tiny random CLAP with its tokenizer)
from test_metrics_openl3 import SOUNDS  # noqa: E402

from sa_jax.testing.metrics_ref import openl3_torch  # noqa: E402


def write_sets(root):
    """Short files (few OpenL3 windows) of mixed rates, lengths and channel counts; one real MP3."""
    import soundfile as sf

    gen, ref = root / "generated", root / "reference"
    gen.mkdir()
    ref.mkdir()
    (ref / "sheep.mp3").write_bytes((SOUNDS / "sheep.mp3").read_bytes())     # 48 kHz mono, 0.92 s
    rng = np.random.default_rng(0)
    for folder, name, sr, ch, sec in ((gen, "a", 32000, 2, 0.6), (gen, "b", 16000, 1, 0.5), (gen, "c", 48000, 2, 0.4),
                                      (ref, "d", 22050, 2, 0.7)):
        t = np.arange(int(sr * sec)) / sr
        x = np.stack([np.sin(2 * np.pi * (220 + 330 * c) * t) * 0.3 + rng.normal(size=t.size) * 0.05
                      for c in range(ch)], axis=1)
        sf.write(folder / f"{name}.wav", x, sr)
    return gen, ref


def sa_jax(*args, cwd=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "sa_jax.cli", "metrics", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics_cli")
    gen, ref = write_sets(root)
    openl3 = root / "torchopenl3_mel256_music_512.pth.tar"
    torch.save(openl3_torch(seed=7).state_dict(), openl3)
    _, _, clap = clap_folder(str(root))
    captions = root / "captions.csv"
    captions.write_text("id,caption\na,a dog barks in the rain\nb,soft ambient piano\nc,128 BPM tech house drum loop\n")
    return root, gen, ref, openl3, clap, captions


@pytest.mark.slow   # moved out of the default run for its time (~40s on 2 AVX2 cores); run with -m slow
def test_metrics_command_end_to_end(setup, capsys):
    from sa_jax.metrics import load_stats

    root, gen, ref, openl3, clap, captions = setup
    out, stats = root / "m.json", root / "stats"
    r = sa_jax("--generated", gen, "--reference", ref, "--metrics", "fd_openl3,fd_clap,clap_score",
               "--openl3", openl3, "--clap", clap, "--captions", captions, "--save-stats", stats, "--out", out)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())["metrics"]
    for m in ("fd_openl3", "fd_clap", "clap_score"):
        assert np.isfinite(report[m]["value"]) and report[m]["seconds"] > 0
        assert f"{m}: " in r.stdout
    assert report["fd_openl3"]["value"] > 0 and report["fd_openl3"]["generated"] == {"files": 3, "samples": 2 + 1 + 1}
    assert report["fd_openl3"]["reference"]["samples"] == 2 + 2
    assert -1 <= report["clap_score"]["value"] <= 1 and report["clap_score"]["captions"] == 3
    assert load_stats(stats / "fd_openl3.npz")[0].shape == (1024,)
    # the reference embedded once: its statistics give the same numbers (in-process, the same entry point)
    from sa_jax.cli import main

    again = root / "m2.json"
    assert main(["metrics", "--generated", str(gen), "--reference-stats", str(stats), "--metrics", "fd_openl3",
                 "--openl3", str(openl3), "--out", str(again)]) == 0
    np.testing.assert_allclose(json.loads(again.read_text())["metrics"]["fd_openl3"]["value"],
                               report["fd_openl3"]["value"], rtol=1e-9)
    # statistics of another embedding are refused before anything is embedded
    assert main(["metrics", "--generated", str(gen), "--reference-stats", str(stats), "--metrics", "fd_openl3",
                 "--openl3", str(openl3), "--channels", "1"]) == 2
    assert "not of 'openl3 mel256 music 512 kapre037 hop 0.5 44100 Hz 1 ch'" in capsys.readouterr().err


def test_metrics_command_errors(setup, tmp_path, capsys):
    """The same entry point in-process (each case is a user error: exit code 2, one message)."""
    from sa_jax.cli import main

    root, gen, ref, openl3, clap, captions = setup

    def run(*args):
        code = main(["metrics", *map(str, args)])
        return code, capsys.readouterr().err

    code, err = run("--generated", gen, "--reference", ref, "--metrics", "fd_openl3,kl_passt")
    assert code == 2 and "fd_openl3 needs --openl3: OpenL3 weights" in err and "kl_passt needs --passt: PaSST" in err
    # a weight file of another model, for each metric
    code, err = run("--generated", gen, "--reference", ref, "--metrics", "fd_openl3", "--openl3",
                    clap / "model.safetensors")
    assert code == 2 and "fd_openl3: --openl3" in err and "no OpenL3 network" in err, err
    code, err = run("--generated", gen, "--metrics", "clap_score", "--clap", openl3, "--captions", captions)
    assert code == 2 and "clap_score: --clap" in err, err
    code, err = run("--generated", gen, "--reference", ref, "--metrics", "kl_passt", "--passt",
                    clap / "model.safetensors")
    assert code == 2 and "kl_passt: --passt" in err and "holds no PaSST network" in err, err
    # unmatched ids, an empty set, an unknown metric
    bad = tmp_path / "captions.csv"
    bad.write_text("id,caption\na,one\nzz,two\n")
    code, err = run("--generated", gen, "--metrics", "clap_score", "--clap", clap, "--captions", bad)
    assert code == 2 and "have no generated file: zz" in err, err
    (tmp_path / "empty").mkdir()
    code, err = run("--generated", tmp_path / "empty", "--reference", ref, "--metrics", "fd_clap", "--clap", clap)
    assert code == 2 and "holds no audio files" in err, err
    code, err = run("--generated", tmp_path / "nope", "--reference", ref, "--metrics", "fd_clap", "--clap", openl3)
    assert code == 2 and "--generated" in err and "nope is not a folder" in err, err    # before the model loads
    code, err = run("--generated", gen, "--metrics", "fad")
    assert code == 2 and "choose from fd_openl3, kl_passt, clap_score, fd_clap" in err
    code, err = run("--generated", gen, "--reference", ref, "--metrics", "fd_clap", "--clap", clap, "--batch-size", 0)
    assert code == 2 and "--batch-size must be 1 or more, got 0" in err, err


def test_metrics_command_kl_passt(setup, tmp_path, monkeypatch, capsys):
    """kl_passt through the command (in-process; a small PaSST stands in for the full-size one)."""
    import shutil

    from sa_jax.cli import main
    from sa_jax.metrics import passt
    from sa_jax.models.passt import PaSSTConfig
    from sa_jax.testing.metrics_ref import passt_torch

    root, gen, ref, *_ = setup
    config = PaSSTConfig(embed_dim=32, depth=1, heads=2)
    weights = tmp_path / "passt.pt"
    torch.save(passt_torch(config, seed=1).state_dict(), weights)
    load = passt.PaSST.load
    monkeypatch.setattr(passt.PaSST, "load", classmethod(lambda cls, path, batch_size=16: load(path, batch_size,
                                                                                                config)))
    paired = tmp_path / "ref"
    paired.mkdir()
    for name in ("a", "b", "c"):                        # the reference files of the generated ids
        shutil.copy(ref / "d.wav", paired / f"{name}.wav")
    out = tmp_path / "kl.json"
    assert main(["metrics", "--generated", str(gen), "--reference", str(paired), "--metrics", "kl_passt",
                 "--passt", str(weights), "--out", str(out)]) == 0, capsys.readouterr().err
    result = json.loads(out.read_text())["metrics"]["kl_passt"]
    assert result["pairs"] == 3 and result["value"] >= 0
    assert main(["metrics", "--generated", str(gen), "--reference", str(ref), "--metrics", "kl_passt",
                 "--passt", str(weights)]) == 2
    assert "3 of 3 generated ids have no reference file: a, b, c" in capsys.readouterr().err
    # stable-audio-metrics' reference probabilities (a pickle of {id: torch tensor}) instead of --reference
    import pickle

    model = passt.PaSST.load(weights)
    with open(tmp_path / "reference_probabilities.pkl", "wb") as f:
        pickle.dump({k: torch.from_numpy(p.astype(np.float32)) for k, p in model.file_probabilities(paired)}, f)
    out2 = tmp_path / "kl2.json"
    assert main(["metrics", "--generated", str(gen), "--reference-stats", str(tmp_path / "reference_probabilities.pkl"),
                 "--metrics", "kl_passt", "--passt", str(weights), "--out", str(out2)]) == 0, capsys.readouterr().err
    from_pickle = json.loads(out2.read_text())["metrics"]["kl_passt"]
    assert from_pickle["pairs"] == 3 and from_pickle["reference"]["stats"].endswith("reference_probabilities.pkl")
    np.testing.assert_allclose(from_pickle["value"], result["value"], rtol=1e-5)
    assert main(["metrics", "--generated", str(gen), "--reference-stats", str(tmp_path / "kl.json"),
                 "--metrics", "kl_passt", "--passt", str(weights)]) == 2
    assert "is neither a folder of statistics nor a .pkl file" in capsys.readouterr().err
