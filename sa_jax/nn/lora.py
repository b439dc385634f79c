"""LoRA (low-rank adaptation) as pure functions over parameter trees.

A LoRA adapter adds a trained low-rank update to chosen kernels of a frozen model. It is applied in
weight space, so no Flax module changes:

    W' = W + scale * reshape(down @ up, W.shape)        down: (fan_in, rank), up: (rank, fan_out)

with fan_out = W.shape[-1] and fan_in = prod(W.shape[:-1]) (a convolution kernel (k, in, out) is
treated as the (k * in, out) matrix it multiplies its unfolded input with). `scale` is alpha / rank
times a user's strength.

    params = {"conditioner": ..., "denoiser": ...}     # a run's trainable tree (sa_jax.training.model)
    targets = default_targets("sao")
    adapters = init_adapters(params, rank=16, targets=targets, key=jax.random.key(0))
    tuned = apply_adapters(params, adapters, alpha / rank * strength)

Adapters are `{path: {"down": array, "up": array}}` keyed by the "/"-joined path of the kernel they
adapt ("denoiser/layers_0/self_attn/qkv/kernel"). `targets` are regexes searched (`re.search`) in
those paths; only leaves named `kernel` with two or more dimensions can be targets.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.errors import LoraError

# Default targets per family, over the trainable tree {"conditioner": ..., "denoiser": ...}.
_TARGETS = {
    # Stable Audio Open's DiT: self-attention (fused qkv, out), cross-attention (q, kv, out), feed-forward.
    "sao": (r"^denoiser/layers_\d+/self_attn/(qkv|out)/kernel$",
            r"^denoiser/layers_\d+/cross_attn/(q|kv|out)/kernel$",
            r"^denoiser/layers_\d+/ff/(proj_in|proj_out)/kernel$"),
    # The paper's U-Net: the q / kv / out projections of every transformer block's self- and cross-attention.
    "sa1": (r"^denoiser/.*transformer/blocks_\d+/(attention|cross_attention)/(to_q|to_kv|to_out)/kernel$",),
}

# Optional extra targets a config may add to the defaults (`lora.targets`): the U-Net's convolutions
# (resnet blocks, down/up-sampling, the transformers' 1x1 in/out projections).
SA1_CONVOLUTIONS = r"^denoiser/.*conv/kernel$"


def default_targets(family: str) -> tuple[str, ...]:
    """The regexes LoRA targets by default for a model family ("sao" or "sa1")."""
    if family not in _TARGETS:
        raise LoraError(f"no LoRA targets for model family {family!r}; known families: {sorted(_TARGETS)}")
    return _TARGETS[family]


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _flat(params) -> tuple[list[tuple[str, Any]], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    return [("/".join(_key_name(k) for k in path), leaf) for path, leaf in leaves], treedef


def _patterns(targets) -> list[re.Pattern]:
    if isinstance(targets, str):
        targets = [targets]
    targets = list(targets)
    if not targets or not all(isinstance(t, str) for t in targets):
        raise LoraError(f"LoRA targets must be a non-empty list of regexes (strings), got {targets!r}")
    compiled = []
    for t in targets:
        try:
            compiled.append(re.compile(t))
        except re.error as e:
            raise LoraError(f"LoRA target {t!r} is not a valid regex: {e}") from None
    return compiled


def _kernels(params) -> dict[str, tuple[int, ...]]:
    return {p: tuple(leaf.shape) for p, leaf in _flat(params)[0]
            if p.rsplit("/", 1)[-1] == "kernel" and len(getattr(leaf, "shape", ())) >= 2}


def target_paths(params, targets: str | Iterable[str]) -> list[str]:
    """The sorted paths of the kernels (leaves named `kernel`, ndim >= 2) that a target regex matches;
    LoraError listing some available kernel paths when none does."""
    patterns = _patterns(targets)
    kernels = _kernels(params)
    found = sorted(p for p in kernels if any(r.search(p) for r in patterns))
    if not found:
        some = sorted(kernels)
        shown = ", ".join(some[:12]) + (f", ... ({len(some)} in all)" if len(some) > 12 else "")
        raise LoraError(f"the LoRA targets {[r.pattern for r in patterns]} match no kernel of this model; "
                        f"kernels it has: {shown or 'none'}")
    return found


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    return math.prod(shape[:-1]), shape[-1]


def init_adapters(params, rank: int, targets: str | Iterable[str], key: jax.Array) -> dict:
    """Fresh float32 adapters for the kernels `targets` match: `down` normal with std 1/sqrt(fan_in),
    `up` zeros, so a fresh adapter changes nothing (training moves `up` first)."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise LoraError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    kernels = _kernels(params)
    fans = {path: _fans(kernels[path]) for path in target_paths(params, targets)}

    @jax.jit   # one program for all adapters rather than an op-by-op dispatch per shape
    def make(key):
        return {path: {"down": jax.random.normal(jax.random.fold_in(key, i), (fan_in, int(rank)), jnp.float32)
                       / math.sqrt(fan_in),
                       "up": jnp.zeros((int(rank), fan_out), jnp.float32)}
                for i, (path, (fan_in, fan_out)) in enumerate(fans.items())}
    return make(key)


