"""Hugging Face tokenizers saved in a local folder (T5's SentencePiece, RoBERTa's BPE, BERT's
WordPiece, or sa-jax's word-level tokenizer), loaded with local files only."""

from __future__ import annotations

from pathlib import Path


def load_tokenizer(folder: str | Path):
    """The Hugging Face tokenizer saved in `folder` (local files only). Raises FileNotFoundError
    naming the folder and the files a tokenizer needs when they are not there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} does not exist or is not a directory")
    have_fast = (folder / "tokenizer.json").is_file()
    have_spm = (folder / "spiece.model").is_file()
    have_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    have_wordpiece = (folder / "vocab.txt").is_file()
    if not (have_fast or have_spm or have_bpe or have_wordpiece):
        raise FileNotFoundError(
            f"no tokenizer in {folder}: need tokenizer.json, or spiece.model (T5), or vocab.json + merges.txt "
            f"(RoBERTa/CLAP), or vocab.txt (BERT); the folder holds "
            f"{sorted(p.name for p in folder.iterdir()) or 'nothing'}")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # transformers raises many types; say where and what
        raise FileNotFoundError(f"could not load a tokenizer from {folder} ({type(e).__name__}: {e})") from None
