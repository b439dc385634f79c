"""The CLAP score and a Fréchet distance on the CLAP audio embedding (`fd_clap`).

CLAP score, as stable-audio-metrics computes it: each caption's text embedding against the audio
embedding of the generated file with the same id; the audio read mono at the CLAP model's rate
(downmixed, then resampled with soxr HQ, as `librosa.load(sr=48000, mono=True)`), peak-normalised to
-1 dBFS, through an int16 round trip; the mean cosine similarity over all captions. The reference
uses LAION's `630k-audioset-fusion-best.pt`; any CLAP `sa_jax.Clap.load` reads works, e.g. the small
recipe's own CLAP (`clap/export`), which makes an in-domain score that runs offline.

`fd_clap` embeds every file of two sets the same way (one embedding per file) and returns the
Fréchet distance of their Gaussians. Both default to the shipped small model's own CLAP
(`sa_jax/assets/small_clap`: the recipe's CLAP stage, whose text tower the shipped model conditions
on), which scores that model in-domain and offline.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from sa_jax.audio import read_audio, resample
from sa_jax.errors import MetadataError
from sa_jax.metrics.audio import audio_files, ids_text, peak_normalize
from sa_jax.metrics.frechet import RunningStats, frechet_distance, load_stats

ID_COLUMNS = ("id", "ytid", "file", "filename", "name")

# The whole CLAP of the shipped small model (the recipe's CLAP stage; the model keeps only its text
# tower): the default for in-domain scoring of that model.
SHIPPED_CLAP = Path(__file__).resolve().parents[1] / "assets" / "small_clap"


def shipped_clap() -> Path:
    """The shipped small model's full CLAP (a ClapModel folder with its tokenizer)."""
    if not (SHIPPED_CLAP / "config.json").is_file():
        raise FileNotFoundError(f"the shipped model's CLAP is not in this checkout ({SHIPPED_CLAP} is missing): "
                                "give a CLAP folder, e.g. the small recipe's clap/export")
    return SHIPPED_CLAP
TEXT_COLUMNS = ("caption", "text", "prompt")


def read_captions(captions) -> dict[str, str]:
    """{id: caption} from a mapping or a CSV with a header naming an id column (id, ytid, file,
    filename, name; a file name's extension is dropped) and a text column (caption, text, prompt)."""
    if isinstance(captions, Mapping):
        out = {str(k): str(v) for k, v in captions.items()}
    else:
        path = Path(captions)
        if not path.is_file():
            raise FileNotFoundError(f"captions file {path} does not exist")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = [c.strip().lower() for c in reader.fieldnames or []]
            id_col = next((c for c in ID_COLUMNS if c in fields), None)
            text_col = next((c for c in TEXT_COLUMNS if c in fields), None)
            if id_col is None or text_col is None:
                raise MetadataError(f"{path}: the header {reader.fieldnames} needs an id column "
                                    f"({', '.join(ID_COLUMNS)}) and a caption column ({', '.join(TEXT_COLUMNS)})")
            names = dict(zip(fields, reader.fieldnames))
            out = {}
            for n, row in enumerate(reader, start=2):
                key = Path(str(row[names[id_col]]).strip()).stem if id_col in ("file", "filename") else \
                    str(row[names[id_col]]).strip()
                if key in out:
                    raise MetadataError(f"{path} line {n}: id '{key}' appears twice")
                out[key] = str(row[names[text_col]] or "")
    if not out:
        raise MetadataError("no captions given")
    empty = [k for k, v in out.items() if not v.strip()]
    if empty:
        raise MetadataError(f"{len(empty)} caption(s) are empty: {ids_text(empty)}")
    return out


def clap_audio(path, sample_rate: int) -> np.ndarray:
    """One file as the CLAP score reads it: mono float32 at `sample_rate`, peak -1 dBFS, int16 round trip."""
    audio, sr = read_audio(path)
    mono = resample(audio.mean(axis=0, keepdims=True), sr, sample_rate)[0]
    mono = np.clip(peak_normalize(mono), -1.0, 1.0)
    return ((mono * 32767.0).astype(np.int16) / 32767.0).astype(np.float32)


def _audio_embeddings(model, paths: list, batch_size: int, seed: int) -> np.ndarray:
    """(n, dim) L2-normalised CLAP audio embeddings; batches padded to one size (one compile)."""
    rate = model.config.features.sample_rate
    waves = [clap_audio(p, rate) for p in paths]
    n = len(waves)
    if n < batch_size:
        waves = waves + [waves[-1]] * (batch_size - n)
    return np.asarray(model.audio_embedding(waves, rate, seed=seed))[:n]


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def default_clap(model):
    """`model`, or the shipped small model's own CLAP when None."""
    if model is not None:
        return model
    from sa_jax.encoders import Clap

    return Clap.load(shipped_clap())


def clap_score(generated, captions, model=None, batch_size: int = 16, seed: int = 0,
               progress: Callable[[int], None] | None = None) -> float:
    """Mean cosine similarity between each caption and the generated file of its id.
    `generated`: a folder, list of files or {id: path}; `captions`: {id: text} or a CSV;
    `model`: a `sa_jax.Clap` (with its tokenizer); None: the shipped small model's own CLAP.
    Every caption needs its file."""
    model = default_clap(model)
    captions = read_captions(captions)
    files = audio_files(generated, "generated set")
    missing = [k for k in captions if k not in files]
    if missing:
        raise MetadataError(f"{len(missing)} of {len(captions)} caption ids have no generated file: "
                            f"{ids_text(missing)} (files are matched by name without extension)")
    ids = list(captions)
    total = 0.0
    for batch in _batches(ids, batch_size):
        texts = [captions[k] for k in batch]
        t = np.asarray(model.text_embedding(texts + [texts[-1]] * (batch_size - len(batch))))[:len(batch)]
        a = _audio_embeddings(model, [files[k] for k in batch], batch_size, seed)
        cos = np.sum(t * a, -1) / np.maximum(np.linalg.norm(t, axis=-1) * np.linalg.norm(a, axis=-1), 1e-8)
        total += float(np.sum(cos, dtype=np.float64))
        if progress:
            progress(len(batch))
    return total / len(ids)


def clap_stats_name(model) -> str:
    c = model.config
    return f"clap audio {c.projection_dim} (HTSAT {c.audio.embed_dim}, {c.features.sample_rate} Hz)"


def clap_statistics(files, model, batch_size: int = 16, seed: int = 0,
                    progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, files) of the CLAP audio embeddings of a set, one per file."""
    files = audio_files(files)
    stats = RunningStats()
    for batch in _batches(list(files.values()), batch_size):
        stats.add(_audio_embeddings(model, batch, batch_size, seed))
        if progress:
            progress(len(batch))
    mu, sigma = stats.result()
    return mu, sigma, stats.count


def fd_clap(generated, reference, model=None, batch_size: int = 16, seed: int = 0,
            progress: Callable[[int], None] | None = None) -> float:
    """Fréchet distance between the CLAP audio embeddings of two sets (folders, file lists, or an
    `.npz` of reference statistics for `reference`); `model` None: the shipped small model's own CLAP."""
    model = default_clap(model)

    def stats(source):
        if isinstance(source, (str, Path)) and str(source).endswith(".npz"):
            return load_stats(source, embedding=clap_stats_name(model))
        return clap_statistics(source, model, batch_size, seed, progress)[:2]
    return frechet_distance(*stats(generated), *stats(reference))
