"""Per-file metadata (JSONL/CSV manifests, JSON sidecars) and text prompts built from it.

Prompts follow the Stable Audio paper: each time a clip is drawn, a random non-empty subset of its
metadata fields is taken in random order; half the time they are written `key: value | key: value`,
otherwise as the values alone joined by commas. List values (tags, instruments) are shuffled and
comma-joined inside their field.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from sa_jax.errors import MetadataError

# Keys that describe the file rather than its content; never put in prompts.
RESERVED_KEYS = frozenset({"path", "file", "filename", "relpath", "sample_rate", "channels", "frames",
                           "num_frames", "seconds_total", "seconds_start", "duration_s"})

MANIFEST_NAMES = ("metadata.jsonl", "manifest.jsonl", "metadata.csv", "manifest.csv")


_NONFINITE_WORDS = {"nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def finite_values(value: Any) -> Any:
    """`value` with NaN/inf numbers dropped (None for a non-finite number; left out of lists and
    objects): a missing measurement, never prompt text like "nan"."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [v for v in (finite_values(x) for x in value) if v is not None]
    if isinstance(value, dict):
        return {k: v for k, v in ((k, finite_values(x)) for k, x in value.items()) if v is not None}
    return value


def _not_utf8(text: str, where: str) -> None:
    """Files are read with surrogate escapes so one bad line does not hide the others."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise MetadataError(f"{where}: not UTF-8 (byte {text[e.start].encode('utf-8', 'surrogateescape')!r} "
                            f"at column {e.start + 1})") from None


def _parse_cell(text: str) -> Any:
    """CSV cells: JSON when the cell parses as JSON (numbers, lists, true/false), else the text;
    `a;b;c` becomes a list. `nan`/`inf` (as pandas writes missing numbers) are missing."""
    s = text.strip()
    if s == "" or s.lower() in _NONFINITE_WORDS:
        return None
    if s[0] in "[{\"-0123456789" or s in ("true", "false", "null"):
        try:
            return finite_values(json.loads(s))
        except json.JSONDecodeError:
            pass
    if ";" in s:
        return [p.strip() for p in s.split(";") if p.strip()]
    return s


def _path_key(entry: Mapping, where: str) -> str:
    for k in ("path", "file", "filename"):
        v = entry.get(k)
        if isinstance(v, str) and v:
            return v
    raise MetadataError(f"{where}: no 'path' (or 'file'/'filename') field")


def read_manifest(path: str | Path) -> tuple[dict[str, dict], list[tuple[str, str]]]:
    """Read a JSONL or CSV manifest. Returns ({relative path: metadata}, [(where, reason), ...]);
    broken lines are reported, not raised."""
    path = Path(path)
    out: dict[str, dict] = {}
    bad: list[tuple[str, str]] = []
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{i}"
                try:
                    _not_utf8(line, where)
                    entry = json.loads(line)
                    if not isinstance(entry, dict):
                        raise MetadataError(f"{where}: a line must be a JSON object, got {type(entry).__name__}")
                    out[_path_key(entry, where)] = finite_values(entry)
                except (json.JSONDecodeError, MetadataError) as e:
                    bad.append((where, f"bad_metadata: {e}"))
    elif path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            for i, row in enumerate(reader, 2):
                where = f"{path}:{i}"
                try:
                    _not_utf8(",".join(str(v) for kv in row.items() for v in kv), where)
                    if None in row:
                        raise MetadataError(f"{where}: more cells than header columns")
                    entry = {k: _parse_cell(v or "") for k, v in row.items() if k}
                    entry = {k: v for k, v in entry.items() if v is not None}
                    out[_path_key(entry, where)] = entry
                except MetadataError as e:
                    bad.append((where, f"bad_metadata: {e}"))
    else:
        raise MetadataError(f"{path}: a manifest must be .jsonl or .csv")
    return out, bad


def read_sidecar(audio_path: Path) -> dict | None:
    """`song.json` (or `song.wav.json`) beside `song.wav`; None when there is none. Raises
    MetadataError when it exists but is not a JSON object."""
    for cand in (audio_path.with_suffix(".json"), audio_path.with_name(audio_path.name + ".json")):
        if cand.is_file():
            try:
                with open(cand, encoding="utf-8") as f:
                    data = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
                raise MetadataError(f"{cand}: not valid JSON ({e})") from None
            if not isinstance(data, dict):
                raise MetadataError(f"{cand}: must hold a JSON object, got {type(data).__name__}")
            return finite_values(data)
    return None


# --- prompts -------------------------------------------------------------------------------------

def _format_value(value: Any, rng: np.random.Generator) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else None
    if isinstance(value, (int, str)):
        s = str(value).strip()
        return s or None
    if isinstance(value, (list, tuple)):
        items = [s for s in (_format_value(v, rng) for v in value) if s]
        if not items:
            return None
        order = rng.permutation(len(items))
        return ", ".join(items[i] for i in order)
    return None  # nested objects are not prompt material


def _has_text(value: Any) -> bool:
    """Whether `_format_value` gives text for `value` (without drawing from the generator)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (bool, int)):
        return True
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, tuple)):
        return any(_has_text(v) for v in value)
    return False


def prompt_fields(metadata: Mapping[str, Any], keys: Sequence[str] | None = None,
                  exclude: Iterable[str] = ()) -> list[str]:
    """The metadata keys eligible for prompts: `keys` if given (in that order, those present),
    else every key that is not reserved, excluded, or private (`_name`)."""
    skip = RESERVED_KEYS | set(exclude)
    if keys:
        return [k for k in keys if k in metadata and k not in set(exclude)]
    return [k for k in metadata if k not in skip and not k.startswith("_")]


def build_prompt(metadata: Mapping[str, Any], rng: np.random.Generator, keys: Sequence[str] | None = None,
                 exclude: Iterable[str] = (), p_key_value: float = 0.5, min_fields: int = 1) -> str:
    """A prompt from a random subset of `metadata` (see the module docstring). Empty when the
    metadata has nothing usable."""
    fields = [k for k in prompt_fields(metadata, keys, exclude) if _has_text(metadata[k])]
    if not fields:
        return ""
    lo = min(max(1, min_fields), len(fields))
    n = int(rng.integers(lo, len(fields) + 1))
    chosen = [fields[i] for i in rng.permutation(len(fields))[:n]]
    key_value = bool(rng.random() < p_key_value)
    parts = []
    for k in chosen:
        v = _format_value(metadata[k], rng)
        if v:
            parts.append(f"{k}: {v}" if key_value else v)
    return (" | " if key_value else ", ").join(parts)
