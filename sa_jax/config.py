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

import contextlib
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from sa_jax.errors import ConfigError

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
    unknown = sorted(set(data) - set(fields), key=repr)   # a YAML key may be a number or null
    if unknown:
        raise ConfigError(
            f"{label}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        old_names = fields[name].metadata.get("aliases", {})
        if isinstance(value, str) and value in old_names:   # an old spelling a saved config may hold
            value = old_names[value]
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
        if (name == "seed" or name.endswith("_seed")) and hints[name] is int:   # every seed, one range
            check_seed(kwargs[name], f"{where}.{name}" if where else name)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{label}: {e}") from None
    check = getattr(obj, "validate", None)
    if check is not None:
        check()
    return obj


def current_names(cls: type, data: Any) -> Any:
    """Plain `data` for schema `cls` with every old spelling a field accepts (its `aliases` metadata,
    e.g. a saved `family: dit`) replaced by today's name; nothing is validated or built."""
    if not (dataclasses.is_dataclass(cls) and isinstance(data, Mapping)):
        return data
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = dict(data)
    for name, value in data.items():
        if name not in fields:
            continue
        old_names = fields[name].metadata.get("aliases", {})
        if isinstance(value, str) and value in old_names:
            out[name] = old_names[value]
        elif dataclasses.is_dataclass(hints[name]):
            out[name] = current_names(hints[name], value)
    return out


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
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: "
                              f"{_one_line(getattr(e, 'problem', None) or e)}") from None
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


def read_text(path: str | Path, what: str = "config") -> str:
    """A user file's text as UTF-8; ConfigError (one line: the file, the line) when it is not, or when it
    cannot be read; FileNotFoundError naming it when it is missing."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be read: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        before = raw[:e.start]
        line, column = before.count(b"\n") + 1, e.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError(f"{path}: line {line}, column {column}: not UTF-8 text (byte {raw[e.start]:#04x}); "
                          f"a {what} must be UTF-8") from None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """Plain data from a YAML file with `yaml.safe_load` (no tags that build Python objects). Any
    failure (missing, not UTF-8, not YAML, a `!!python/...` tag) is a one-line ConfigError naming
    the file and, where there is one, the line."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}: line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        problem = _one_line(e.problem or e.context or "")
        if "constructor for the tag" in problem:
            problem += " (sa-jax reads plain YAML only: no tags that build objects)"
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(e)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a config: nested too deeply") from None


def read_json(path: str | Path, what: str = "config") -> Any:
    """Plain data from a JSON file; a one-line ConfigError naming the file and line otherwise."""
    import json

    path = Path(path)
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON: {e.msg}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a config: nested too deeply") from None


def _read_yaml(path: Path) -> dict:
    data = read_yaml(path)
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
    """Load schema `cls` from a YAML file (or defaults) with dotted overrides. A value that does not
    fit the schema is a ConfigError naming the file (or the override) and the key."""
    file = resolve_config(path) if path is not None else None
    data = _load_file(file, ()) if file is not None else {}
    with naming(file, overrides):
        return from_dict(cls, apply_overrides(data, overrides))


@contextlib.contextmanager
def naming(file: str | Path | None, overrides: Sequence[str] = ()):
    """Prefix a ConfigError raised inside with where its key came from: `override KEY=VALUE` when an
    override set that key (or a section above it), else the file (`file`, when given)."""
    try:
        yield
    except ConfigError as e:
        msg = str(e)
        key = msg.split(":", 1)[0].split("[", 1)[0]
        for item in reversed(overrides):
            okey = item.partition("=")[0]
            if key == okey or key.startswith(okey + "."):
                raise ConfigError(f"override {item!r}: {msg}") from None
        if file is not None and not msg.startswith((str(file), "override ")):
            raise ConfigError(f"{file}: {msg}") from None
        raise


def check_int(value: Any, where: str, minimum: int | None = None) -> int:
    """`value` as an int (not a bool, not a string), at least `minimum`; ConfigError naming `where`."""
    value = _coerce(value, int, where)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


SEED_LIMIT = 2 ** 32


def check_seed(seed: Any, what: str = "seed", count: int = 1) -> int:
    """`seed` as an int, checked against the range every seed in sa-jax is used in:
    0 <= seed < 2**32 (JAX keeps 32 bits of a key's seed, so 2**32 would silently be seed 0, and
    Grain's shuffles take no more). `count` seeds from `seed` on (seed + 1, ...) must fit too.
    ConfigError (a ValueError) naming `what` otherwise."""
    import numbers

    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ConfigError(f"{what}: a seed is an integer 0 <= seed < 2**32, got {seed!r}")
    seed = int(seed)
    last = seed + max(int(count), 1) - 1
    if seed < 0 or last >= SEED_LIMIT:
        extra = f" (seeds {seed}..{last} are used)" if count > 1 else ""
        raise ConfigError(f"{what}: {seed} is out of range; a seed is an integer 0 <= seed < 2**32 "
                          f"(= {SEED_LIMIT}){extra}")
    return seed


def save_yaml(obj: Any, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(obj), f, sort_keys=False)
