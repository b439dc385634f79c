"""The Flax T5 encoder against transformers' T5EncoderModel (random weights through sa-jax's
importer), the folder loader with a real (tiny, offline-built) T5 tokenizer, and its errors."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_jax.checkpoints.io import read_weights
from sa_jax.checkpoints.t5 import check_t5_folder, import_t5
from sa_jax.encoders import T5TextEncoder
from sa_jax.errors import CheckpointError
from sa_jax.models.t5 import T5Config, T5Encoder
from sa_jax.testing.sat_ref import randomize, rel_err, state_dict

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
WORDS = ["drum", "loop", "tech", "house", "bpm", "128", "rain", "on", "a", "roof", "piano", "soft", "ambient",
         "kick", "snare", "bass"]


def _hf_config(ff: str, vocab: int = 64, layers: int = 2):
    # few buckets and a short max distance so that a 24-token input reaches the log-spaced buckets
    return transformers.T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=48, num_layers=layers, num_heads=4,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=12,
                                 feed_forward_proj=ff, dropout_rate=0.0, decoder_start_token_id=0)


def _ids_and_mask(batch=2, length=24, vocab=64, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (batch, length))
    mask = np.ones((batch, length), bool)
    mask[1, 15:] = False          # the second row is padded
    ids[~mask] = 0
    return ids, mask


@pytest.mark.parametrize("ff", ["relu", "gated-gelu"])
def test_matches_transformers(ff):
    hf = _hf_config(ff)
    model = randomize(transformers.T5EncoderModel(hf), seed=1)
    config = T5Config.from_hf(hf.to_dict())
    assert config.gated == (ff != "relu")
    params = import_t5(state_dict(model), config)
    ids, mask = _ids_and_mask()
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64)))
    ref = ref.last_hidden_state.numpy()
    ours = np.asarray(jax.jit(lambda p, i, m: T5Encoder(config).apply({"params": p}, i, m))(params, ids, mask))
    err = rel_err(ours, ref)
    print(f"T5 ({ff}) vs transformers: relative error {err:.2e}")
    assert err < TOL
    ours16 = np.asarray(jax.jit(lambda p, i, m: T5Encoder(config, jnp.bfloat16).apply({"params": p}, i, m))(
        params, ids, mask))
    assert ours16.dtype == np.float32 and rel_err(ours16, ref) < 5e-2


def test_whole_seq2seq_checkpoint_imports_and_mismatch_is_one_error():
    hf = _hf_config("relu")
    full = transformers.T5ForConditionalGeneration(hf)
    config = T5Config.from_hf(hf.to_dict())
    import_t5(state_dict(full), config)          # decoder and lm_head keys are not the encoder's
    deeper = state_dict(transformers.T5EncoderModel(_hf_config("relu", layers=3)))
    deeper["encoder.block.0.layer.0.SelfAttention.q.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(CheckpointError) as e:
        import_t5(deeper, config, source="t5-folder/model.safetensors")
    msg = str(e.value)
    assert "t5-folder/model.safetensors" in msg and "encoder.block.2.layer.0.SelfAttention.q.weight" in msg
    assert "(3, 3)" in msg
    with pytest.raises(CheckpointError, match="DenseReluDense.wi_0"):   # a gated config against a ReLU file
        import_t5(state_dict(full), T5Config.from_hf(_hf_config("gated-gelu").to_dict()))


def _tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0 - 0.1 * i) for i, w in enumerate(WORDS)]
    pieces += [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5")
    tok = _tokenizer()
    model = randomize(transformers.T5EncoderModel(_hf_config("gated-gelu", vocab=len(tok))), seed=2)
    model.save_pretrained(root / "weights")
    tok.save_pretrained(root / "tokenizer")
    return root, model, tok


def test_folder_with_tokenizer_matches_reference_conditioner(t5_folder):
    root, model, tok = t5_folder
    together = root / "together"
    shutil.copytree(root / "weights", together)
    for f in (root / "tokenizer").iterdir():
        shutil.copy(f, together / f.name)
    prompts = ["128 BPM tech house drum loop", "rain on a roof", "soft ambient piano zz"]
    for encoder in (T5TextEncoder.load(together, max_length=16),
                    T5TextEncoder.load(root / "weights", root / "tokenizer", max_length=16)):
        emb, mask = encoder(prompts)
        assert emb.shape == (3, 16, 32) and mask.shape == (3, 16)
        # the reference conditioner: tokenise to max_length, encode, zero the padding
        enc = tok(prompts, truncation=True, max_length=16, padding="max_length", return_tensors="pt")
        np.testing.assert_array_equal(np.asarray(mask), enc["attention_mask"].numpy().astype(bool))
        ids, _ = encoder.tokenize(prompts)
        np.testing.assert_array_equal(ids, enc["input_ids"].numpy())
        assert ids[0, 0] == tok.convert_tokens_to_ids("\u2581128")      # real pieces, not <unk>
        with torch.no_grad():
            ref = model(**enc).last_hidden_state * enc["attention_mask"][..., None]
        err = rel_err(emb, ref.numpy())
        print(f"T5 text encoder from a folder vs transformers: relative error {err:.2e}")
        assert err < TOL
        assert not np.any(np.asarray(emb)[~np.asarray(mask)])
    with pytest.raises(ValueError, match="empty"):
        encoder([])


def test_missing_files_are_named(t5_folder, tmp_path):
    root, _, _ = t5_folder
    only_config = tmp_path / "half"
    only_config.mkdir()
    shutil.copy(root / "weights" / "config.json", only_config / "config.json")
    with pytest.raises(FileNotFoundError) as e:
        T5TextEncoder.load(only_config)
    msg = str(e.value)
    assert str(only_config) in msg
    for name in ("model.safetensors", "tokenizer.json", "spiece.model"):
        assert name in msg, (name, msg)
    assert "config.json (in" not in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_t5_folder(tmp_path / "nowhere")
    # weights complete, tokenizer folder without its config
    bare_tok = tmp_path / "bare_tok"
    bare_tok.mkdir()
    shutil.copy(root / "tokenizer" / "tokenizer.json", bare_tok / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match=f"tokenizer_config.json \\(in {bare_tok}\\)"):
        T5TextEncoder.load(root / "weights", bare_tok)


def test_t5_base_shape_matches_transformers():   # about 15 s on two cores
    """t5-base's shape (12 layers, 768 wide, ReLU), 128 tokens, as Stable Audio Open uses it."""
    hf = transformers.T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                               feed_forward_proj="relu", dropout_rate=0.0)
    model = randomize(transformers.T5EncoderModel(hf), seed=5)
    config = T5Config.from_hf(hf.to_dict())
    assert config == T5Config()
    params = import_t5(state_dict(model), config)
    ids, mask = _ids_and_mask(batch=2, length=128, vocab=32128)
    mask[1, 40:] = False
    ids[~mask] = 0
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64)))
    ours = np.asarray(jax.jit(lambda p, i, m: T5Encoder(config).apply({"params": p}, i, m))(params, ids, mask))
    err = rel_err(ours, ref.last_hidden_state.numpy())
    print(f"T5 (t5-base shape, 128 tokens) vs transformers: relative error {err:.2e}")
    assert err < TOL


