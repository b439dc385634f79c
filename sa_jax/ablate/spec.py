"""An ablation spec: its YAML, checked as a whole before anything runs, and its expansion into the
fixed list of items (variant x seed) that `sa-jax ablate` runs, shards and collects.

    spec = load_spec("study.yaml")          # ConfigError (one line naming the key) when anything is wrong
    for item in spec.items: item.name, item.seed, item.overrides, item.train_overrides, item.sample

Order (fixed, so `--shard I/N` splits the same list on every host): the named variants in the spec's
order, within each the grid points (itertools.product of the grid's keys in the spec's order), within
each the seeds. A variant's name is the named variant and the grid point joined by `__`, e.g.
`baseline__sample.cfg_scale=6__sample.steps=25`, made filesystem-safe (`folder_name`).
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sa_jax.config import SEED_LIMIT, read_text, resolve_config
from sa_jax.errors import ConfigError

TOP_KEYS = ("name", "base", "grid", "variants", "seeds", "evaluate", "better", "metrics")
BASE_KEYS = ("train", "model", "overrides", "then")
SAMPLE = "sample."       # keys naming a sampling setting of the evaluation, not a training override
MODEL = "model"          # `model=PATH`: the model of a sampling-only study
# Evaluation arguments the tool sets itself (per item), so a spec may not.
TOOL_SET = ("model", "corpus", "seed", "log")
NAME_LIMIT = 120         # characters of a variant's folder name before it is shortened with a hash


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping key given twice (PyYAML keeps the last silently, which
    would drop a variant or a grid axis without a word)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise ConfigError(f"line {mark.line + 1}: the key {key!r} is given twice")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def format_value(value: Any) -> str:
    """A grid value as the right-hand side of a key=value override: strings as written, everything else
    as JSON (valid YAML, so the override parses back to the same value: 6 -> 6, 6.0 -> 6.0, true, [1, 2])."""
    return value if isinstance(value, str) else json.dumps(value)


def parse_value(raw: str) -> Any:
    """The value of a key=value override, parsed as YAML the way training overrides are."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _as_set(value: Any) -> Any:
    """`value` with its numbers as floats (bools kept), so grid values a run cannot tell apart, 6 and 6.0, compare
    equal: the config sets the same number from either."""
    if isinstance(value, bool) or not isinstance(value, (int, float, list, dict)):
        return value
    if isinstance(value, list):
        return [_as_set(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_set(v) for k, v in value.items()}
    return float(value)


def split_override(item: Any, where: str) -> tuple[str, str]:
    if not isinstance(item, str):
        raise ConfigError(f"{where}: {item!r} is not a key=value string")
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or key != key.strip() or " " in key:
        raise ConfigError(f"{where}: {item!r} is not of the form dotted.key=value")
    return key, raw


def folder_name(name: str) -> str:
    """`name` as one path component: characters other than letters, digits and `._=+,-` become `_`;
    a name over NAME_LIMIT characters is cut and ends with a hash of the whole name (stable)."""
    safe = re.sub(r"[^A-Za-z0-9._=+,-]", "_", name)
    if safe in ("", ".", ".."):
        safe = "_" + safe
    if len(safe) > NAME_LIMIT:
        safe = safe[:NAME_LIMIT - 13] + "~" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return safe


@dataclass
class Item:
    """One run of the study: a variant at one seed."""

    name: str                       # the variant's folder name (DIR/<name>/seed<k>/)
    seed: int
    overrides: list[str]            # every key=value of the item (base, variant, grid), in that order
    own: list[str] = field(default_factory=list)               # the variant's and grid point's alone
    train_overrides: list[str] = field(default_factory=list)   # the training ones (train base)
    sample: dict[str, Any] = field(default_factory=dict)       # sample.X=V -> evaluation keyword X=V
    model: str | None = None        # sampling-only: the model StableAudio.load reads
    named: str = ""                 # the named variant ("" when the spec has none)
    point: tuple = ()               # the grid point: ((key, value), ...) in the grid's order

    def folder(self, out: Path) -> Path:
        return Path(out) / self.name / f"seed{self.seed}"


@dataclass
class Spec:
    data: dict                      # the spec as read (its identity: a rerun must bring the same)
    name: str
    train: Path | None              # the training config (train base), resolved
    model: str | None               # the model (sampling-only base)
    grid: dict[str, list]
    then: list[list[str]]           # later training stages: overrides added to each item's, in order
    evaluate: dict[str, Any]        # keyword arguments of the evaluation, `corpus` included
    better: dict[str, str]
    metrics: list[str] | None       # the table's and plots' metrics (names or dotted prefixes); None: all that vary
    variants: list[str]             # variant names, in order (each once; seeds inside)
    items: list[Item]

    @property
    def sampling_only(self) -> bool:
        return self.train is None


def spec_file(ref: str | Path) -> Path:
    """The spec a command line names: a file, else a packaged config name (`ablations/example_tiny`)."""
    try:
        return resolve_config(ref)
    except ConfigError:
        raise FileNotFoundError(f"ablation spec {ref} does not exist (nor is it a packaged one: "
                                "`sa-jax configs` lists them)") from None


def read_spec(path: str | Path) -> dict:
    path = spec_file(path)
    text = read_text(path, "ablation spec")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise ConfigError(f"{path}: line {mark.line + 1 if mark else '?'}: not valid YAML: "
                          f"{' '.join(str(e.problem or e.context or '').split())}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: an ablation spec is a mapping with keys {', '.join(TOP_KEYS)}; "
                          f"got {type(data).__name__}")
    return data


def evaluation_parameters():
    """(names the evaluation accepts, whether it takes any keyword) from sa_jax.eval.report.evaluate."""
    from sa_jax.eval.report import evaluate

    params = inspect.signature(evaluate).parameters
    names = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind == p.VAR_KEYWORD for p in params.values())


