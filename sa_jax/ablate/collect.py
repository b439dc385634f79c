"""The study's results from the result.json files present: DIR/results.jsonl (one flat row per variant x
seed), DIR/results.md (mean +- spread over seeds per variant, the best per column in bold) and
DIR/plots/<metric>.png (each metric across the grid, error bars over seeds).

Columns: the spec's `metrics:` (names or dotted prefixes), else every numeric metric that differs between
runs, leaving out settings and bookkeeping (settings.*, model.*, counts, chance levels, the evaluation's own
clip lengths); the metrics equal in every run are listed once under the table. Which way is better: the
spec's `better:` (a name or a dotted prefix), else `direction`'s rules on the metric's name.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np

from sa_jax.ablate.spec import Spec
from sa_jax.ablate.worker import partial_path, write_text

ROW_KEYS = ("variant", "seed", "overrides")
# Flattened keys that describe a run rather than measure it, or qualify another column (confidence bounds,
# counts, ceilings): never an automatic column (results.jsonl has them all; `metrics:` can pick them).
BOOKKEEPING = re.compile(r"^(settings|model|statistics|adherence_oracle)\.|\.method\.|^(train|eval)_seconds$"
                         r"|\.(count|chance|seconds|clips|lengths|matches)$|_(low|high|count)$|\.ceiling")
# Words of a metric's name that say which way is better (checked on the last name first, then its parents).
LOWER = ("error", "errors", "distance", "fd", "kl", "loss", "p_value", "pvalue", "timing", "seconds")
HIGHER = ("accuracy", "score", "adherence", "match", "matches", "precision", "recall")


def flatten(report: dict, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a report as {"a.b.c": value}; lists (per-item details) and booleans are left out."""
    out = {}
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def direction(metric: str, better: dict[str, str] | None = None) -> str | None:
    """"lower", "higher" or None (unknown: no best is marked) for a flattened metric name."""
    for key, way in (better or {}).items():
        if metric == key or metric.startswith(key + "."):
            return way
    parts = metric.split(".")
    for part in reversed(parts):
        words = set(part.lower().split("_"))
        if "p_value" in part.lower() or words & set(LOWER):
            return "lower"
        if words & set(HIGHER):
            return "higher"
    return None


def read_results(spec: Spec, out: Path) -> tuple[list[dict], list]:
    """(rows in the spec's order, then any other result.json under out; the spec's items with no result)."""
    rows, missing, seen = [], [], set()
    for item in spec.items:
        path = item.folder(out) / "result.json"
        seen.add(path.resolve())
        if path.is_file():
            rows.append(row_of(json.loads(path.read_text()), item.name, item.seed))
        else:
            missing.append(item)
    for path in sorted(out.glob("*/seed*/result.json")):
        if path.resolve() not in seen:
            report = json.loads(path.read_text())
            rows.append(row_of(report, path.parent.parent.name, report.get("seed")))
    return rows, missing


def row_of(report: dict, name: str, seed) -> dict:
    metrics = flatten({k: v for k, v in report.items() if k not in ROW_KEYS})
    return {"variant": name, "seed": seed, "overrides": report.get("overrides", []), **metrics}


def metric_names(rows: list[dict]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key not in ROW_KEYS:
                names.setdefault(key)
    return list(names)


def table_metrics(spec: Spec, rows: list[dict]) -> tuple[list[str], list[str]]:
    """(the table's columns, the metrics equal in every run)."""
    names = metric_names(rows)
    if spec.metrics is not None:
        chosen = [n for n in names if any(n == m or n.startswith(m + ".") for m in spec.metrics)]
        return chosen, []
    columns, constant = [], []
    for name in names:
        if BOOKKEEPING.search(name):
            continue
        values = {row.get(name) for row in rows}
        (constant if len(values) == 1 else columns).append(name)
    return columns, constant


def summary(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) over seeds: the spread is mean -+ std from 3 seeds, min and max of 2, none of 1."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if v.size == 2:
        return mean, float(v.min()), float(v.max())
    sd = float(v.std(ddof=1)) if v.size > 2 else 0.0
    if sd <= 1e-12 * max(1.0, abs(mean)):   # equal values: rounding leaves ~1e-16, which says nothing
        sd = 0.0
    return mean, mean - sd, mean + sd


def fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.4g}"


def cell(values: list[float]) -> str:
    mean, low, high = summary(values)
    n = sum(v is not None for v in values)
    if n == 2:
        return f"{fmt(mean)} ({fmt(low)} to {fmt(high)})"
    if n > 2:
        return f"{fmt(mean)} ± {fmt((high - low) / 2)}"
    return fmt(mean)


def by_variant(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["variant"], []).append(row)
    return groups


