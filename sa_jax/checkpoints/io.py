"""Reading foreign weight files into plain `{key: np.ndarray}` dicts, and the one error type that
every importer raises when keys or shapes do not line up (the importers' shared engine:
sa_jax.checkpoints.table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from sa_jax.errors import CheckpointError


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a `.safetensors` file, or a PyTorch `.ckpt`/`.pt`/`.pth`/`.pth.tar`/`.bin` with `weights_only=True`
    (no pickled code runs). A Lightning checkpoint's `state_dict` entry is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file {path} does not exist")
    suffix = path.suffix.lower()
    if path.name.lower().endswith(".pth.tar"):   # torchopenl3's weight files
        suffix = ".pth"
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return _to_float32(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
        except Exception as e:  # bf16 tensors: numpy cannot hold them; go through JAX
            if "bfloat16" not in str(e).lower() and "bf16" not in str(e).lower():
                raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
            return _read_safetensors_via_jax(path)
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        try:
            import torch
        except ImportError:
            raise CheckpointError(f"reading {path} needs PyTorch (a .ckpt is a torch pickle); "
                                  "convert it to .safetensors or install torch") from None
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{path} could not be loaded safely as a PyTorch checkpoint ({e})") from None
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
        return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
                for k, v in obj.items() if hasattr(v, "detach")}
    raise CheckpointError(f"{path}: unknown weight format {suffix!r}; use .safetensors, .ckpt, .pt, .pth or .bin")


def read_weights(folder: str | Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The state dict in `folder` stored under the first of `names` that exists; a
    `*.safetensors.index.json` reads all of its shards."""
    folder = Path(folder)
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            with open(path) as f:
                shards = sorted(set(json.load(f).get("weight_map", {}).values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CheckpointError(f"{path} lists shard(s) that are not in {folder}: {missing}")
            state: dict[str, np.ndarray] = {}
            for shard in shards:
                state.update(read_state_dict(folder / shard))
            return state
        return read_state_dict(path)
    raise CheckpointError(f"no weights in {folder}: looked for {', '.join(names)}")


HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def hf_weight_file(folder: Path, what: str, complete: str) -> Path:
    """The weight file of a Hugging Face model folder (config.json + weights); FileNotFoundError
    naming everything that is missing."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist or is not a directory")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    weights = next((folder / f for f in HF_WEIGHTS if (folder / f).is_file()), None)
    if weights is None:
        missing.append(f"weights: one of {', '.join(HF_WEIGHTS)}")
    if missing:
        raise FileNotFoundError(f"{folder} is not {complete}; missing: {'; '.join(missing)}")
    return weights


def _read_safetensors_via_jax(path: Path) -> dict[str, np.ndarray]:
    # numpy has no bfloat16; read through JAX's array type, which does, then widen.
    from safetensors import safe_open

    with safe_open(str(path), framework="flax") as f:
        return {k: np.asarray(f.get_tensor(k).astype("float32")) for k in f.keys()}


def _to_float32(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
            for k, v in tensors.items()}
