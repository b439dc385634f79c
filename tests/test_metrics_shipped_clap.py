"""The shipped small model's own CLAP (sa_jax/assets/small_clap): it loads offline (with its 32-token
text tower), fits the shipped model's text tower and tokenizer, tells the corpus's captions apart on fresh
synthetic clips, and `sa-jax metrics` uses it when no --clap is given."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from sa_jax.metrics.clap import SHIPPED_CLAP

pytestmark = pytest.mark.skipif(not (SHIPPED_CLAP / "config.json").is_file(), reason="no shipped CLAP in this checkout")


def synth_set(folder, count=8, seed=2):
    """Fresh corpus-like clips (a seed neither the corpus, 0, nor the held-out set, 1, used) and their captions."""
    from sa_jax.data.synth import synth_clip

    folder.mkdir()
    captions = {}
    for i in range(count):
        audio, meta = synth_clip(seed, i, max_seconds=3.0)
        sf.write(folder / f"c{i}.wav", audio.T, 44100)
        captions[f"c{i}"] = meta["description"]
    return captions


@pytest.fixture(scope="module")
def clap():
    from sa_jax import Clap
    from sa_jax.metrics.clap import shipped_clap

    return Clap.load(shipped_clap())


def test_shipped_clap_fits_the_small_model(clap):
    """The recipe's CLAP stage rerun (same corpus, config and seed): the shipped model's text-tower
    architecture and tokenizer vocabulary (its weights are not the shipped model's: the rerun did not
    reproduce them; see the README), the corpus's rate, and 32 tokens."""
    import json

    import yaml

    from sa_jax.pipeline import SHIPPED_MODEL

    text = yaml.safe_load((SHIPPED_MODEL / "config.yaml").read_text())["clap_text"]
    for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
        assert getattr(clap.config.text, key) == text[key], key
    vocab = json.loads((SHIPPED_MODEL / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert json.loads((SHIPPED_CLAP / "tokenizer.json").read_text())["model"]["vocab"] == vocab
    assert clap.config.features.sample_rate == 44100 and clap.max_length == 32


def test_shipped_clap_tells_captions_apart(clap, tmp_path):
    """On fresh clips, each caption scores its own clip above the other clips (on average)."""
    from sa_jax.metrics.clap import clap_audio

    captions = synth_set(tmp_path / "clips")
    ids = list(captions)
    t = np.asarray(clap.text_embedding([captions[k] for k in ids]))
    a = np.asarray(clap.audio_embedding([clap_audio(tmp_path / "clips" / f"{k}.wav", 44100) for k in ids], 44100))
    sim = t @ a.T
    matched, other = np.mean(np.diag(sim)), np.mean(sim[~np.eye(len(ids), dtype=bool)])
    print(f"matched {matched:.3f}, mismatched {other:.3f}")
    assert matched > other + 0.05


def test_metrics_command_defaults_to_the_shipped_clap(tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    captions = synth_set(gen, count=4, seed=3)
    synth_set(ref, count=6, seed=4)
    csv = tmp_path / "captions.csv"
    csv.write_text("id,caption\n" + "".join(f'{k},"{v}"\n' for k, v in captions.items()))
    out = tmp_path / "m.json"
    r = subprocess.run([sys.executable, "-m", "sa_jax.cli", "metrics", "--generated", str(gen), "--reference", str(ref),
                        "--metrics", "fd_clap,clap_score", "--captions", str(csv), "--out", str(out)],
                       capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=600)
    assert r.returncode == 0, r.stderr
    assert "CLAP: the shipped small model's own" in r.stdout
    report = json.loads(out.read_text())["metrics"]
    assert report["clap_score"]["clap"] == str(SHIPPED_CLAP) == report["fd_clap"]["clap"]
    assert 0 < report["clap_score"]["value"] <= 1 and report["fd_clap"]["value"] > 0
