"""The Grain pipeline: index -> shard -> shuffle -> repeat -> decode/crop/prompt -> batch -> workers.

    from sa_jax.data import DataConfig, DataPipeline
    pipe = DataPipeline(DataConfig(path="corpus/", window=262144, batch_size=4))
    it = pipe.iterator()
    batch = next(it)             # {"audio": (B, 2, W) float32, "padding_mask": (B, W) bool,
                                 #  "seconds_start": (B,) int32, "seconds_total": (B,) int32, "prompt": (B,) str, ...}
    state = it.get_state()       # JSON-serialisable; it.set_state(state) resumes at the exact next example

Everything random is drawn from generators grain seeds from (config.seed, example position), so a
seed fixes the whole stream regardless of thread or worker count. Bad examples become None inside
the map and are dropped before batching; each is logged with its path and reason, appended to the
skip log, and counted. A process that has seen every example of its index fail raises
`NoUsableData` instead of spinning forever.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from sa_jax.data.audio_io import AudioInfo, peak_db, read_window
from sa_jax.data.config import DataConfig
from sa_jax.data.metadata import build_prompt
from sa_jax.data.sources import SkipReport
from sa_jax.errors import BadAudio, NoUsableData

log = logging.getLogger("sa_jax.data")


def crop_timing(n: int, window: int, sample_rate: int, offset: int) -> tuple[int, int, float, float]:
    """(seconds_start, seconds_total, t_start, t_end) of a crop at `offset` from an n-sample file,
    computed as stable-audio-tools' PadCrop_Normalized_T does."""
    upper = max(0, n - window)
    return (math.floor(offset / sample_rate), math.ceil(n / sample_rate),
            offset / (upper + window), (offset + window) / (upper + window))


class SkipTracker:
    """Per-process bookkeeping of skipped examples (one per grain worker after pickling)."""

    def __init__(self, num_items: int, skip_log: str | None):
        self.num_items = num_items
        self.skip_log = skip_log
        self.failed: set = set()
        self.consecutive = 0
        self.max_consecutive = max(1000, 10 * num_items)

    def ok(self) -> None:
        self.consecutive = 0

    def bad(self, key: Any, path: str, reason: str, detail: str) -> None:
        log.warning("skipping %s (%s): %s", path, reason, detail)
        if self.skip_log:
            try:
                with open(self.skip_log, "a") as f:
                    f.write(json.dumps({"path": path, "reason": reason, "detail": detail}) + "\n")
            except OSError:
                pass
        self.failed.add(key)
        self.consecutive += 1
        if len(self.failed) >= self.num_items or self.consecutive >= self.max_consecutive:
            raise NoUsableData(
                f"every example failed to load ({len(self.failed)} distinct of {self.num_items}, "
                f"{self.consecutive} in a row); last: {path} ({reason}: {detail})")


class AudioCrop:
    """grain random map: index entry -> training example (or None when the example is bad)."""

    def __init__(self, config: DataConfig, num_items: int, skip_log: str | None):
        self.c = config
        self.tracker = SkipTracker(num_items, skip_log)

    def __call__(self, entry: dict, rng: np.random.Generator) -> dict | None:
        c = self.c
        rel = _text(entry.get("relpath", entry.get("path", "?")))
        try:
            src = entry["audio_bytes"] if "audio_bytes" in entry else _text(entry["path"])
            info = AudioInfo(int(entry["sample_rate"]), int(entry["frames"]), int(entry["channels"]))
            n = info.frames_at(c.sample_rate)
            W = c.window
            # crop_past_end < W keeps every crop's start inside the clip; a clip shorter than the window
            # starts at 0 and is silence-padded anyway
            offset = int(rng.integers(0, n - W + c.crop_past_end + 1)) if (c.random_crop and n > W) else 0
            audio = read_window(src, info, c.sample_rate, offset, W, c.channels, rel)
            if peak_db(audio) < c.silence_db:
                raise BadAudio("silent", f"{rel}: crop at sample {offset} peaks below {c.silence_db} dBFS")
            metadata = json.loads(_text(entry.get("metadata_json", "{}")))
            prompt = build_prompt(metadata, rng, c.prompt_keys or None, c.prompt_exclude, c.p_key_value)
            flip = bool(rng.random() < 0.5) if c.phase_flip else False
        except BadAudio as e:
            self.tracker.bad(rel, rel, e.reason, e.detail)
            return None
        except (OSError, ValueError, KeyError, RuntimeError, MemoryError) as e:
            self.tracker.bad(rel, rel, "decode_error", f"{type(e).__name__}: {e}")
            return None
        self.tracker.ok()
        m = audio.shape[1]
        chunk = np.zeros((c.channels, W), np.float32)
        np.clip(audio, -1.0, 1.0, out=chunk[:, :m])
        if flip:
            np.negative(chunk[:, :m], out=chunk[:, :m])
        mask = np.zeros((W,), bool)
        mask[:m] = True   # the samples read (a crop may end inside the clip, at its end, or past it)
        s_start, s_total, t0, t1 = crop_timing(n, W, c.sample_rate, offset)
        return {"audio": chunk, "padding_mask": mask,
                "seconds_start": np.int32(s_start), "seconds_total": np.int32(s_total),
                "t_start": np.float32(t0), "t_end": np.float32(t1),
                "prompt": prompt, "relpath": rel, "metadata": _text(entry.get("metadata_json", "{}")),
                "index": np.int64(entry.get("index", -1))}


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, np.ndarray):
        return _text(v.item())
    return str(v)


