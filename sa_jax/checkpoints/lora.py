"""The LoRA adapter folder: what a LoRA run exports and what `StableAudio.load(..., lora=[...])` reads.

    adapter/
      adapter.safetensors   float32 tensors "<kernel path>/down" (fan_in, rank) and "<kernel path>/up" (rank, fan_out)
      adapter.json          {"format": "sa-jax-lora", "format_version": 1, "family", "rank", "alpha",
                             "targets", "base_hash", "base_path", "step", ...}

`base_hash` is `sa_jax.nn.lora.content_hash` of the base's trainable tree {"conditioner", "denoiser"}
(float32, as loaded), `base_path` where that base was loaded from (informative only). The math of
applying an adapter is in sa_jax/nn/lora.py; its effective scale is alpha / rank * strength (`scale`).

The folder is written under a temporary name and renamed into place when complete (as
sa_jax.checkpoints.store does), so an interrupted write never leaves a half adapter, and an existing
folder is replaced only when it is an adapter (or empty).
"""

from __future__ import annotations

import json
import math
import numbers
import re
import shutil
import uuid
from pathlib import Path

import numpy as np

from sa_jax.checkpoints import store
from sa_jax.config import read_json
from sa_jax.errors import LoraError

WEIGHTS_FILE = "adapter.safetensors"
META_FILE = "adapter.json"
FORMAT = "sa-jax-lora"
FORMAT_VERSION = 1
FAMILIES = ("sao", "sa1")
WHAT = f"an sa-jax LoRA adapter ({META_FILE} and {WEIGHTS_FILE})"


def is_adapter(path: str | Path) -> bool:
    """A folder with both adapter files whose adapter.json names the sa-jax LoRA format."""
    path = Path(path)
    if not ((path / META_FILE).is_file() and (path / WEIGHTS_FILE).is_file()):
        return False
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def scale(meta: dict, strength: float = 1.0) -> float:
    """The factor an adapter's down @ up is added with: alpha / rank * strength."""
    return float(meta["alpha"]) / int(meta["rank"]) * float(strength)


def _check_meta(meta, where: str) -> dict:
    """The metadata with its types checked; LoraError naming `where` and the bad field otherwise."""
    if not isinstance(meta, dict):
        raise LoraError(f"{where}: the adapter metadata must be a JSON object, got {type(meta).__name__}")
    missing = [k for k in ("family", "rank", "alpha", "targets", "base_hash") if k not in meta]
    if missing:
        raise LoraError(f"{where}: the adapter metadata lacks {missing}")
    rank, alpha, targets = meta["rank"], meta["alpha"], meta["targets"]
    if meta["family"] not in FAMILIES:
        raise LoraError(f"{where}: family must be one of {list(FAMILIES)}, got {meta['family']!r}")
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
        raise LoraError(f"{where}: rank must be an integer >= 1, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
        raise LoraError(f"{where}: alpha must be a finite number > 0, got {alpha!r}")
    if isinstance(targets, str) or not isinstance(targets, (list, tuple)) \
            or not all(isinstance(t, str) for t in targets):
        raise LoraError(f"{where}: targets must be a list of regexes (strings), got {targets!r}")
    if not isinstance(meta["base_hash"], str) or not re.fullmatch(r"[0-9a-f]{64}", meta["base_hash"]):
        raise LoraError(f"{where}: base_hash must be a sha256 hex digest (sa_jax.nn.lora.content_hash), "
                        f"got {meta['base_hash']!r}")
    step = meta.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, numbers.Integral)):
        raise LoraError(f"{where}: step must be an integer or null, got {step!r}")
    return {**meta, "rank": int(rank), "alpha": float(alpha), "targets": list(targets)}


def _check_shapes(adapters: dict, rank: int, where: str) -> None:
    if not adapters:
        raise LoraError(f"{where}: the adapter has no tensors")
    for path, ad in adapters.items():
        down, up = np.shape(ad["down"]), np.shape(ad["up"])
        if len(down) != 2 or len(up) != 2 or down[1] != rank or up[0] != rank:
            raise LoraError(f"{where}: {path!r} has down {down} and up {up}; with rank {rank} they must be "
                            f"(fan_in, {rank}) and ({rank}, fan_out)")


