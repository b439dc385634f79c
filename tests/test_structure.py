"""The import order of sa_jax, checked on the source: every `import` of every module (function-level
ones included) may reach its own layer or a layer below it, never one above.

The order, top first (docs/architecture.md explains each layer):

    commands / cli / ui / testing            what a user types; the PyTorch references for tests
    training / eval / metrics / ablate       trainers, evaluations, studies
    pipeline                                 StableAudio: format detection + generation
    families / autoencoder                   SAO (T5 + DiT) and SA1 (CLAP + U-Net) wiring, the VAE API
    checkpoints                              one importer per foreign format, the sa-jax store
    models                                   Flax modules and their configs
    nn                                       shared layers
    base: errors, config, tree, audio, data, diffusion, parallel, text_tokenizer

Modules inside one layer may import each other. The package root `sa_jax/__init__.py` is the public
facade (lazy) and is not checked; importing its names counts as importing what they resolve to.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sa_jax"

# `ablate` (sa-jax ablate) sits beside training and eval: it drives both.
LAYERS = [
    {"cli", "commands", "ui", "testing"},
    {"training", "eval", "metrics", "ablate"},
    {"pipeline", "longform"},
    {"families", "autoencoder", "encoders"},
    {"checkpoints"},
    {"models"},
    {"nn"},
    {"errors", "config", "tree", "audio", "data", "diffusion", "parallel", "text_tokenizer", "assets",
     "configs", "compile_cache"},
]
# Names the package root resolves lazily, and the module each one lives in.
FACADE = {"Autoencoder": "autoencoder", "Clap": "encoders", "StableAudio": "pipeline", "__version__": "errors"}


def layer_of(top: str) -> int:
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"sa_jax.{top} is in no layer of tests/test_structure.py: add it to LAYERS")


def imported_tops(path: Path) -> set[tuple[str, int]]:
    """(first component under sa_jax, line) of every sa_jax import in the file."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = parts[:-1]   # the package a relative import starts from (for __init__.py too)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sa_jax."):
                    found.add((alias.name.split(".")[1], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package)[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("sa_jax."):
                found.add((module.split(".")[1], node.lineno))
            elif module == "sa_jax":
                for alias in node.names:
                    found.add((FACADE.get(alias.name, alias.name), node.lineno))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way_down(path):
    own_top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    own = layer_of(own_top)
    upward = [f"line {line}: sa_jax.{top} (layer {layer_of(top)}) from sa_jax.{own_top} (layer {own})"
              for top, line in sorted(imported_tops(path), key=lambda t: t[1]) if layer_of(top) < own]
    assert not upward, f"{path.relative_to(PACKAGE.parent)} imports upward:\n" + "\n".join(upward)


def test_every_package_has_a_layer():
    for child in PACKAGE.iterdir():
        if child.name.startswith(("_", ".")) or child.suffix not in (".py", ""):
            continue
        layer_of(child.name.removesuffix(".py"))