def _batch_fn(examples):
    """Stack arrays; keep strings as numpy unicode arrays (never object arrays)."""
    out = {}
    for k in examples[0]:
        vals = [e[k] for e in examples]
        out[k] = np.array(vals) if isinstance(vals[0], str) else np.stack(vals)
    return out


def absl_flags_parsed() -> None:
    """grain worker processes read absl flags; mark them parsed when the host app did not."""
    try:
        from absl import flags
    except ImportError:
        return
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class DataPipeline:
    """A configured pipeline over one source. `report` says what indexing skipped;
    `summary()` adds what decoding skipped so far (from the shared skip log)."""

    def __init__(self, config: DataConfig | dict, entries: Any = None, report: SkipReport | None = None):
        from sa_jax.config import from_dict

        self.config = c = from_dict(DataConfig, config)
        self.skip_log = c.skip_log or os.path.join(tempfile.gettempdir(), f"sa_jax_skips_{uuid.uuid4().hex[:10]}.jsonl")
        Path(self.skip_log).parent.mkdir(parents=True, exist_ok=True)
        if entries is None:
            entries, report, transform = _open_source(c, self.skip_log)
        else:  # a prebuilt audio index (from scan_folder or open_tfds)
            if c.kind == "latents":
                raise ValueError("pass entries only for audio sources; latents are opened from config.path")
            transform = AudioCrop(c, len(entries), self.skip_log)
        self.entries = entries
        self.report = report or SkipReport(len(entries), len(entries))
        self.transform = transform
        self.shard_index, self.shard_count = c.shard_index, c.shard_count
        if self.shard_count is None:
            import jax

            self.shard_index, self.shard_count = jax.process_index(), jax.process_count()

    def __len__(self) -> int:
        """Examples in this host's shard (one epoch)."""
        return len(range(self.shard_index, len(self.entries), self.shard_count))

    def map_dataset(self):
        """The per-example MapDataset (before batching): shard, shuffle, repeat, decode."""
        import grain

        c = self.config
        ds = grain.MapDataset.source(self.entries)
        ds = ds[self.shard_index::self.shard_count]
        if len(ds) == 0:
            raise NoUsableData(f"shard {self.shard_index} of {self.shard_count} is empty: the source has only "
                               f"{len(self.entries)} examples")
        if c.shuffle:
            ds = ds.shuffle(seed=c.seed)
        ds = ds.repeat(c.num_epochs)
        return ds.random_map(self.transform, seed=c.seed)

    def dataset(self):
        """The batched IterDataset (with worker processes when num_workers > 0)."""
        import grain

        c = self.config
        ds = self.map_dataset().to_iter_dataset(
            grain.ReadOptions(num_threads=c.num_threads, prefetch_buffer_size=c.prefetch_buffer_size))
        if c.num_workers > 0:
            # Workers decode examples (worker w takes positions w, w+k, ...) and the main process
            # interleaves them back in order, so batches are the same with any worker count.
            absl_flags_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=c.num_workers, per_worker_buffer_size=c.worker_buffer_size))
        return ds.batch(c.batch_size, drop_remainder=c.drop_remainder, batch_fn=_batch_fn)

    def iterator(self, state: dict | None = None):
        """A grain DatasetIterator; pass a state from `get_state()` to resume after it."""
        it = iter(self.dataset())
        if state is not None:
            it.set_state(state)
        return it

    def runtime_skips(self) -> SkipReport:
        rep = SkipReport()
        if os.path.exists(self.skip_log):
            seen = set()
            with open(self.skip_log) as f:
                for line in f:
                    try:
                        d = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if (d["path"], d["reason"]) not in seen:
                        seen.add((d["path"], d["reason"]))
                        rep.skipped.append((d["path"], d["reason"], d["detail"]))
        return rep

    def summary(self) -> str:
        run = self.runtime_skips()
        by = ", ".join(f"{n} {r}" for r, n in sorted(run.counts().items())) or "none"
        return f"index: {self.report.summary()}; while reading: {len(run.skipped)} distinct skipped ({by})"


def _open_source(c: DataConfig, skip_log: str):
    if c.kind == "folder":
        from sa_jax.data.sources import scan_folder

        entries, report = scan_folder(c.path, c.manifest, c.check, c.sample_rate, c.silence_db,
                                      c.min_seconds, c.max_seconds, c.require_metadata)
        return entries, report, AudioCrop(c, len(entries), skip_log)
    if c.kind == "tfds":
        from sa_jax.data.tfds_builder import open_tfds

        entries, report = open_tfds(c.path, c.split)
        return entries, report, AudioCrop(c, len(entries), skip_log)
    if c.kind == "latents":
        from sa_jax.data.latents import LatentCrop, open_latents

        entries, report, info = open_latents(c.path, c.min_seconds, c.max_seconds)
        return entries, report, LatentCrop(c, info, len(entries), skip_log)
    raise ValueError(f"unknown data kind {c.kind!r}")