def load_spec(path: str | Path, out: str | Path | None = None, strict: bool = True) -> Spec:
    """Read and check a whole spec; ConfigError (one line, naming the key) for the first problem. strict=False
    (collecting results, perhaps on another machine) leaves out what needs the study's files: that the
    corpus and models exist and that the training configs load."""
    path = spec_file(path)
    data = read_spec(path)
    try:
        return build_spec(data, out, strict)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _string_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of key=value strings, got {value!r}")
    for i, item in enumerate(value):
        split_override(item, f"{where}[{i}]")
    return list(value)


def build_spec(data: dict, out: str | Path | None = None, strict: bool = True) -> Spec:
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; an ablation spec has {', '.join(TOP_KEYS)}")
    name = data.get("name", "")
    if not isinstance(name, (str, int, float)) or isinstance(name, bool):
        raise ConfigError(f"name: expected a string, got {name!r}")

    # base
    base = data.get("base")
    if not isinstance(base, dict):
        raise ConfigError("base: expected a mapping with exactly one of `train` (a training config) or `model` "
                          f"(a model StableAudio.load reads), and optional `overrides`; got {base!r}")
    unknown = [k for k in base if k not in BASE_KEYS]
    if unknown:
        raise ConfigError(f"base: unknown key(s) {unknown}; base has {', '.join(BASE_KEYS)}")
    if ("train" in base) == ("model" in base):
        raise ConfigError("base: give exactly one of `train` (a training config, path or packaged name) or "
                          "`model` (a model for a sampling-only study)")
    train = model = None
    if "train" in base:
        if not isinstance(base["train"], str) or not base["train"]:
            raise ConfigError(f"base.train: expected a config path or packaged name, got {base['train']!r}")
        try:
            train = resolve_config(base["train"]).resolve()
        except ConfigError as e:
            if strict:
                raise ConfigError(f"base.train: {e}") from None
            train = Path(base["train"])   # collecting (perhaps on another machine): the results alone are needed
    else:
        model = _model_path(base["model"], "base.model", strict)
    base_overrides = _string_list(base.get("overrides"), "base.overrides")
    then = _stages(base.get("then"), train is not None)

    # grid
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"grid: expected a mapping of key: [values], got {grid!r}")
    for key, values in grid.items():
        if not isinstance(key, str) or not key or " " in key or "=" in key:
            raise ConfigError(f"grid: {key!r} is not a dotted key")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}: expected a non-empty list of values, got {values!r}")
        seen = {}
        for v in values:
            identity = json.dumps(_as_set(parse_value(format_value(v))), sort_keys=True)
            if identity in seen:
                same = seen[identity]
                twice = f"{same!r} and {v!r} are the same value" if format_value(same) != format_value(v) else \
                    f"{v!r} is listed twice"
                raise ConfigError(f"grid.{key}: {twice} (two variants that run the same thing): {values!r}")
            seen[identity] = v

    # variants
    variants = data.get("variants")
    if variants is None:
        variants = {}
    if not isinstance(variants, dict):
        raise ConfigError(f"variants: expected a mapping of name: [key=value, ...], got {variants!r}")
    named = {}
    for vname, overrides in variants.items():
        if not isinstance(vname, str) or not vname.strip():
            raise ConfigError(f"variants: a variant name must be a non-empty string, got {vname!r}")
        named[vname] = _string_list(overrides, f"variants.{vname}")
    if not named and not grid:
        raise ConfigError("give a grid, variants or both: the study has nothing to vary")

    # seeds
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"seeds: expected a non-empty list of integers, got {seeds!r}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < SEED_LIMIT:
            raise ConfigError(f"seeds: {s!r} is not an integer in [0, 2**32)")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: a seed is listed twice: {seeds}")

    # evaluate
    evaluate = data.get("evaluate")
    if not isinstance(evaluate, dict) or "corpus" not in evaluate:
        raise ConfigError("evaluate: expected a mapping with `corpus` (a held-out `sa-jax synth` folder) and "
                          f"keyword arguments of sa_jax.eval.report.evaluate; got {evaluate!r}")
    corpus = evaluate["corpus"]
    if not isinstance(corpus, str) or strict and not (Path(corpus).expanduser() / "metadata.jsonl").is_file():
        raise ConfigError(f"evaluate.corpus: {corpus!r} is not a `sa-jax synth` folder (no metadata.jsonl in it)")
    accepted, any_keyword = evaluation_parameters()

    def check_evaluation_key(key: str, where: str) -> None:
        if key in TOOL_SET:
            raise ConfigError(f"{where}: `{key}` is set by the tool (seeds come from `seeds:`, the model from the "
                              "base or a variant's model=PATH, the corpus from evaluate.corpus)")
        if not any_keyword and key not in accepted:
            raise ConfigError(f"{where}: the evaluation (sa_jax.eval.report.evaluate) takes no `{key}`; it takes "
                              f"{', '.join(sorted(accepted - set(TOOL_SET)))}")

    for key in evaluate:
        if key != "corpus":
            check_evaluation_key(key, f"evaluate.{key}")
    try:    # which evaluations run: checked now, not after the first variant has trained
        from sa_jax.eval.report import check_evaluations

        check_evaluations(evaluate.get("evaluations"),
                          any(evaluate.get(k) is not None for k in ("clap", "openl3", "passt")))
    except ValueError as e:
        raise ConfigError(f"evaluate.{e}") from None

    # better, metrics
    better = data.get("better") or {}
    if not isinstance(better, dict):
        raise ConfigError(f"better: expected a mapping of metric: lower|higher, got {better!r}")
    for metric, direction in better.items():
        if direction not in ("lower", "higher"):
            raise ConfigError(f"better.{metric}: expected lower or higher, got {direction!r}")
    metrics = data.get("metrics")
    if metrics is not None and (not isinstance(metrics, list) or not metrics
                                or not all(isinstance(m, str) and m for m in metrics)):
        raise ConfigError(f"metrics: expected a non-empty list of metric names (or dotted prefixes), got {metrics!r}")

    # expansion: variants (in order) x grid points x seeds
    grid_points = [list(zip(grid, combo)) for combo in itertools.product(*grid.values())] if grid else [[]]
    items, names, folders = [], [], {}
    for vname, voverrides in (named.items() if named else [("", [])]):
        for point in grid_points:
            point_overrides = [f"{k}={format_value(v)}" for k, v in point]
            label = "__".join([vname] * bool(vname) + point_overrides)
            fname = folder_name(label)
            if fname in folders:
                raise ConfigError(f"variants {folders[fname]!r} and {label!r} get the same folder name {fname!r}"
                                  if folders[fname] != label else f"variants: {label!r} is given twice")
            folders[fname] = label
            names.append(fname)
            overrides = base_overrides + voverrides + point_overrides
            for seed in seeds:
                item = _item(fname, seed, overrides, train, model, check_evaluation_key, strict)
                item.named, item.point, item.own = vname, tuple(point), voverrides + point_overrides
                items.append(item)
    spec = Spec(data=data, name=str(name), train=train, model=model, grid=grid, then=then, evaluate=dict(evaluate),
                better=dict(better), metrics=metrics, variants=names, items=items)
    if train is not None and strict:
        _check_training(spec, out)
    return spec


