"""Typed configs: dataclass schemas, YAML files, dotted command-line overrides.

Every schema in sa-jax is a dataclass. `from_dict` builds one from plain data (YAML, JSON) and
rejects any key the schema does not have, naming the valid ones; `apply_overrides` edits plain data
with `a.b.c=value` strings before it is built, so overrides are validated by the same schema.

Config files: `load_yaml(NAME_OR_PATH)` reads a YAML file, or a config packaged with sa-jax by its
name (`unet_sa1`, `train_unet_small`, `data/synth`: the files of the repository's `configs/`, shipped
in the wheel as `sa_jax/configs`; `config_names()` lists them). A YAML may say `base: NAME_OR_PATH`
(or a list of them): the named YAMLs, loaded in order, then this file's own keys on top (mappings
merge key by key, lists and scalars replace). A `base:` inside a section bases that section alone, and
`NAME#dotted.key` takes one section of the named YAML:

    # configs/train_unet_sa1.yaml
    model:
      unet: {base: unet_sa1#unet}       # the architecture, written once in configs/unet_sa1.yaml
      text_tokens: 77

A relative path resolves against the folder of the file that names it (an existing file wins over a
packaged name); a cycle is a ConfigError naming the chain.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from sa_jax.errors import ConfigError  # noqa: F401  (re-exported)

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, building nested dataclasses."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} fits none of {[_type_name(a) for a in args]}: {errors}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys raise ConfigError listing the valid ones."""
    if isinstance(data, cls):
        return data
    label = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label}: expected a mapping for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{label}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        old_names = fields[name].metadata.get("aliases", {})
        if isinstance(value, str) and value in old_names:   # an old spelling a saved config may hold
            value = old_names[value]
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{label}: {e}") from None
    check = getattr(obj, "validate", None)
    if check is not None:
        check()
    return obj


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) from a dataclass tree, ready for YAML/JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Return a copy of `data` with `dotted.key=value` overrides applied (values parsed as YAML)."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {item!r}: {'.'.join(parts[:i + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return data


# The packaged configs: the repository's configs/ folder (sa_jax/configs links to it in a checkout and an
# editable install; a built wheel holds a copy, see pyproject.toml).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_SUFFIXES = (".yaml", ".yml")


def config_names() -> dict[str, Path]:
    """The packaged configs, name -> file (`unet_sa1`, `train_unet_small`, `data/synth`, ...), sorted."""
    if not CONFIG_DIR.is_dir():
        return {}
    found = {}
    for path in sorted(CONFIG_DIR.rglob("*")):
        if path.suffix in _SUFFIXES and path.is_file():
            found[path.relative_to(CONFIG_DIR).with_suffix("").as_posix()] = path
    return found


def config_description(path: str | Path, width: int = 110) -> str:
    """The first sentence of a config file's leading comment (its description), at most `width` characters."""
    lines = []
    with open(path) as f:
        for line in f:
            text = line.strip().lstrip("#").strip()
            if not line.startswith("#") or line.startswith("#  ") or not text:   # the end, or an example
                break
            lines.append(text)
    text = " ".join(lines)
    end = re.search(r"\.(\s|$)", text)
    text = (text[:end.start() + 1] if end else text).rstrip(":")
    return text if len(text) <= width else text[:width - 4].rsplit(" ", 1)[0] + " ..."


def resolve_config(ref: str | Path, relative_to: str | Path | None = None) -> Path:
    """The file a config reference names: an existing path (relative ones against `relative_to`, a folder,
    else the working directory), else a packaged config name (`unet_sa1`, `unet_sa1.yaml`, or
    `configs/unet_sa1.yaml` as the README writes it). ConfigError lists the packaged names otherwise."""
    ref_s = str(ref)
    path = Path(ref_s).expanduser()
    if not path.is_absolute() and relative_to is not None:
        path = Path(relative_to) / path
    if path.is_file():
        return path
    name = ref_s[len("configs/"):] if ref_s.startswith("configs/") else ref_s
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[:-len(suffix)]
    names = config_names()
    if name in names:
        return names[name]
    raise ConfigError(f"config {ref_s!r} is neither a file{f' (in {relative_to})' if relative_to else ''} nor "
                      f"a packaged config; packaged configs (`sa-jax configs`): {', '.join(names) or 'none'}")


def _read_yaml(path: Path) -> dict:
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def merge(base: Any, over: Any) -> Any:
    """`over` on top of `base`: mappings merge key by key (recursively), anything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    return over


def _load_ref(ref: Any, folder: Path | None, chain: tuple[Path, ...]) -> dict:
    """A `base:` entry: `NAME_OR_PATH` or `NAME_OR_PATH#dotted.key`, fully resolved."""
    where = chain[-1] if chain else "config"
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"{where}: base must be a config name or path (or a list of them), got {ref!r}")
    file_ref, _, section = ref.partition("#")
    path = resolve_config(file_ref, folder)
    data = _load_file(path, chain)
    if section:
        for i, key in enumerate(section.split(".")):
            if not isinstance(data, dict) or key not in data:
                raise ConfigError(f"{where}: base {ref!r}: {path} has no section "
                                  f"{'.'.join(section.split('.')[:i + 1])!r}")
            data = data[key]
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: base {ref!r} is a value, not a section")
    return data


def _resolve(node: Any, folder: Path | None, chain: tuple[Path, ...]) -> Any:
    """Plain data with every `base:` key inside it replaced by what it names."""
    if not isinstance(node, dict):
        return node
    own = {k: _resolve(v, folder, chain) for k, v in node.items() if k != "base"}
    if "base" not in node:
        return own
    refs = node["base"] if isinstance(node["base"], list) else [node["base"]]
    out: dict = {}
    for ref in refs:
        out = merge(out, _load_ref(ref, folder, chain))
    return merge(out, own)


def _load_file(path: Path, chain: tuple[Path, ...]) -> dict:
    real = path.resolve()
    if real in (p.resolve() for p in chain):
        raise ConfigError("config base cycle: " + " -> ".join(str(p) for p in (*chain, path)))
    return _resolve(_read_yaml(path), path.parent, (*chain, path))


def load_yaml(path: str | Path) -> dict:
    """Plain data from a YAML file or a packaged config name, its `base:` chains resolved."""
    return _load_file(resolve_config(path), ())


def load(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load schema `cls` from a YAML file (or defaults) with dotted overrides."""
    data = load_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides))


def save_yaml(obj: Any, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(obj), f, sort_keys=False)