def markdown(spec: Spec, rows: list[dict], missing: list) -> str:
    columns, constant = table_metrics(spec, rows)
    groups = by_variant(rows)
    means = {m: {v: summary([r.get(m) for r in rs])[0] for v, rs in groups.items()} for m in columns}
    best = {}
    for m in columns:
        way = direction(m, spec.better)
        finite = [x for x in means[m].values() if math.isfinite(x)]
        if way and len(finite) > 1:
            best[m] = (min if way == "lower" else max)(finite)
    title = spec.name or "ablation"
    lines = [f"# {title}", "",
             f"{len(rows)} runs of {len(groups)} variants; mean over seeds, then ± the standard deviation (3 seeds "
             "or more) or (min to max) of 2 seeds. Best per column in bold "
             "(↓ lower is better, ↑ higher; no arrow: no direction known).", ""]
    arrows = {"lower": " ↓", "higher": " ↑", None: ""}
    lines.append("| variant | seeds | " + " | ".join(f"{m}{arrows[direction(m, spec.better)]}" for m in columns) + " |")
    lines.append("|---|---|" + "---|" * len(columns))
    for variant, rs in groups.items():
        cells = []
        for m in columns:
            text = cell([r.get(m) for r in rs])
            cells.append(f"**{text}**" if m in best and means[m][variant] == best[m] else text)
        seeds = ", ".join(str(r["seed"]) for r in rs)
        lines.append(f"| {variant} | {seeds} | " + " | ".join(cells) + " |")
    if constant:
        lines += ["", f"<details><summary>{len(constant)} metric(s) equal in every run</summary>", "",
                  ", ".join(f"{m} = {fmt(rows[0][m])}" for m in constant), "", "</details>"]
    own = {item.name: item.own for item in spec.items}
    lines += ["", "Overrides of each variant (besides the base's):", ""]
    for variant, rs in groups.items():
        lines.append(f"- {variant}: {' '.join(own.get(variant, rs[0]['overrides'])) or '(none)'}")
    if missing:
        lines += ["", f"Missing ({len(missing)}): " + ", ".join(f"{i.name} seed {i.seed}" for i in missing)]
    return "\n".join(lines) + "\n"


def plot(spec: Spec, rows: list[dict], folder: Path) -> list[Path]:
    """One PNG per table metric: the metric against the first numeric grid key (a line per named variant and
    other grid values), or against the variants when there is no grid; error bars over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns, _ = table_metrics(spec, rows)
    groups = by_variant(rows)
    info = {}
    for item in spec.items:
        info.setdefault(item.name, item)
    keys = list(spec.grid)
    numeric = [k for k in keys if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec.grid[k])]
    x_key = (numeric or keys or [None])[0]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in columns:
        series: dict[str, list] = {}
        for variant, rs in groups.items():
            item = info.get(variant)
            if item is None:
                continue
            point = dict(item.point)
            if x_key is None:
                label, x = "", variant
            else:
                rest = [item.named] * bool(item.named) + [f"{k}={v}" for k, v in item.point if k != x_key]
                label, x = " ".join(rest), point[x_key]
            mean, low, high = summary([r.get(metric) for r in rs])
            series.setdefault(label, []).append((x, mean, mean - low, high - mean))
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        categorical = x_key is None or x_key not in numeric
        ticks = list(dict.fromkeys(str(p[0]) for s in series.values() for p in s)) if categorical else None
        for label, points in series.items():
            xs = [ticks.index(str(p[0])) for p in points] if categorical else [p[0] for p in points]
            ax.errorbar(xs, [p[1] for p in points], yerr=[[p[2] for p in points], [p[3] for p in points]],
                        marker="o", capsize=3, label=label or None)
        if categorical:
            ax.set_xticks(range(len(ticks)))
            ax.set_xticklabels(ticks, rotation=30, ha="right", fontsize=7)
        elif min(spec.grid[x_key]) > 0 and max(spec.grid[x_key]) >= 50 * min(spec.grid[x_key]):
            ax.set_xscale("log")   # values over decades (learning rates): evenly spaced
        ax.set_xlabel(x_key or "variant")
        ax.set_ylabel(metric)
        ax.set_title(f"{spec.name or 'ablation'}: {metric}", fontsize=9)
        if any(series):
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / f"{re.sub(r'[^A-Za-z0-9._=+,-]', '_', metric)}.png"
        tmp = partial_path(path)
        fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        os.replace(tmp, path)
        written.append(path)
    return written


def collect(spec: Spec, out: str | Path, log=print) -> dict:
    """Write results.jsonl, results.md and plots/ from the result.json files present; returns
    {"rows", "missing", "plots"}."""
    out = Path(out)
    rows, missing = read_results(spec, out)
    write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_text(out / "results.md", markdown(spec, rows, missing))
    plots = plot(spec, rows, out / "plots") if rows else []
    log(f"collected {len(rows)} result(s) into {out}/results.jsonl, results.md and {len(plots)} plot(s) in "
        f"{out}/plots")
    if missing:
        log(f"missing {len(missing)} of {len(spec.items)}: " + ", ".join(f"{i.name} seed{i.seed}" for i in missing))
    return {"rows": rows, "missing": missing, "plots": plots}
