"""The sa-jax checkpoint directory: `config.yaml` (what model it is) and `params/` (Orbax).

    model_dir/
      config.yaml     model_type, sa_jax_version and the model's config sections
      params/         an Orbax StandardCheckpointer tree of float32 arrays

A directory is written under a temporary name and renamed into place only when complete, so
an interrupted write never leaves something that looks like a checkpoint, and an existing
checkpoint is never replaced unless asked. `overwrite` replaces only what sa-jax wrote (a
checkpoint whose config.yaml carries `sa_jax_version`, or an empty folder); anything else at the
path (a folder of notes, a file) is an error that names it (`check_replaceable`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml

from sa_jax.config import read_yaml
from sa_jax.errors import CheckpointError, ConfigError

CONFIG_FILE = "config.yaml"
PARAMS_DIR = "params"


def is_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()


def written_by_sa_jax(path: str | Path) -> bool:
    """A checkpoint folder as `save` writes it: config.yaml (a mapping with sa_jax_version) and params/."""
    path = Path(path)
    if not is_checkpoint(path):
        return False
    try:
        config = read_yaml(path / CONFIG_FILE)
    except (OSError, ConfigError):
        return False
    return isinstance(config, dict) and "sa_jax_version" in config


def check_replaceable(path: str | Path, ours: Callable[[Path], bool] = written_by_sa_jax,
                      what: str = "an sa-jax checkpoint (config.yaml with sa_jax_version and params/)") -> None:
    """Raise FileExistsError naming `path` unless nothing is there, it is an empty folder, or `ours(path)`
    says sa-jax wrote it: an overwrite replaces only what sa-jax made (as git refuses to destroy what it did
    not make)."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink():
        why = "it is a symbolic link"
    elif not path.is_dir():
        why = "it is a file"
    elif not any(path.iterdir()) or ours(path):
        return
    else:
        why = f"it is a folder that is not {what}"
    raise FileExistsError(f"{path} exists and is not {what.split(' (')[0]} ({why}); --overwrite replaces only "
                          "what sa-jax wrote. Move it away or choose another path")


def move_into_place(tmp: Path, path: Path) -> None:
    """Rename the complete folder `tmp` to `path`; an existing `path` (already checked replaceable) is
    moved aside only once the new one is complete, and removed after."""
    if os.path.lexists(path):
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def save(path: str | Path, config: dict, params: Any, overwrite: bool = False,
         extra: Callable[[Path], None] | None = None) -> Path:
    """Write `config` (plain data) and `params` (a pytree of arrays) as a checkpoint at `path`.
    `extra(folder)` may add files (a tokenizer, say) before the checkpoint is moved into place."""
    import jax
    import orbax.checkpoint as ocp

    from sa_jax import __version__

    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose a new path or pass overwrite=True "
                              "(--overwrite) to replace it")
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        with open(tmp / CONFIG_FILE, "w") as f:
            yaml.safe_dump({"sa_jax_version": __version__, **config}, f, sort_keys=False)
        # this process alone writes (in a multi-process run the trainers' export calls it on process 0 only,
        # with the weights gathered to the host), so Orbax must not wait for the others
        me = jax.process_index()
        alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
        with ocp.StandardCheckpointer(multiprocessing_options=alone) as ckptr:
            ckptr.save(tmp / PARAMS_DIR, params)
            ckptr.wait_until_finished()
        if extra is not None:
            extra(tmp)
        move_into_place(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_config(path: str | Path) -> dict:
    path = Path(path)
    if not is_checkpoint(path):
        raise CheckpointError(f"{path} is not an sa-jax checkpoint (it needs {CONFIG_FILE} and {PARAMS_DIR}/)")
    config = read_yaml(path / CONFIG_FILE, "checkpoint config")   # one-line ConfigError naming file and line
    if not isinstance(config, dict) or "model_type" not in config:
        raise CheckpointError(f"{path / CONFIG_FILE} has no model_type; it is not an sa-jax model config")
    return config


def load_params(path: str | Path) -> Any:
    import orbax.checkpoint as ocp

    from sa_jax.checkpoints.table import check_tree

    path = Path(path).absolute() / PARAMS_DIR
    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(path)
    except Exception as e:
        raise CheckpointError(f"could not read the parameters in {path}: {e}") from None
    check_tree(params, str(path))   # NaN/inf weights: an error naming them (allow_nonfinite_weights())
    return params
