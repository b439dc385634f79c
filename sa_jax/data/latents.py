"""Pre-encoded latents: run a VAE encoder over a dataset once, then train diffusion from the latents.

Layout written by `encode_dataset` (readable by `DataConfig(kind="latents", path=out_dir)`):

    out_dir/info.json        {"format": "sa-jax-latents", "version": 1, "sample_rate", "downsampling_ratio",
                              "latent_dim", "channels", "count", "source"}
    out_dir/index.jsonl      one line per file: {"latents": "latents/<relpath>.npy", "relpath",
                              "samples": length at sample_rate, "frames": latent frames, "metadata_json"}
    out_dir/latents/...npy   float32 (latent_dim, frames): the whole file, not a crop
    out_dir/skipped.json     what was skipped and why

`combine_latents` writes a folder that indexes the clips of several others (paths relative to it).

Whole files are stored, so every epoch can take a fresh crop. The timing facts of a crop follow
from the audio length: a crop at latent frame `o` starts at sample o * ratio, so
seconds_start = floor(o * ratio / sr) and seconds_total = ceil(samples / sr), exactly as for audio.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sa_jax.data.audio_io import peak_db, read_all
from sa_jax.data.config import DataConfig
from sa_jax.data.sources import SkipReport, scan_folder
from sa_jax.errors import BadAudio, NoUsableData

log = logging.getLogger("sa_jax.data")

FORMAT = "sa-jax-latents"


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _json_line(row: dict) -> str:
    """One index line: UTF-8 as it is; a name that is not UTF-8 (surrogate escapes) as \\udcXX
    escapes, which json.loads turns back into the same str (and os.fsencode into the same bytes)."""
    line = json.dumps(row, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(row)
    return line + "\n"


def _atomic_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def encode_dataset(ae: Any, source_dir: str | Path, out_dir: str | Path, *, manifest: str | Path | None = None,
                   check: str = "header", silence_db: float = -60.0, min_seconds: float = 0.0,
                   max_seconds: float | None = None, max_chunk_seconds: float | None = None,
                   resume: bool = True, encode_kwargs: dict | None = None,
                   progress: Callable[[int, int, str], None] | None = None) -> SkipReport:
    """Encode every usable audio file under `source_dir` with `ae` into `out_dir`.

    `ae` is duck-typed: `sample_rate`, `downsampling_ratio`, optionally `io_channels` (default 2),
    and `encode(audio (1, channels, samples)) -> (1, latent_dim, frames)` (extra keyword arguments
    from `encode_kwargs`). Audio is read at `ae.sample_rate`, mono copied to stereo, zero-padded to
    a multiple of the ratio. `max_chunk_seconds` caps how much audio goes to one `encode` call
    (longer files are encoded in consecutive ratio-aligned pieces and concatenated; leave None
    when the encoder chunks itself). With `resume`, files whose latents already exist are kept.
    Bad files are skipped and reported; returns the SkipReport (also written to skipped.json).
    `progress(done, total, relpath)` is called once with done=0 before the first file and then
    after each file, encoded or skipped (done runs 1..total).
    Raises NoUsableData when nothing could be encoded; `out_dir` is then removed if this call
    created it (a folder that was already there is left, with its skipped.json).
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    sr = int(ae.sample_rate)
    ratio = int(ae.downsampling_ratio)
    channels = int(getattr(ae, "io_channels", 2))
    if sr <= 0 or ratio <= 0:
        raise ValueError(f"encoder reports sample_rate={sr}, downsampling_ratio={ratio}; both must be positive")
    entries, report = scan_folder(source_dir, manifest, check, sr, silence_db, min_seconds, max_seconds)
    created = _missing_parents(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _encode_entries(ae, entries, report, source_dir, out_dir, sr, ratio, channels, silence_db,
                               max_chunk_seconds, resume, encode_kwargs, progress)
    except NoUsableData:
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _missing_parents(path: Path) -> Path | None:
    """The topmost of `path` and its parents that does not exist yet (what mkdir(parents=True) makes)."""
    top = None
    p = path.absolute()
    while not p.exists() and not p.is_symlink():
        top = p
        if p.parent == p:
            break
        p = p.parent
    return top


def _encode_entries(ae, entries, report, source_dir, out_dir, sr, ratio, channels, silence_db,
                    max_chunk_seconds, resume, encode_kwargs, progress) -> SkipReport:
    rows = []
    latent_dim = None
    kwargs = dict(encode_kwargs or {})
    t0 = time.time()
    if progress is not None:
        progress(0, len(entries), "")
    for i, e in enumerate(entries):
        if progress is not None and i:
            progress(i, len(entries), entries[i - 1]["relpath"])
        rel = e["relpath"]
        dst = out_dir / "latents" / (rel + ".npy")
        try:
            if resume and dst.is_file():
                z = np.load(dst, mmap_mode="r")
                samples = int(math.ceil(e["frames"] * sr / e["sample_rate"])) if e["sample_rate"] != sr else e["frames"]
            else:
                audio, _ = read_all(e["path"], sr, channels, rel)
                if peak_db(audio) < silence_db:
                    raise BadAudio("silent", f"{rel}: peak below {silence_db} dBFS")
                samples = audio.shape[1]
                pad = (-samples) % ratio
                if pad:
                    audio = np.pad(audio, ((0, 0), (0, pad)))
                step = audio.shape[1]
                if max_chunk_seconds:
                    step = max(ratio, int(max_chunk_seconds * sr) // ratio * ratio)
                parts = [np.asarray(ae.encode(audio[None, :, s:s + step], **kwargs))[0]
                         for s in range(0, audio.shape[1], step)]
                z = np.concatenate(parts, axis=-1).astype(np.float32)
                if z.ndim != 2:
                    raise ValueError(f"encoder returned latents of shape {z.shape}; expected (1, dim, frames)")
                if not np.isfinite(z).all():
                    raise BadAudio("nan", f"{rel}: the encoder produced NaN/inf latents")
                _atomic_npy(dst, z)
        except BadAudio as err:
            report.skip(rel, err.reason, err.detail)
            continue
        except (OSError, ValueError, RuntimeError, MemoryError) as err:
            report.skip(rel, "encode_error", f"{type(err).__name__}: {err}")
            continue
        if latent_dim is None:
            latent_dim = int(z.shape[0])
        elif z.shape[0] != latent_dim:
            raise ValueError(f"{rel}: latents have {z.shape[0]} channels, earlier files {latent_dim}; "
                             f"is {dst} from another encoder? (delete it or pass resume=False)")
        rows.append({"latents": str(dst.relative_to(out_dir)), "relpath": rel, "samples": int(samples),
                     "frames": int(z.shape[-1]), "metadata_json": e["metadata_json"]})
    if progress is not None and entries:
        progress(len(entries), len(entries), entries[-1]["relpath"])
    report.kept = len(rows)
    _atomic_json(out_dir / "skipped.json", report.to_json())
    if not rows:
        raise NoUsableData(f"nothing could be encoded from {source_dir}: {report.summary()}")
    tmp = out_dir / ".index.jsonl.partial"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(_json_line(r))
    os.replace(tmp, out_dir / "index.jsonl")
    _atomic_json(out_dir / "info.json", {
        "format": FORMAT, "version": 1, "sample_rate": sr, "downsampling_ratio": ratio,
        "latent_dim": latent_dim, "channels": channels, "count": len(rows), "source": str(source_dir),
        "seconds": round(time.time() - t0, 2)})
    log.info("encoded %d files into %s (%s)", len(rows), out_dir, report.summary())
    return report


def combine_latents(out_dir: str | Path, sources: list[str | Path]) -> int:
    """Write a latents folder at `out_dir` that holds every clip of the latents folders `sources`, without
    copying them: its index points at their files by relative path. The sources must agree on sample rate,
    downsampling ratio, latent size and channels (they are one autoencoder's latents). Returns the count."""
    out_dir = Path(out_dir)
    if not sources:
        raise ValueError("combine_latents needs at least one source folder")
    for src in sources:
        if not (Path(src) / "info.json").is_file():
            raise FileNotFoundError(f"{src} is not a latents folder (no info.json); write one with encode_dataset")
    infos = [json.loads((Path(s) / "info.json").read_text(encoding="utf-8")) for s in sources]
    keys = ("format", "sample_rate", "downsampling_ratio", "latent_dim", "channels")
    for src, info in zip(sources, infos):
        if any(info.get(k) != infos[0].get(k) for k in keys):
            raise ValueError(f"{src} holds other latents than {sources[0]} "
                             f"({', '.join(f'{k} {info.get(k)} vs {infos[0].get(k)}' for k in keys)}): "
                             "combine only folders encoded by one autoencoder")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for src in map(Path, sources):
        with open(src / "index.jsonl", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    rows.append({**row, "latents": os.path.relpath(src / row["latents"], out_dir),
                                 "relpath": f"{src.name}/{row['relpath']}"})
    tmp = out_dir / ".index.jsonl.partial"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(_json_line(r))
    os.replace(tmp, out_dir / "index.jsonl")
    _atomic_json(out_dir / "info.json", {**{k: infos[0][k] for k in keys}, "version": 1, "count": len(rows),
                                         "source": [str(s) for s in sources]})
    return len(rows)


def open_latents(path: str | Path, min_seconds: float = 0.0,
                 max_seconds: float | None = None) -> tuple[list[dict], SkipReport, dict]:
    """Read the index of a latents folder: (entries, report, info)."""
    path = Path(path)
    info_path = path / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{path} is not a latents folder (no info.json); write one with encode_dataset")
    with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    if info.get("format") != FORMAT:
        raise ValueError(f"{info_path}: format {info.get('format')!r} is not {FORMAT!r}")
    report = SkipReport()
    entries = []
    with open(path / "index.jsonl", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            report.seen += 1
            try:
                row = json.loads(line)
                seconds = row["samples"] / info["sample_rate"]
                if row["frames"] <= 0 or row["samples"] <= 0:
                    raise ValueError("empty")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                report.skip(f"{path / 'index.jsonl'}:{n}", "bad_metadata", f"{type(e).__name__}: {e}")
                continue
            if seconds < min_seconds or (max_seconds is not None and seconds > max_seconds):
                report.skip(row["relpath"], "length", f"{seconds:.2f} s is outside [{min_seconds}, {max_seconds}]")
                continue
            row["path"] = str(path / row["latents"])
            row["index"] = len(entries)
            entries.append(row)
    report.kept = len(entries)
    if not entries:
        raise NoUsableData(f"no usable latents in {path} ({report.summary()})")
    return entries, report, info


class LatentCrop:
    """grain random map: latents index entry -> training example (or None when unreadable)."""

    def __init__(self, config: DataConfig, info: dict, num_items: int, skip_log: str | None):
        from sa_jax.data.pipeline import SkipTracker

        self.c = config
        self.sr = int(info["sample_rate"])
        self.ratio = int(info["downsampling_ratio"])
        self.dim = int(info["latent_dim"])
        self.window = config.latent_window or max(1, config.window // self.ratio)
        self.tracker = SkipTracker(num_items, skip_log)

    def __call__(self, entry: dict, rng: np.random.Generator) -> dict | None:
        from sa_jax.data.metadata import build_prompt
        from sa_jax.data.pipeline import crop_timing

        c, W, r = self.c, self.window, self.ratio
        rel = entry["relpath"]
        try:
            z = np.load(entry["path"], mmap_mode="r")
            if z.ndim != 2 or z.shape[0] != self.dim:
                raise ValueError(f"latents of shape {z.shape}; expected ({self.dim}, frames)")
            n = int(entry["samples"])
            valid = min(z.shape[1], -(-n // r))   # frames that hold real audio
            offset = int(rng.integers(0, valid - W + 1)) if (c.random_crop and valid > W) else 0
            piece = np.asarray(z[:, offset:offset + W], np.float32)
            if not np.isfinite(piece).all():
                raise ValueError("NaN/inf in latents")
            metadata = json.loads(entry.get("metadata_json", "{}"))
            prompt = build_prompt(metadata, rng, c.prompt_keys or None, c.prompt_exclude, c.p_key_value)
        except (OSError, ValueError, KeyError) as e:
            self.tracker.bad(int(entry.get("index", -1)), rel, "bad_latents", f"{type(e).__name__}: {e}")
            return None
        self.tracker.ok()
        out = np.zeros((self.dim, W), np.float32)
        m = min(piece.shape[1], valid - offset)
        out[:, :m] = piece[:, :m]
        mask = np.zeros((W,), bool)
        mask[:m] = True
        # Timing in samples, as if the audio crop had started at offset * ratio.
        s_start, s_total, t0, t1 = crop_timing(n, W * r, self.sr, offset * r)
        return {"latents": out, "padding_mask": mask,
                "seconds_start": np.int32(s_start), "seconds_total": np.int32(s_total),
                "t_start": np.float32(t0), "t_end": np.float32(t1),
                "prompt": prompt, "relpath": rel, "metadata": entry.get("metadata_json", "{}"),
                "index": np.int64(entry.get("index", -1))}
