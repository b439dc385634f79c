"""Sources: the list of usable examples the pipeline draws from, and a report of what was skipped.

A source is built once in the main process (scan + header probe), so every host and every worker
sees the same ordered index; the per-example work (decode, crop) happens later in grain workers.

- `scan_folder`: a folder tree of wav/flac/mp3/ogg with metadata from a manifest at the root
  (`metadata.jsonl`, `metadata.csv`, ...) and/or a JSON sidecar per file.
- TFDS and pre-encoded latents have their own index builders in `tfds_builder.py` / `latents.py`;
  they produce entries of the same shape (plain dicts) and the same `SkipReport`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sa_jax.data.audio_io import AUDIO_EXTENSIONS, peak_db, probe, read_all
from sa_jax.data.metadata import MANIFEST_NAMES, read_manifest, read_sidecar
from sa_jax.errors import BadAudio, MetadataError, NoUsableData

log = logging.getLogger("sa_jax.data")

# Files that are expected in a corpus folder and are not audio.
_IGNORED_SUFFIXES = {".json", ".jsonl", ".csv", ".txt", ".md", ".yaml", ".yml"}


@dataclass
class SkipReport:
    """What a scan or a run skipped: (path, reason code, detail) per item, plus counts."""
    seen: int = 0
    kept: int = 0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)

    def skip(self, path: str, reason: str, detail: str) -> None:
        self.skipped.append((path, reason, detail))
        log.warning("skipping %s (%s): %s", path, reason, detail)

    def counts(self) -> dict[str, int]:
        return dict(Counter(r for _, r, _ in self.skipped))

    def summary(self) -> str:
        by = ", ".join(f"{n} {r}" for r, n in sorted(self.counts().items())) or "none"
        return f"{self.kept} of {self.seen} files usable; skipped {len(self.skipped)} ({by})"

    def merge(self, other: "SkipReport") -> "SkipReport":
        return SkipReport(self.seen, self.kept, self.skipped + other.skipped)

    def to_json(self) -> dict:
        return {"seen": self.seen, "kept": self.kept, "counts": self.counts(),
                "skipped": [{"path": p, "reason": r, "detail": d} for p, r, d in self.skipped]}


def _find_manifest(root: Path) -> Path | None:
    for name in MANIFEST_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def _check_full(path: Path, sample_rate: int, silence_db: float) -> None:
    """Decode the whole file: catches truncation, NaN and all-silent files up front."""
    audio, _ = read_all(path, sample_rate, channels=2, what=str(path))
    if peak_db(audio) < silence_db:
        raise BadAudio("silent", f"{path}: peak below {silence_db} dBFS")


def _walk(root: Path, report: SkipReport) -> list[Path]:
    """The candidate audio files under `root`, sorted by relative path. Symlinked directories are
    followed, but each real directory (by device and inode) only once: a link back to a directory on
    the way down is a `symlink_loop`, a second way into a directory already scanned a
    `duplicate_dir`; both are reported as skipped. Names are kept as the OS gives them (str with
    surrogate escapes for bytes that are not UTF-8, which os.fsencode turns back into the bytes)."""
    files: list[Path] = []
    seen: set[tuple[int, int]] = set()
    # Directories reachable without following a link are scanned under their own names, never
    # through a link to them.
    real: set[tuple[int, int]] = set()
    for dirpath, _, _ in os.walk(root):
        try:
            st = os.stat(dirpath)
            real.add((st.st_dev, st.st_ino))
        except OSError:
            pass

    def visit(d: Path, ancestors: tuple[tuple[int, int], ...]) -> None:
        try:
            st = d.stat()
        except OSError as e:
            report.skip(str(d.relative_to(root)), "unreadable", f"{type(e).__name__}: {e}")
            return
        ident = (st.st_dev, st.st_ino)
        if d != root and (ident in seen or (ident in real and d.is_symlink())):
            rel = str(d.relative_to(root))
            if ident in ancestors:
                report.skip(rel, "symlink_loop", f"links back to {os.path.realpath(d)}, a folder it is inside")
            else:
                report.skip(rel, "duplicate_dir", f"{os.path.realpath(d)} is scanned under another name")
            return
        seen.add(ident)
        try:
            with os.scandir(d) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as e:
            report.skip(str(d.relative_to(root)) if d != root else str(d), "unreadable",
                        f"{type(e).__name__}: {e}")
            return
        subdirs = []
        for item in items:
            try:
                is_dir = item.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(d / item.name)
                continue
            name = item.name
            if name.startswith("."):
                continue
            p = d / name
            if p.suffix.lower() in _IGNORED_SUFFIXES:
                continue
            files.append(p)
        for sub in subdirs:
            visit(sub, ancestors + (ident,))

    visit(root, ())
    files.sort(key=lambda p: str(p.relative_to(root)))
    return files


def scan_folder(root: str | Path, manifest: str | Path | None = None, check: str = "header",
                sample_rate: int = 44100, silence_db: float = -60.0, min_seconds: float = 0.0,
                max_seconds: float | None = None, require_metadata: bool = False,
                threads: int = 8) -> tuple[list[dict], SkipReport]:
    """Index the audio files under `root`.

    Metadata per file: the manifest row (`manifest`, or a `metadata.jsonl`/`.csv` found at the
    root) updated by a sidecar JSON if present. `check="header"` reads headers only (fast; bad
    content is caught later when decoded); `check="full"` decodes every file once (catches
    truncated, NaN and silent files before training). Returns (entries, report); entries are
    sorted by relative path so the index is the same on every host.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    if check not in ("header", "full"):
        raise ValueError(f"check must be 'header' or 'full', got {check!r}")
    report = SkipReport()
    man_path = Path(manifest) if manifest else _find_manifest(root)
    rows: dict[str, dict] = {}
    if man_path is not None:
        if not man_path.is_file():
            raise FileNotFoundError(f"manifest {man_path} does not exist")
        rows, bad_rows = read_manifest(man_path)
        for where, reason in bad_rows:
            report.skip(where, "bad_metadata", reason)
        rows = {os.path.normpath(k): v for k, v in rows.items()}

    files = _walk(root, report)

    def one(p: Path) -> tuple[dict | None, tuple[str, str, str] | None]:
        rel = str(p.relative_to(root))
        try:
            meta = dict(rows.get(os.path.normpath(rel), {}))
            side = read_sidecar(p)
            if side is not None:
                meta.update(side)
            if require_metadata and not meta:
                raise MetadataError(f"{rel}: no manifest row and no sidecar")
            info = probe(p, rel)
            if check == "full":
                _check_full(p, sample_rate, silence_db)
        except BadAudio as e:
            return None, (rel, e.reason, e.detail)
        except MetadataError as e:
            return None, (rel, "bad_metadata", str(e))
        except Exception as e:  # never let one odd file stop the scan
            return None, (rel, "unreadable", f"{type(e).__name__}: {e}")
        seconds = info.frames / info.sample_rate
        if seconds < min_seconds or (max_seconds is not None and seconds > max_seconds):
            return None, (rel, "length", f"{seconds:.2f} s is outside [{min_seconds}, {max_seconds}]")
        for k in ("path", "file", "filename"):
            meta.pop(k, None)
        entry = {"path": str(p), "relpath": rel, "sample_rate": info.sample_rate, "frames": info.frames,
                 "channels": info.channels, "metadata_json": json.dumps(meta, ensure_ascii=False)}
        return entry, None

    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = list(pool.map(one, files))
    entries = []
    for entry, bad in results:
        report.seen += 1
        if bad is not None:
            report.skip(*bad)
        else:
            entries.append(entry)
    report.kept = len(entries)
    for rel in set(rows) - {os.path.normpath(str(p.relative_to(root))) for p in files}:
        report.skip(rel, "missing", "listed in the manifest but not found")
    for i, e in enumerate(entries):
        e["index"] = i
    log.info("%s: %s", root, report.summary())
    if not entries:
        raise NoUsableData(f"no usable audio under {root} ({report.summary()}); readable formats: "
                           f"{', '.join(AUDIO_EXTENSIONS)}")
    return entries, report