def save_adapter(folder: str | Path, adapters: dict, meta: dict, *, overwrite: bool = True) -> Path:
    """Write `adapters` ({path: {"down", "up"}}, any arrays) as float32 with `meta` (family, rank, alpha,
    targets, base_hash; optional base_path, step, and any other plain-JSON fields) into `folder`.
    An existing adapter folder is replaced (as a run's export is, at each export) unless
    overwrite=False; anything else at `folder` is never touched (FileExistsError)."""
    import jax
    from safetensors.numpy import save_file

    folder = Path(folder).absolute()
    meta = _check_meta({"base_path": None, "step": None, **meta}, str(folder))
    if not isinstance(adapters, dict) or any(not isinstance(a, dict) or set(a) != {"down", "up"}
                                             for a in adapters.values()):
        raise LoraError("adapters must be {kernel path: {'down': array, 'up': array}}")
    tensors = {}
    for path, ad in jax.device_get(adapters).items():
        tensors[f"{path}/down"] = np.ascontiguousarray(ad["down"], np.float32)
        tensors[f"{path}/up"] = np.ascontiguousarray(ad["up"], np.float32)
    _check_shapes(adapters, meta["rank"], str(folder))
    if not all(np.isfinite(t).all() for t in tensors.values()):
        raise LoraError(f"{folder}: the adapter has NaN or infinite values; not saved")
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists; choose a new folder or pass overwrite=True")
    store.check_replaceable(folder, ours=is_adapter, what=WHAT)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        text = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **meta}, indent=1, sort_keys=False)
        (tmp / META_FILE).write_text(text + "\n")
        store.move_into_place(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_adapter(folder: str | Path) -> tuple[dict, dict]:
    """(adapters {path: {"down", "up"}} as float32 numpy arrays, metadata) from an adapter folder;
    FileNotFoundError for a missing folder, LoraError (or ConfigError for unreadable JSON,
    CheckpointError for an unreadable safetensors file) for anything that is not a usable adapter."""
    from sa_jax.checkpoints.io import read_state_dict

    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"LoRA adapter folder {folder} does not exist")
    if not folder.is_dir():
        raise LoraError(f"{folder} is a file; a LoRA adapter is a folder with {META_FILE} and {WEIGHTS_FILE}")
    missing = [f for f in (META_FILE, WEIGHTS_FILE) if not (folder / f).is_file()]
    if missing:
        hint = " (it is a model checkpoint, not an adapter)" if store.is_checkpoint(folder) else ""
        raise LoraError(f"{folder} is not {WHAT}: missing {', '.join(missing)}{hint}")
    raw = read_json(folder / META_FILE, "LoRA adapter metadata")   # ConfigError naming file and line
    where = str(folder / META_FILE)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise LoraError(f"{where}: not sa-jax LoRA adapter metadata (format {got!r}, expected {FORMAT!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise LoraError(f"{where}: format_version {raw.get('format_version')!r} is not supported by this sa-jax "
                        f"(it reads version {FORMAT_VERSION})")
    meta = _check_meta(raw, where)
    state = read_state_dict(folder / WEIGHTS_FILE)
    adapters: dict = {}
    for name, tensor in state.items():
        path, _, part = name.rpartition("/")
        if part not in ("down", "up") or not path:
            raise LoraError(f"{folder / WEIGHTS_FILE}: tensor {name!r} is not '<kernel path>/down' or '/up'")
        adapters.setdefault(path, {})[part] = np.asarray(tensor, np.float32)
    half = sorted(p for p, ad in adapters.items() if set(ad) != {"down", "up"})
    if half:
        raise LoraError(f"{folder / WEIGHTS_FILE}: {half[:3]} have only one of down / up")
    _check_shapes(adapters, meta["rank"], str(folder / WEIGHTS_FILE))
    bad = sorted(p for p, ad in adapters.items() if not all(np.isfinite(a).all() for a in ad.values()))
    if bad:
        raise LoraError(f"{folder / WEIGHTS_FILE}: NaN or infinite values in {bad[:3]}")
    return adapters, meta


