"""The NumPy CLAP front-end against transformers' ClapFeatureExtractor, and the `Clap` API: a
transformers ClapModel folder with a (tiny, offline-built) RoBERTa tokenizer, layer -2 text
features with their mask for Stable Audio 1.0's conditioner, embeddings of raw audio, the
over-long prompt warning, and missing tokenizer files."""

from __future__ import annotations

import functools
import os
import shutil

import numpy as np
import pytest

from sa_jax import Clap
from sa_jax.encoders import load_clap_text_encoder
from sa_jax.models.clap import ClapAudioFeatures, ClapConfig, HTSATConfig, audio_features, log_mel, mel_filters
from sa_jax.testing.sat_ref import randomize, rel_err

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
SENTENCES = ["a dog barks in the rain", "128 BPM tech house drum loop", "soft ambient piano",
             "birds singing at dawn in a quiet forest"]


def _extractor(truncation: str, **kw):
    return transformers.ClapFeatureExtractor(truncation=truncation, frequency_min=50, **kw)


@pytest.mark.parametrize("fusion", [False, True], ids=["rand_trunc", "fusion"])
def test_features_match_feature_extractor(fusion):
    config = ClapConfig(audio=HTSATConfig(enable_fusion=fusion))
    fe = _extractor("fusion" if fusion else "rand_trunc")
    rng = np.random.default_rng(0)
    clips = [rng.normal(size=48000 * 3) * 0.1, rng.normal(size=480000) * 0.2]     # short (repeat-padded), exact
    ref = fe(clips, sampling_rate=48000, return_tensors="np")["input_features"]
    ours, longer = audio_features(clips, config)
    assert ours.shape == ref.shape == (2, 4 if fusion else 1, 1001, 64) and not longer.any()
    err = rel_err(ours, ref)
    print(f"log-mel features ({'fusion' if fusion else 'rand_trunc'}) vs ClapFeatureExtractor: {err:.2e}")
    assert err < 1e-5
    if fusion:    # a 14 s clip: the shrunk whole clip matches; the crops are 10 s slices from the thirds
        long = rng.normal(size=48000 * 14) * 0.1
        ref = fe([long], sampling_rate=48000, return_tensors="np")["input_features"][0]
        ours, longer = audio_features([long], config, seed=3)
        assert longer.tolist() == [True] and rel_err(ours[0, 0], ref[0]) < 1e-5
        full = log_mel(long, config.features, mel_filters(config.features, 64, htk=True)).astype(np.float32)
        starts = []
        for crop in ours[0, 1:]:
            hits = [s for s in range(full.shape[0] - 1001 + 1) if np.abs(full[s:s + 1001] - crop).max() < 1e-4]
            assert hits, "a crop is not a slice of the whole clip's mel"
            starts.append(hits[0])
        assert starts == sorted(starts)
    with pytest.raises(ValueError, match="48000 Hz, got 44100"):
        audio_features(clips, config, sample_rate=44100)
    with pytest.raises(ValueError, match="NaN"):
        audio_features([np.full(100, np.nan)], config)


def _tokenizer(folder):
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES * 10, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    tok = transformers.RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tok.save_pretrained(str(folder))
    return tok


@functools.cache
def clap_folder(root: str):
    from pathlib import Path

    root = Path(root)
    folder = root / "clap"
    folder.mkdir(exist_ok=True)
    tok = _tokenizer(folder)
    hf = transformers.ClapConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=80, layer_norm_eps=1e-5),
        audio_config=dict(window_size=4, num_mel_bins=16, spec_size=32, patch_embeds_hidden_size=8, depths=[2, 2],
                          num_attention_heads=[2, 4], hidden_size=16),
        projection_dim=12)
    model = randomize(transformers.ClapModel(hf), seed=4)
    model.save_pretrained(folder)
    extractor().save_pretrained(folder)        # preprocessor_config.json: the log-mel settings
    return model, tok, folder


def extractor():
    # small audio settings for the tiny model: 0.5 s at 16 kHz, hop 128 -> 63 frames of 16 mels
    return transformers.ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=128, fft_window_size=256,
                                             frequency_min=0, frequency_max=8000, truncation="rand_trunc",
                                             max_length_s=0.5)


@pytest.fixture
def clap_dir(tmp_path_factory):
    return clap_folder(str(tmp_path_factory.getbasetemp()))