def _stages(value: Any, trains: bool) -> list[list[str]]:
    """base.then: a list of stages, each a list of training overrides (a schedule's tail: the run continues
    in the same directory, e.g. [steps=16000, diffusion.timestep_shift=1])."""
    if value is None:
        return []
    if not trains:
        raise ConfigError("base.then: later training stages need base.train; this study only samples")
    if not isinstance(value, list) or not value or not all(isinstance(stage, list) and stage for stage in value):
        raise ConfigError(f"base.then: expected a list of stages, each a non-empty list of key=value training "
                          f"overrides (e.g. [[steps=16000, diffusion.timestep_shift=1]]), got {value!r}")
    for i, stage in enumerate(value):
        for override in _string_list(stage, f"base.then[{i}]"):
            key, _ = split_override(override, f"base.then[{i}]")
            if key.startswith(SAMPLE) or key in (MODEL, "seed", "checkpoint.dir"):
                raise ConfigError(f"base.then[{i}]: {override!r}: a stage takes training overrides only (the tool "
                                  "sets seed and checkpoint.dir; sampling settings go in variants or the grid)")
    return [list(stage) for stage in value]


def _model_path(value: Any, where: str, strict: bool = True) -> str:
    if not isinstance(value, str) or not value or strict and not Path(value).expanduser().exists():
        raise ConfigError(f"{where}: {value!r} is not a model folder or file that exists")
    return value