def check_adapters(params, adapters: dict) -> None:
    """LoraError unless every adapter names a kernel of `params` and its down / up fit that kernel."""
    kernels = _kernels(params)
    missing = sorted(p for p in adapters if p not in kernels)
    if missing:
        some = ", ".join(sorted(kernels)[:8])
        raise LoraError(f"the adapter has {len(missing)} path(s) that are not kernels of this model, e.g. "
                        f"{missing[:3]}; the model's kernels look like: {some}")
    for path, ad in adapters.items():
        if not isinstance(ad, dict) or set(ad) != {"down", "up"}:
            raise LoraError(f"adapter {path!r} must be {{'down': ..., 'up': ...}}, got {type(ad).__name__} "
                            f"{sorted(ad) if isinstance(ad, dict) else ''}")
        fan_in, fan_out = _fans(kernels[path])
        down, up = jnp.shape(ad["down"]), jnp.shape(ad["up"])
        if len(down) != 2 or len(up) != 2 or down[0] != fan_in or up[1] != fan_out or down[1] != up[0]:
            raise LoraError(f"adapter {path!r}: down {down} and up {up} do not fit the kernel {kernels[path]} "
                            f"(need down (fan_in={fan_in}, rank) and up (rank, fan_out={fan_out}))")


def _concrete(scale) -> float | None:
    """The scale as a float when it is known now (not traced under jit), else None."""
    try:
        return float(scale)
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def apply_adapters(params, adapters: dict, scale, *, dropout: float = 0.0, key: jax.Array | None = None):
    """`params` with every adapted kernel replaced by W + scale * reshape(down @ up).

    Jit-friendly; `scale` is a number or a traced scalar (alpha / rank * strength). The update is
    computed in float32 (at full matmul precision) and cast to each kernel's dtype, so a bfloat16
    base stays bfloat16. A scale of 0 returns the base bit for bit.

    dropout (training only; needs `key`): weight-space LoRA dropout. Each adapter's input features
    (rows of `down`) are dropped with probability `dropout` and the kept ones scaled by
    1 / (1 - dropout), one mask per call (per training step) shared by the whole batch, where
    activation-space LoRA draws one per example; it regularises the same low-rank path.
    """
    if not 0.0 <= float(dropout) < 1.0:
        raise LoraError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    if dropout and key is None:
        raise LoraError("LoRA dropout > 0 needs a random key (apply_adapters(..., dropout=p, key=key))")
    value = _concrete(scale)
    if value is not None:
        if not math.isfinite(value):
            raise LoraError(f"LoRA scale must be a finite number, got {value!r}")
        if value == 0.0:
            return params   # the base exactly (even its -0.0 weights, which W + 0 would turn into +0.0)
    check_adapters(params, adapters)
    flat, treedef = _flat(params)
    order = {p: i for i, p in enumerate(sorted(adapters))}
    out = []
    for path, w in flat:
        ad = adapters.get(path)
        if ad is None:
            out.append(w)
            continue
        down = jnp.asarray(ad["down"], jnp.float32)
        if dropout:
            keep = jax.random.bernoulli(jax.random.fold_in(key, order[path]), 1.0 - dropout, (down.shape[0], 1))
            down = jnp.where(keep, down / (1.0 - dropout), 0.0)
        delta = jnp.matmul(down, jnp.asarray(ad["up"], jnp.float32), precision=jax.lax.Precision.HIGHEST)
        new = (jnp.asarray(w, jnp.float32) + jnp.asarray(scale, jnp.float32) * delta.reshape(w.shape)).astype(w.dtype)
        if value is None:   # traced scale: keep scale 0 exact here too
            new = jnp.where(jnp.asarray(scale) == 0, w, new)
        out.append(new)
    return jax.tree_util.tree_unflatten(treedef, out)


def content_hash(params) -> str:
    """sha256 (hex) over the sorted leaf paths, dtypes, shapes and bytes (fetched to the host): the
    identity of a base model that adapters record. Hash the base as loaded (float32), before any cast."""
    h = hashlib.sha256()
    for path, leaf in sorted(_flat(params)[0], key=lambda item: item[0]):
        a = np.ascontiguousarray(jax.device_get(leaf))
        h.update(f"{path}\0{a.dtype.name}\0{a.shape}\0".encode())
        h.update(memoryview(a.reshape(-1).view(np.uint8)))
    return h.hexdigest()