def test_text_features_for_the_conditioner(clap_dir):
    model, tok, folder = clap_dir
    clap = Clap.load(folder)
    feats, mask = clap.text_features(SENTENCES)
    assert feats.shape == (4, 77, 32) and mask.shape == (4, 77) and feats.dtype == np.float32
    # stable-audio-tools' CLAPTextConditioner: pad to 77, hidden_states[-2] with the attention mask
    enc = tok(SENTENCES, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    np.testing.assert_array_equal(np.asarray(mask), enc["attention_mask"].numpy().astype(bool))
    with torch.no_grad():
        ref = model.text_model(**enc, output_hidden_states=True).hidden_states
        ref_emb = model.get_text_features(**enc).pooler_output.numpy()
    err = rel_err(feats, ref[-2].numpy())
    err_emb = rel_err(clap.text_embedding(SENTENCES), ref_emb)
    print(f"Clap.text_features(layer=-2) vs transformers through the tokenizer: {err:.2e}; embedding {err_emb:.2e}")
    assert err < TOL and err_emb < TOL
    assert rel_err(clap.text_features(SENTENCES, layer=0)[0], ref[0].numpy()) < TOL
    # the text tower alone (what Stable Audio 1.0's conditioner loads) gives the same features
    alone = load_clap_text_encoder(folder, folder)
    states, mask2 = alone(SENTENCES)
    assert rel_err(states[-2], ref[-2].numpy()) < TOL and np.array_equal(np.asarray(mask2), np.asarray(mask))
    with pytest.raises(ValueError, match="layer 5 is not in -4..3"):
        clap.text_features(SENTENCES, layer=5)


def test_long_prompts_warn(clap_dir):
    clap = Clap.load(clap_dir[2])
    long = " ".join(SENTENCES * 8)
    with pytest.warns(UserWarning, match=r"longer than the CLAP text encoder's 77 tokens were truncated to 77 tokens"):
        feats, mask = clap.text_features(["soft ambient piano", long])
    assert np.asarray(mask)[1].all() and feats.shape == (2, 77, 32)


def test_audio_embedding_from_waveforms(clap_dir):
    model, _, folder = clap_dir
    clap = Clap.load(folder)
    assert clap.config.features == ClapAudioFeatures(sample_rate=16000, n_fft=256, hop_length=128, f_min=0.0,
                                                     f_max=8000.0, max_length_s=0.5)
    rng = np.random.default_rng(2)
    clips = [rng.normal(size=5000) * 0.1, rng.normal(size=8000) * 0.3]
    inputs = extractor()(clips, sampling_rate=16000, max_length=8000, return_tensors="pt")
    with torch.no_grad():
        ref = model.get_audio_features(**inputs).pooler_output.numpy()
    ours = clap.audio_embedding(clips, sample_rate=16000)
    err = rel_err(ours, ref)
    print(f"Clap.audio_embedding(waveforms) vs ClapFeatureExtractor + ClapModel: {err:.2e}")
    assert err < TOL
    score = clap.score(SENTENCES[:2], clips, sample_rate=16000)
    assert score.shape == (2,) and np.all(np.abs(score) <= 1 + 1e-6)


def test_missing_tokenizer_files_are_named(clap_dir, tmp_path):
    _, _, folder = clap_dir
    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        os.symlink(folder / name, weights_only / name)
    clap = Clap.load(weights_only)          # no tokenizer beside the weights: the audio side still works
    with pytest.raises(ValueError, match="without a tokenizer"):
        clap.text_features(["x"])
    empty = tmp_path / "tok"
    empty.mkdir()
    shutil.copy(folder / "tokenizer_config.json", empty / "tokenizer_config.json")
    with pytest.raises(FileNotFoundError) as e:
        Clap.load(weights_only, tokenizer_folder=empty)
    msg = str(e.value)
    assert str(empty) in msg and "vocab.json + merges.txt" in msg and "tokenizer.json" in msg
    with pytest.raises(FileNotFoundError, match="do not exist"):
        Clap.load(tmp_path / "nothing.pt")


def test_bad_audio_input_is_explained(clap_dir):
    from sa_jax.errors import ConfigError

    clap = Clap.load(clap_dir[2])
    with pytest.raises(ValueError, match="2 prompts but 1 clips"):
        clap.score(SENTENCES[:2], [np.zeros(4000)], sample_rate=16000)
    with pytest.raises(ValueError, match=r"mono waveforms \(1-D\), got shape \(2, 100\)"):
        clap.audio_embedding([np.zeros((2, 100))], sample_rate=16000)
    variables = clap.variables
    with pytest.raises(ValueError, match=r"features of shape \(batch, 1, frames, 16\), got \(1, 4, 20, 16\)"):
        clap.model.apply(variables, np.zeros((1, 4, 20, 16), np.float32), method=clap.model.get_audio_embedding)
    with pytest.raises(ValueError, match="at most 64 x 16"):
        clap.model.apply(variables, np.zeros((1, 1, 80, 16), np.float32), method=clap.model.get_audio_embedding)
    hf = transformers.ClapConfig(audio_config=dict(enable_fusion=True, fusion_type="iaff_2d"))
    with pytest.raises(ConfigError, match="fusion_type 'iaff_2d' is not supported"):
        ClapConfig.from_hf(hf.to_dict())
