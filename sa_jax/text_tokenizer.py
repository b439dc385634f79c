"""A small word-level tokenizer built from a corpus, for text encoders trained here (CLAP).

Pretrained tokenizers (roberta-base's BPE) come from hubs that may be out of reach; a CLAP trained
from scratch on a captioned corpus only needs the words its prompts use. `build_word_tokenizer`
makes one with the `tokenizers` library and wraps it as a transformers `PreTrainedTokenizerFast`,
so `save_pretrained(folder)`, `AutoTokenizer.from_pretrained(folder)` and
`sa_jax.checkpoints.tokenizer.load_tokenizer(folder)` all work, as with RoBERTa's.

- Special tokens in RoBERTa's places: `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, `<mask>` 4, so a
  RoBERTa-layout text tower (`BertConfig(positions="roberta", pad_token_id=1)`) takes its ids.
  Every sequence is `<s> words </s>`.
- Text is NFKC-normalised and lower-cased, split at whitespace and punctuation (each punctuation
  character is a token) and numbers into single digits (the ten digits are always in the vocabulary, so
  any number is spelled out, never `<unk>`). Words not in the vocabulary become `<unk>`.
- The vocabulary: the special tokens, the digits, then the corpus words by falling count (ties in
  alphabetical order), so the same texts always give the same ids.

    tok = build_word_tokenizer(corpus_texts("data/synth"), max_vocab=512)
    tok.save_pretrained("run/tokenizer")
    tok(["bell, loud"])["input_ids"]      # [[0, ..., 2]]
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")   # ids 0..4, RoBERTa's order
DIGITS = tuple("0123456789")


def _normalizer():
    from tokenizers import normalizers

    return normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])


def _pre_tokenizer():
    from tokenizers import pre_tokenizers

    # whitespace, then every punctuation character on its own, then every digit on its own
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated"),
                                    pre_tokenizers.Digits(individual_digits=True)])


def words(text: str) -> list[str]:
    """The pieces `text` is cut into (before the vocabulary lookup)."""
    norm = _normalizer().normalize_str(text)
    return [w for w, _ in _pre_tokenizer().pre_tokenize_str(norm)]


def build_word_tokenizer(texts: Iterable[str], max_vocab: int | None = None, min_count: int = 1,
                         model_max_length: int = 77):
    """A `PreTrainedTokenizerFast` whose vocabulary is the words of `texts` (see the module docstring).

    `max_vocab` caps the vocabulary including the 5 special tokens and 10 digits (the rarest words
    are left out and become `<unk>`); `min_count` drops words seen fewer times. `model_max_length`
    is the length `tokenizer(..., truncation=True)` cuts at by default."""
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    fixed = list(SPECIAL_TOKENS) + list(DIGITS)
    if max_vocab is not None and max_vocab < len(fixed) + 1:
        raise ValueError(f"max_vocab {max_vocab} leaves no room for words: the special tokens and digits take "
                         f"{len(fixed)} ids")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts: collections.Counter = collections.Counter()
    n_texts = 0
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__}: {text!r:.60}")
        counts.update(words(text))
        n_texts += 1
    for t in fixed:
        counts.pop(t, None)
    ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if not ranked:
        raise ValueError(f"no words to build a vocabulary from ({n_texts} texts, min_count {min_count})")
    if max_vocab is not None:
        ranked = ranked[: max_vocab - len(fixed)]
    vocab = {t: i for i, t in enumerate(fixed + ranked)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>", model_max_length=model_max_length,
        padding_side="right", truncation_side="right")


def _value_text(value) -> str | None:
    """Metadata value -> the text a prompt may show (lists: all items; bools: yes/no)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, (list, tuple)):
        items = [t for t in (_value_text(v) for v in value) if t]
        return ", ".join(items) if items else None
    return None


def metadata_texts(rows: Iterable[Mapping], prompt_keys: Sequence[str] = (), exclude: Sequence[str] = ()
                   ) -> Iterator[str]:
    """Every text the data pipeline's prompt builder can make words from: for each metadata row and
    eligible key (`sa_jax.data.metadata.prompt_fields`), `"key: value"` (the key-value form shows the
    keys), then the separators the builder joins fields with."""
    from sa_jax.data.metadata import prompt_fields

    for row in rows:
        for key in prompt_fields(row, prompt_keys or None, exclude):
            text = _value_text(row[key])
            if text:
                yield f"{key}: {text}"
        yield "| ,"


def corpus_texts(path: str | Path, prompt_keys: Sequence[str] = (), exclude: Sequence[str] = (),
                 manifest: str | Path | None = None) -> list[str]:
    """`metadata_texts` of an audio folder's manifest (metadata.jsonl/.csv at its root, or `manifest`)."""
    from sa_jax.data.metadata import MANIFEST_NAMES, read_manifest

    path = Path(path)
    if manifest is None:
        found = [path / n for n in MANIFEST_NAMES if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"no manifest in {path} (looked for {', '.join(MANIFEST_NAMES)}); a tokenizer "
                                    "is built from the corpus metadata")
        manifest = found[0]
    rows, _ = read_manifest(manifest)
    return list(metadata_texts(rows.values(), prompt_keys, exclude))