# --------------------------------------------------------------------------------------------
# Using adapters: StableAudio.load(base, lora=[...]), `sa-jax sample --lora`, `sa-jax merge-lora`


def parse_spec(text: str) -> tuple[str, float]:
    """Command-line `DIR` or `DIR:STRENGTH` -> (folder, strength); an existing folder whose name holds a
    colon is taken whole. LoraError for a strength that is not a finite number."""
    if ":" not in text or Path(text).is_dir():
        return text, 1.0
    folder, _, value = text.rpartition(":")
    try:
        strength = float(value)
    except ValueError:
        raise LoraError(f"LoRA adapter {text!r}: strength {value!r} is not a number; write DIR or DIR:STRENGTH "
                        "(e.g. runs/mine/export:0.8)") from None
    if not math.isfinite(strength):
        raise LoraError(f"LoRA adapter {text!r}: the strength must be a finite number, got {value!r}")
    if not folder:
        raise LoraError(f"LoRA adapter {text!r} names no folder before ':'")
    return folder, strength


def adapter_specs(lora) -> list[tuple[Path, float]]:
    """`[folder or (folder, strength), ...]` (a single folder is read as a list of one) -> [(Path, strength)]."""
    if isinstance(lora, (str, Path)):
        lora = [lora]
    if not isinstance(lora, (list, tuple)):
        raise LoraError(f"lora must be a list of adapter folders or (folder, strength) pairs, got "
                        f"{type(lora).__name__}")
    specs = []
    for item in lora:
        if isinstance(item, (str, Path)):
            folder, strength = item, 1.0
        elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], (str, Path)):
            folder, strength = item
        else:
            raise LoraError(f"lora item {item!r} is neither an adapter folder nor a (folder, strength) pair")
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not math.isfinite(strength):
            raise LoraError(f"LoRA adapter {folder}: the strength must be a finite number, got {strength!r}")
        specs.append((Path(folder), float(strength)))
    return specs


def read_adapters(lora) -> list[tuple[Path, float, dict, dict]]:
    """[(folder, strength, adapters, metadata)] for `lora` (see `adapter_specs`), every folder read and
    checked (`load_adapter`): done before a base model is loaded, so a bad adapter fails fast."""
    return [(folder, strength, *load_adapter(folder)) for folder, strength in adapter_specs(lora)]


def merge_adapters(params, family: str, adapters: list, base: str = "the base model"):
    """`params` (a model's trainable tree {"conditioner", "denoiser"}, family `family`) with `adapters`
    (`read_adapters`) added, each at alpha / rank * strength, in order. A strength of 0 leaves the
    weights exactly as they were (the adapter is still checked). An adapter of another family, or with
    kernels this model lacks, is a LoraError; one trained on other weights (its base_hash differs from
    this model's content hash) is applied with a warning naming both hashes."""
    import logging

    from sa_jax.nn.lora import apply_adapters, check_adapters, content_hash

    log = logging.getLogger("sa_jax.lora")
    for folder, _, tensors, meta in adapters:
        if meta["family"] != family:
            raise LoraError(f"LoRA adapter {folder} was trained on a {meta['family']!r} model, but {base} is a "
                            f"{family!r} model; adapters only apply to the family they were trained on")
        try:
            check_adapters(params, tensors)
        except LoraError as e:
            raise LoraError(f"LoRA adapter {folder} does not fit {base}: {e}") from None
    if not adapters:
        return params
    digest = content_hash(params)
    for folder, strength, tensors, meta in adapters:
        if meta["base_hash"] != digest:
            log.warning("LoRA adapter %s was trained on other weights (base %s, content hash %s) than %s "
                        "(content hash %s); applying it anyway", folder, meta.get("base_path"), meta["base_hash"],
                        base, digest)
        if strength != 0:
            params = apply_adapters(params, tensors, scale(meta, strength))
        log.info("LoRA adapter %s: rank %d, alpha %g, strength %g, %d kernels", folder, meta["rank"], meta["alpha"],
                 strength, len(tensors))
    return params
