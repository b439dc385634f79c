"""clap_score and fd_clap against a re-implementation of stable-audio-metrics' CLAP score pipeline
(librosa.load mono at the model's rate, peak -1 dBFS, int16 round trip, transformers' feature
extractor + ClapModel as the CLAP), on a tiny random CLAP; captions from a CSV; missing ids."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from sa_jax import Clap
from sa_jax.errors import MetadataError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_clap_api import SENTENCES, clap_folder, extractor  # noqa: E402  (the tiny CLAP + tokenizer)


@pytest.fixture
def clap_dir(tmp_path_factory):
    return clap_folder(str(tmp_path_factory.getbasetemp()))


def write_files(folder, seed=0):
    """Mixed rates and channel counts, each under the tiny model's 0.5 s window."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i, (sr, ch, sec) in enumerate(((22050, 2, 0.4), (16000, 1, 0.45), (48000, 1, 0.3), (44100, 2, 0.2))):
        t = np.arange(int(sr * sec)) / sr
        x = np.stack([np.sin(2 * np.pi * (300 + 200 * i + 50 * c) * t) * 0.4 + rng.normal(size=t.size) * 0.05
                      for c in range(ch)], axis=1)
        sf.write(folder / f"clip{i}.wav", x, sr)
    return folder


def reference_embeddings(model, folder, ids, sr=16000):
    import librosa

    out = []
    for k in ids:
        audio, _ = librosa.load(folder / f"{k}.wav", sr=sr, mono=True)
        audio = audio * (10 ** (-1 / 20) / np.max(np.abs(audio)))
        audio = (np.clip(audio, -1, 1) * 32767.0).astype(np.int16) / 32767.0
        inputs = extractor()([audio.astype(np.float32)], sampling_rate=sr, max_length=8000, return_tensors="pt")
        with torch.no_grad():
            out.append(model.get_audio_features(**inputs).pooler_output.numpy()[0])
    return np.stack(out)


def test_clap_score_matches_the_reference_pipeline(clap_dir, tmp_path):
    from sa_jax.metrics import clap_score, fd_clap
    from sa_jax.metrics.frechet import frechet_distance

    model, tok, folder = clap_dir
    clap = Clap.load(folder)
    gen = write_files(tmp_path / "gen")
    ids = [f"clip{i}" for i in range(4)]
    captions = dict(zip(ids, SENTENCES))
    csv = tmp_path / "captions.csv"
    csv.write_text("ytid,caption\n" + "".join(f'{k},"{v}"\n' for k, v in captions.items()))
    audio = reference_embeddings(model, gen, ids)
    with torch.no_grad():
        text = model.get_text_features(**tok(list(captions.values()), padding=True, return_tensors="pt"))
    text = text.pooler_output.numpy() if hasattr(text, "pooler_output") else text.numpy()
    cos = np.sum(audio * text, -1) / (np.linalg.norm(audio, axis=-1) * np.linalg.norm(text, axis=-1))
    want = float(cos.mean())
    got = clap_score(gen, csv, model=clap, batch_size=3)
    print(f"clap_score {got:.6f} vs reference {want:.6f}")
    np.testing.assert_allclose(got, want, rtol=1e-3)
    np.testing.assert_allclose(clap_score(gen, captions, model=clap, batch_size=8), got, rtol=1e-5)

    ref = write_files(tmp_path / "ref", seed=1)
    audio_ref = reference_embeddings(model, ref, ids)
    norm = lambda e: e / np.linalg.norm(e, axis=-1, keepdims=True)    # noqa: E731  (CLAP's embeddings are unit length)
    a, b = norm(audio), norm(audio_ref)
    want_fd = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    np.testing.assert_allclose(fd_clap(gen, ref, model=clap, batch_size=3), want_fd, rtol=1e-3)


def test_clap_score_names_missing_ids_and_bad_captions(clap_dir, tmp_path):
    from sa_jax.metrics import clap_score

    clap = Clap.load(clap_dir[2])
    gen = write_files(tmp_path / "gen")
    with pytest.raises(MetadataError, match="2 of 3 caption ids have no generated file: nope1, nope2"):
        clap_score(gen, {"clip0": "a dog", "nope1": "x", "nope2": "y"}, model=clap)
    bad = tmp_path / "bad.csv"
    bad.write_text("key,words\na,b\n")
    with pytest.raises(MetadataError, match="needs an id column"):
        clap_score(gen, bad, model=clap)
