"""Parameter-tree helpers shared by the models and the importers: trees are nested dicts, and
importers work on flat `{"a/b/c": array}` views of them."""

from __future__ import annotations

from typing import Any

import jax


def flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """`{"a/b/c": shape}` for every leaf of a (possibly abstract) parameter tree."""
    return {"/".join(k.key for k in path): tuple(v.shape)
            for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def unflatten(flat: dict[str, Any]) -> dict:
    """The nested parameter dict for `{"a/b/c": array}`."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree
