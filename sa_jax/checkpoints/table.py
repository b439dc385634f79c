"""The one engine every importer uses: a table of rows maps a foreign state dict onto our flat
parameter paths, and everything that does not line up is reported together.

A row is `(foreign key(s), our path(s), transform)`:
- one foreign key -> one path: `("blocks.{i}.attn.to_out.weight", "layers_{i}/attn/out/kernel", linear)`;
- several foreign keys fused into one path: a tuple of keys, the transform takes all of them
  (`fuse`, e.g. diffusers' separate q/k/v -> one qkv kernel);
- one foreign key split into several paths: a tuple of paths, the transform returns a tuple
  (`split(3, linear)`, e.g. LAION's fused qkv -> query/key/value).
`{i}`, `{j}`, ... in keys and paths are filled in by `expand(rows, i=range(n), ...)`, and `layer`
gives the rows of one layer of a kind (a weight-normed conv, a LayerNorm, a fused qkv Linear, ...;
`torch_layer` for the standard torch layers of TORCH_KINDS).
An importer builds its table from the config (block counts, optional layers) with these, then calls
`convert`.

`convert` fails loudly: one CheckpointError lists every file key no row takes (less the `ignore`
patterns), every model parameter no key provides (by the foreign key the table expected, or as
"no row of the import table provides it"), and every shape mismatch. Buffers that hold no learned
state are either ignored (`ignore`: regexes a whole key must match) or checked (`checks`: key ->
a function returning a problem or None).
Paths may carry a collection (`params/...`, `batch_stats/...`) when `want` does.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from sa_jax.errors import CheckpointError
from sa_jax.tree import unflatten

Transform = Callable[..., np.ndarray | tuple[np.ndarray, ...]] | None
Row = tuple[str | tuple[str, ...], str | tuple[str, ...], Transform]
# (foreign key, check returning a problem description or None)
Check = tuple[str, Callable[[np.ndarray], str | None]]


# --------------------------------------------------------------------------------------------
# Transforms (torch layouts -> ours)

def linear(w):      # torch Linear weight (out, in) -> Flax kernel (in, out)
    return w.T


def conv1d(w):      # torch Conv1d (out, in, k) -> (k, in, out)
    return w.transpose(2, 1, 0)


def conv1d_t(w):    # torch ConvTranspose1d (in, out, k) -> (k, in, out)
    return w.transpose(2, 0, 1)


def conv1x1(w):     # torch Conv1d (out, in, 1) -> Flax Dense kernel (in, out)
    return w[:, :, 0].T


def conv2d(w):      # torch Conv2d (out, in, kh, kw) -> (kh, kw, in, out)
    return w.transpose(2, 3, 1, 0)


def flat(w):        # (out, 1, 1) weight-norm gains, (1, C, 1) Snake parameters, ... -> (C,)
    return w.reshape(-1)


def fuse(*ws):      # separate q/k/v (or k/v) Linear weights -> one fused kernel
    return np.concatenate(ws, axis=0).T


def split(n: int, fn: Transform = None):
    """One fused tensor (n * C, ...) -> n tensors, each through `fn`."""
    def transform(w):
        return tuple(fn(p) if fn else p for p in np.split(w, n, axis=0))
    return transform


def zeros(w):
    return None if not np.any(w) else f"expected zeros (a bias-free LayerNorm), max |value| {np.abs(w).max():.3g}"


def equals(expected: np.ndarray, what: str):
    def check(w):
        if w.shape != expected.shape:
            return f"{what}: shape {w.shape}, expected {expected.shape}"
        if not np.allclose(w, expected, rtol=1e-5, atol=1e-6):
            return f"{what} differ from the model's"
        return None
    return check


# --------------------------------------------------------------------------------------------
# Tables

def _each(x: str | tuple[str, ...], fn: Callable[[str], str]) -> str | tuple[str, ...]:
    return tuple(map(fn, x)) if isinstance(x, tuple) else fn(x)


# A layer kind: the tensors one layer holds, each (foreign tensor name, our path template(s), transform).
# Templates name the layer's module path `{dst}` and may name collections (`{params}`, `{stats}`).
Kind = Sequence[tuple[str, str | tuple[str, ...], Transform]]


def layer(src: str, dst: str, kind: Kind, **names: str) -> list[Row]:
    """The rows of one layer: foreign keys `src.tensor` (`src` itself for the tensor name ""), our
    paths from the kind's templates with `dst` and `names` filled in (an empty name drops out)."""
    def path(template: str) -> str:
        return "/".join(p for p in template.format(dst=dst, **names).split("/") if p)
    return [(f"{src}.{name}" if name else src, _each(template, path), fn) for name, template, fn in kind]


# Standard torch layers as our Flax modules hold them: {params} is the parameter collection, {stats}
# BatchNorm's running statistics.
_LINEAR = [("weight", "{params}/{dst}/kernel", linear)]
_BIAS = [("bias", "{params}/{dst}/bias", None)]
_NORM = [("weight", "{params}/{dst}/scale", None)] + _BIAS
_QKV = [("weight", tuple(f"{{params}}/{{dst}}/{q}/kernel" for q in ("query", "key", "value")), split(3, linear))]
TORCH_KINDS: dict[str, Kind] = {
    "dense": _LINEAR + _BIAS,
    "dense_nobias": _LINEAR,
    "ln": _NORM,
    "conv": [("weight", "{params}/{dst}/kernel", conv2d)] + _BIAS,
    "bn": _NORM + [("running_mean", "{stats}/{dst}/mean", None), ("running_var", "{stats}/{dst}/var", None)],
    "tensor": [("", "{params}/{dst}", None)],
    "qkv": _QKV + [("bias", tuple(f"{{params}}/{{dst}}/{q}/bias" for q in ("query", "key", "value")), split(3))],
    "qkv_nobias": _QKV,   # one fused Linear (3C, C) -> query, key, value
}


def torch_layer(src: str, dst: str, kind: str, params: str = "params", stats: str = "batch_stats") -> list[Row]:
    """The rows of one standard torch layer of `kind` (TORCH_KINDS) at foreign prefix `src` and our module
    path `dst`; `params`/`stats` name the collections ('' for a bare parameter tree)."""
    return layer(src, dst, TORCH_KINDS[kind], params=params, stats=stats)


def expand(rows: Iterable[Row], **ranges: Iterable[int]) -> list[Row]:
    """Each row once per combination of the placeholders it uses ({i}, {j}, ...), in order."""
    out: list[Row] = []
    for src, dst, fn in rows:
        used = [n for n in ranges if "{" + n + "}" in f"{src} {dst}"]
        for values in itertools.product(*(ranges[n] for n in used)):
            subs = dict(zip(used, values))
            out.append((_each(src, lambda s: s.format(**subs)), _each(dst, lambda s: s.format(**subs)), fn))
    return out


def strip(state: dict, prefix: str) -> dict:
    """The entries of `state` under `prefix`, with the prefix taken off."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} if prefix else dict(state)


# --------------------------------------------------------------------------------------------
# The engine

def mismatch_report(what: str, source: str, unmatched: Iterable[str], missing: Iterable[str],
                    bad_shapes: Iterable[str]) -> str:
    """One readable message listing every unmatched key, missing key and shape mismatch."""
    lines = [f"{source} does not fit {what}:"]
    for title, items in (("keys in the file that the model has no place for", unmatched),
                         ("model weights the file does not provide", missing),
                         ("shape mismatches", bad_shapes)):
        items = sorted(items)
        if items:
            lines.append(f"  {len(items)} {title}:")
            lines += [f"    {k}" for k in items]
    return "\n".join(lines)


_allow_nonfinite = [False]    # process-wide (loading may happen in worker threads); set by the block below
OPT_OUT = ("pass allow_nonfinite=True (or load inside sa_jax.checkpoints.table.allow_nonfinite_weights(); "
           "--allow-nonfinite-weights on the command line) if they are deliberate")


@contextlib.contextmanager
def allow_nonfinite_weights(allow: bool = True) -> Iterator[None]:
    """Within this block, weights holding NaN/inf load (with a warning) instead of raising a
    CheckpointError: for deliberate cases, e.g. inspecting a diverged run."""
    before = _allow_nonfinite[0]
    _allow_nonfinite[0] = bool(allow)
    try:
        yield
    finally:
        _allow_nonfinite[0] = before


def nonfinite_allowed(allow: bool | None = None) -> bool:
    return _allow_nonfinite[0] if allow is None else bool(allow)


def value_problem(w: np.ndarray) -> str | None:
    """Why `w` cannot be a learned float weight: not a float type, or NaN/inf values; None if it can."""
    if not (np.issubdtype(w.dtype, np.floating) or w.dtype.name == "bfloat16"):
        return f"{w.dtype} tensor where a float weight is expected"
    if w.size and not np.isfinite(np.sum(w, dtype=np.float64)):
        finite = np.isfinite(w)
        nan = int(np.isnan(w).sum())
        inf = int(w.size - finite.sum()) - nan
        return "non-finite values: " + ", ".join(f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "inf")) if n) + \
            f" of {w.size}"
    return None


class Report:
    """Everything that did not line up, gathered across the parts of one file."""

    def __init__(self):
        self.unmatched: list[str] = []
        self.missing: list[str] = []
        self.bad: list[str] = []
        self.values: list[str] = []     # wrong dtype or NaN/inf

    def raise_if_any(self, what: str, source: str):
        if self.unmatched or self.missing or self.bad:
            raise CheckpointError(mismatch_report(what, source, self.unmatched, self.missing, self.bad))
        if self.values:
            raise CheckpointError(values_report(source, self.values))


def values_report(source: str, problems: Iterable[str]) -> str:
    problems = sorted(problems)
    lines = [f"{source}: {len(problems)} weight(s) cannot be used:"] + [f"    {p}" for p in problems]
    if any("non-finite" in p for p in problems):
        lines.append(f"  (non-finite weights decode NaN audio; {OPT_OUT})")
    return "\n".join(lines)


def check_values(report: Report, key: str, arrays: Sequence[np.ndarray], allow_nonfinite: bool) -> bool:
    """Record the dtype / NaN problems of one row's foreign tensors; False when the row is unusable."""
    ok = True
    for a in arrays:
        problem = value_problem(a)
        if problem and (allow_nonfinite and problem.startswith("non-finite")):
            import logging

            logging.getLogger("sa_jax").warning("%s: %s (loaded: non-finite weights allowed)", key, problem)
        elif problem:
            report.values.append(f"{key}: {problem}")
            ok = False
    return ok


