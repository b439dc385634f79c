"""The corpus word-level tokenizer: RoBERTa's special-token ids, digits always known, a stable
vocabulary, and a round trip through save_pretrained / AutoTokenizer / sa_jax's load_tokenizer."""

import json

import numpy as np
import pytest

from sa_jax.text_tokenizer import SPECIAL_TOKENS, build_word_tokenizer, corpus_texts, metadata_texts, words

TEXTS = ["A bell, loud at 120 BPM.", "sine flute | quiet", "bell", "Bell chime; metallic", "sawtooth lead, loud"]


def test_special_tokens_in_roberta_places():
    tok = build_word_tokenizer(TEXTS)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    ids = (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id)
    assert ids == (0, 1, 2, 3, 4)
    ids = tok("bell loud")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and len(ids) == 4


def test_words_lowercase_punctuation_and_digits():
    assert words("Bell; LOUD 93.") == ["bell", ";", "loud", "9", "3", "."]
    tok = build_word_tokenizer(TEXTS)
    ids = tok("BELL 975 zebra")["input_ids"][1:-1]
    assert tok.convert_ids_to_tokens(ids) == ["bell", "9", "7", "5", "<unk>"]   # unseen number spelled out


def test_vocabulary_is_ordered_by_count_and_capped():
    tok = build_word_tokenizer(TEXTS)
    vocab = tok.get_vocab()
    # bell x3, then "," x2 and loud x2 (count, then alphabetical), after the 15 fixed ids
    assert [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1])][15:18] == ["bell", ",", "loud"]
    assert build_word_tokenizer(list(reversed(TEXTS))).get_vocab() == vocab   # order of texts does not matter
    small = build_word_tokenizer(TEXTS, max_vocab=17)
    assert len(small) == 17 and small("loud")["input_ids"][1] == 3          # the rarer word is now <unk>
    assert set(build_word_tokenizer(TEXTS, min_count=2).get_vocab()) == set(SPECIAL_TOKENS) | set("0123456789") | {
        ",", "bell", "loud"}
    with pytest.raises(ValueError, match="max_vocab 10 leaves no room"):
        build_word_tokenizer(TEXTS, max_vocab=10)
    with pytest.raises(ValueError, match="no words"):
        build_word_tokenizer([])


def test_save_and_load_round_trip(tmp_path):
    from transformers import AutoTokenizer

    from sa_jax.checkpoints.tokenizer import load_tokenizer
    from sa_jax.encoders import tokenize

    tok = build_word_tokenizer(TEXTS)
    tok.save_pretrained(tmp_path / "tok")
    auto = AutoTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    ours = load_tokenizer(tmp_path / "tok")
    prompts = ["bell, loud at 60 BPM", "sine flute"]
    for t in (auto, ours):
        assert t(prompts)["input_ids"] == tok(prompts)["input_ids"]
        assert t.pad_token_id == 1
    ids, mask = tokenize(ours, prompts, 12)
    assert ids.shape == (2, 12) and ids.dtype == np.int32
    assert mask.sum(1).tolist() == [9, 4]                      # <s> bell , loud at 6 0 bpm </s>; <s> sine flute </s>
    assert np.all(ids[~mask] == 1)


def test_corpus_texts_cover_prompt_words(tmp_path):
    from sa_jax.data.metadata import build_prompt

    rows = [{"path": f"audio/{i}.wav", "instrument": inst, "tags": ["bell", "chime"], "bpm": 90 + i,
             "percussion": i % 2 == 0, "description": f"A {inst} at {90 + i} BPM."}
            for i, inst in enumerate(["bell", "sine flute", "plucked string"])]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = corpus_texts(tmp_path)
    assert texts == list(metadata_texts(rows))
    assert "instrument: plucked string" in texts and "percussion: yes" in texts
    assert not any(t.startswith("path") for t in texts)       # reserved keys are not prompt material
    tok = build_word_tokenizer(texts)
    rng = np.random.default_rng(0)
    for _ in range(50):                                        # every prompt the pipeline can build is covered
        prompt = build_prompt(rows[int(rng.integers(3))], rng)
        assert tok.unk_token_id not in tok(prompt)["input_ids"], prompt
    only = corpus_texts(tmp_path, prompt_keys=["instrument"])
    assert {w for t in only for w in words(t)} == {"instrument", "bell", "sine", "flute", "plucked", "string",
                                                   ":", "|", ","}
    with pytest.raises(FileNotFoundError, match="no manifest"):
        corpus_texts(tmp_path / "nowhere")