def _item(name, seed, overrides, train, model, check_evaluation_key, strict) -> Item:
    item = Item(name=name, seed=seed, overrides=list(overrides), model=model)
    for override in overrides:
        key, raw = split_override(override, f"variant {name}")
        if key.startswith(SAMPLE):
            check_evaluation_key(key[len(SAMPLE):], f"variant {name}: {key}")
            item.sample[key[len(SAMPLE):]] = parse_value(raw)
        elif key == MODEL:
            if train is not None:
                raise ConfigError(f"variant {name}: {override!r}: model=PATH swaps the model of a sampling-only "
                                  "study; this study trains (base.train), its model keys are model.X=...")
            item.model = _model_path(raw, f"variant {name}: {override!r}", strict)
        elif key in ("seed", "checkpoint.dir"):
            raise ConfigError(f"variant {name}: {override!r}: the tool sets `{key}` (seeds come from `seeds:`, each "
                              "run's checkpoint.dir is DIR/<variant>/seed<k>/run)")
        elif train is None:
            raise ConfigError(f"variant {name}: {override!r} is a training override, and this study only samples "
                              "(base.model); sampling settings are sample.X=..., the model model=PATH")
        else:
            item.train_overrides.append(override)
    return item


def train_stages(spec: Spec, item: Item, run_dir: str | Path) -> list[list[str]]:
    """The overrides of each training of the item's run, in order (the run, then each of `spec.then`): the
    item's training overrides, the stage's on top, then what the tool sets (the seed and the run directory)."""
    tool = [f"seed={item.seed}", f"checkpoint.dir={run_dir}"]
    return [[*item.train_overrides, *stage, *tool] for stage in [[], *spec.then]]


def _check_training(spec: Spec, out) -> None:
    """Every item's training config loads (trainer diffusion, keys and values the schema accepts) and its
    export will be a whole model the evaluation can load."""
    from sa_jax.config import load, load_yaml
    from sa_jax.training.config import TrainConfig

    trainer = load_yaml(spec.train).get("trainer", "diffusion")
    if trainer != "diffusion":
        raise ConfigError(f"base.train: {spec.train} trains {trainer!r}; an ablation trains diffusion configs "
                          "(its evaluation needs a text-to-audio model)")
    checked = set()
    for item in spec.items:
        key = tuple(item.train_overrides)
        if key in checked:
            continue
        checked.add(key)
        run_dir = item.folder(out or "DIR") / "run"
        try:
            configs = [load(TrainConfig, spec.train, stage) for stage in train_stages(spec, item, run_dir)]
        except ConfigError as e:
            raise ConfigError(f"variant {item.name}: {e}") from None
        for k in range(1, len(configs)):
            if configs[k].steps <= configs[k - 1].steps:
                raise ConfigError(f"variant {item.name}: base.then[{k - 1}] trains to step {configs[k].steps}, "
                                  f"not past the stage before it (step {configs[k - 1].steps}): set a larger steps=")
        cfg = configs[-1]
        if not cfg.init_from and (cfg.text.source not in ("t5", "clap") or not cfg.autoencoder.path):
            raise ConfigError(f"variant {item.name}: the run's export would be the denoiser alone, which the "
                              "evaluation cannot load: set text.source (t5 or clap) with text.path, and "
                              "autoencoder.path (or init.from)")