def check_tree(tree, source: str, allow_nonfinite: bool | None = None) -> None:
    """Raise a CheckpointError naming every floating leaf of `tree` (flattened path) that holds
    NaN/inf, unless non-finite weights are allowed (sa-jax's own store on load)."""
    import jax

    problems = []
    for keys, leaf in jax.tree_util.tree_leaves_with_path(tree):
        path = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16":
            problem = value_problem(a.astype(np.float32) if a.dtype.name == "bfloat16" else a)
            if problem:
                problems.append(f"{path}: {problem}")
    if problems and not nonfinite_allowed(allow_nonfinite):
        raise CheckpointError(values_report(source, problems))


def convert_into(report: Report, state: dict, rows: Sequence[Row], want: dict[str, tuple[int, ...]],
                 prefix: str = "", checks: Sequence[Check] = (), ignore: Sequence[str] = (),
                 allow_nonfinite: bool | None = None) -> dict:
    """Map the keys of `state` under `prefix` through `rows` into a nested tree of `want`'s paths;
    record every problem in `report` (`convert` raises them). Every tensor a row takes must be a
    float tensor without NaN/inf (`allow_nonfinite`, or the `allow_nonfinite_weights()` block,
    lets NaN/inf through); buffers in `checks` and `ignore` (integer step counters, position ids)
    are not rows and are not held to this."""
    allow = nonfinite_allowed(allow_nonfinite)
    part = strip(state, prefix)
    used: set[str] = set()
    out: dict[str, np.ndarray] = {}
    covered: set[str] = set()
    for src, dst, fn in rows:
        keys = src if isinstance(src, tuple) else (src,)
        paths = dst if isinstance(dst, tuple) else (dst,)
        covered.update(paths)
        absent = [prefix + k for k in keys if k not in part]
        if absent:
            report.missing += [f"{k} (for {', '.join(paths)})" for k in absent]
            used.update(k for k in keys if k in part)
            continue
        used.update(keys)
        arrays = [np.asarray(part[k]) for k in keys]
        if not check_values(report, prefix + keys[0] if len(keys) == 1 else ", ".join(prefix + k for k in keys),
                            arrays, allow):
            continue
        arrays = [np.asarray(a, np.float32) for a in arrays]
        shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
        try:
            values = fn(*arrays) if fn is not None else arrays[0]
        except (ValueError, IndexError) as e:
            report.bad.append(f"{prefix}{keys[0]}: file {shapes} cannot become {', '.join(paths)} ({e})")
            continue
        for path, value in zip(paths, values if isinstance(dst, tuple) else (values,)):
            if path not in want:
                report.bad.append(f"{prefix}{keys[0]}: the model has no parameter {path}")
            elif tuple(value.shape) != want[path]:
                report.bad.append(f"{prefix}{keys[0]}: file {shapes} -> {tuple(value.shape)}, model {path} needs "
                                  f"{want[path]}")
            else:
                out[path] = value if value.flags.c_contiguous else np.ascontiguousarray(value)  # keeps 0-d
    for key, check in checks:
        if key in part:
            used.add(key)
            problem = check(np.asarray(part[key], np.float32))
            if problem:
                report.bad.append(f"{prefix}{key}: {problem}")
    patterns = [re.compile(p) for p in ignore]
    report.unmatched += [prefix + k for k in part if k not in used and not any(p.fullmatch(k) for p in patterns)]
    report.missing += [f"{p} (no row of the import table provides it)" for p in sorted(set(want) - covered)]
    return unflatten(out)


def convert(state: dict, rows: Sequence[Row], want: dict[str, tuple[int, ...]], what: str, source: str,
            prefix: str = "", checks: Sequence[Check] = (), ignore: Sequence[str] = (),
            allow_nonfinite: bool | None = None) -> dict:
    """`convert_into` one part, raising a CheckpointError (`what`, `source` in its first line) that
    lists every problem."""
    report = Report()
    tree = convert_into(report, state, rows, want, prefix, checks, ignore, allow_nonfinite)
    report.raise_if_any(what, source)
    return tree