def test_matches_stable_audio_tools_t5_conditioner():
    """stable-audio-tools' T5Conditioner (its from_pretrained calls fed the tiny local model):
    same tokens, same mask, padding zeroed. The reference casts T5 to float16; its weights (now
    float16-rounded) are imported, and against the reference run in float32 the error is < 1e-4."""
    from unittest import mock

    from sa_jax.testing.sat_ref import sat_module

    conditioners = sat_module("models.conditioners")
    tok = _tokenizer()
    model = randomize(transformers.T5EncoderModel(_hf_config("relu", vocab=len(tok))), seed=1)
    with mock.patch.object(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tok), \
            mock.patch.object(transformers.T5EncoderModel, "from_pretrained", lambda *a, **k: model):
        # output_dim = t5-small's width, so the reference adds no projection
        ref = conditioners.T5Conditioner(output_dim=512, t5_model_name="t5-small", max_length=12)
    prompts = ["128 bpm tech house drum loop", "rain"]
    with torch.no_grad(), pytest.warns(UserWarning, match="autocast"):
        half, ref_mask = ref(prompts, "cpu")
    ref.model.float()
    with torch.no_grad(), pytest.warns(UserWarning, match="autocast"):
        full, _ = ref(prompts, "cpu")
    config = T5Config.from_hf(model.config.to_dict())
    encoder = T5TextEncoder(config, import_t5(state_dict(ref.model), config), tok, max_length=12)
    ours, mask = encoder(prompts)
    np.testing.assert_array_equal(np.asarray(mask), ref_mask.numpy())
    err32, err16 = rel_err(ours, full.numpy()), rel_err(ours, half.float().numpy())
    print(f"T5 text encoder vs stable-audio-tools T5Conditioner: {err32:.2e} (float32), {err16:.2e} (its float16)")
    assert err32 < TOL and err16 < 5e-3


def test_sharded_weights_load(t5_folder, tmp_path):
    root, model, _ = t5_folder
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    state = read_weights(tmp_path, ["model.safetensors", "model.safetensors.index.json"])
    np.testing.assert_array_equal(state["shared.weight"], model.shared.weight.detach().numpy())
    (tmp_path / shards[-1]).unlink()
    with pytest.raises(CheckpointError, match=shards[-1]):
        read_weights(tmp_path, ["model.safetensors.index.json"])
