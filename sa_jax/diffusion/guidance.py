"""Classifier-free guidance (Ho & Salimans 2022) as a model wrapper.

`cfg_model(model, cond, uncond, scale)` turns `model(x, t, cond) -> output` into `guided(x, t) -> output`
with one batched forward pass over [cond, uncond]:

    out = uncond + scale * (cond - uncond)

- Negative conditioning: pass the negative prompt's conditioning as `uncond` (the reference replaces the
  null embedding by it); pass zeros (or a learned null embedding) for plain CFG.
- CFG rescale (Lin et al. 2024): out = phi * out * std(cond) / std(out) + (1 - phi) * out, the std taken
  over `rescale_axis` (channels; -1 for sa-jax's channels-last latents) with Bessel's correction, as in
  stable-audio-tools. It undoes the variance blow-up of large scales.
- CFG interval: guide only while the noise level lies in [lo, hi]; elsewhere run the conditional branch
  alone (half the compute). The level is the process' own sigma: sin(pi t / 2) for the v-objective,
  t for rectified flow, the argument itself for a k-diffusion denoiser (objective=None).

Guidance is applied to the network output (v or velocity), before `v_denoiser`/`rf_denoiser`, as
stable-audio-tools does; CFG itself commutes with that affine map but the rescale does not.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from .wrappers import as_pytree_fn

GUIDANCE_OBJECTIVES = ("v", "rectified_flow", None)


def _noise_level(objective, t):
    if objective == "v":
        return jnp.sin(t * math.pi / 2)
    return t


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: leaves may be dicts
class Conditioned:
    """`model` with its conditioning bound: (x, t) -> model(x, t, cond)."""

    model: Any
    cond: Any

    def __call__(self, x, t):
        return self.model(x, t, self.cond)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: leaves may be dicts
class Guided:
    """`model(x, t, cond)` under classifier-free guidance, called as (x, t); built by `cfg_model`."""

    model: Any
    cond: Any
    uncond: Any
    scale: Any
    rescale: float = dataclasses.field(default=0.0, metadata=dict(static=True))
    interval: tuple | None = dataclasses.field(default=None, metadata=dict(static=True))
    objective: str | None = dataclasses.field(default="v", metadata=dict(static=True))
    rescale_axis: int = dataclasses.field(default=-1, metadata=dict(static=True))

    def _guided(self, x, t):
        both = lambda a, b: jnp.concatenate([a, jnp.broadcast_to(b, a.shape).astype(a.dtype)], axis=0)
        out = self.model(both(x, x), both(t, t), jax.tree.map(both, self.cond, self.uncond))
        cond_out, uncond_out = jnp.split(out, 2, axis=0)
        cfg = uncond_out + (cond_out - uncond_out) * self.scale
        if self.rescale:
            ratio = (jnp.std(cond_out, axis=self.rescale_axis, ddof=1, keepdims=True)
                     / jnp.std(cfg, axis=self.rescale_axis, ddof=1, keepdims=True))
            cfg = self.rescale * (cfg * ratio) + (1 - self.rescale) * cfg
        return cfg.astype(out.dtype)  # the float32 scale must not widen a bfloat16 model's output

    def __call__(self, x, t):
        if self.interval is None:
            return self._guided(x, t)
        lo, hi = self.interval
        level = _noise_level(self.objective, jnp.reshape(t, (-1,))[0])  # one level per call, like the reference
        inside = (level >= lo) & (level <= hi)
        return lax.cond(inside, self._guided, lambda x, t: self.model(x, t, self.cond), x, t)


def _check_finite_scale(scale):
    try:
        value = float(scale)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None  # a traced scale: checked by whoever made it
    if not math.isfinite(value):
        raise ValueError(f"cfg scale must be a finite number, got {value}")
    return value


def cfg_model(model: Callable, cond, uncond, scale, *, rescale: float = 0.0, interval=None,
              objective: str | None = "v", rescale_axis: int = -1):
    """Classifier-free guided `model(x, t, cond)` as `(x, t) -> output` (see the module docstring).

    cond/uncond: conditioning pytrees of the same structure; every leaf has the batch as its first axis
    (uncond leaves may have batch 1 and are broadcast). scale: the CFG scale (1 = no guidance; it may be
    a traced array, then it is not checked here). rescale: phi in [0, 1]. interval: (lo, hi) noise levels
    where guidance applies, or None for always.
    """
    if objective not in GUIDANCE_OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r} for the CFG interval; valid: {GUIDANCE_OBJECTIVES}")
    value = _check_finite_scale(scale)
    if isinstance(rescale, bool) or not isinstance(rescale, numbers.Real) or not 0 <= rescale <= 1:
        raise ValueError(f"cfg rescale (phi) must be a number in [0, 1], got {rescale!r}")
    if interval is not None:
        try:
            lo, hi = (float(v) for v in interval)
        except (TypeError, ValueError):
            raise ValueError(f"cfg interval must be a pair (lo, hi) of numbers, got {interval!r}") from None
        if not lo <= hi or math.isnan(lo) or math.isnan(hi):
            raise ValueError(f"cfg interval needs lo <= hi, got ({lo}, {hi})")
        interval = (lo, hi)
    if jax.tree.structure(cond) != jax.tree.structure(uncond):
        raise ValueError("cond and uncond must have the same structure (the same conditioning inputs); got "
                         f"{jax.tree.structure(cond)} and {jax.tree.structure(uncond)}")
    model = as_pytree_fn(model)
    if value == 1.0:  # guidance is the identity: skip the unconditional pass, as the reference does
        return Conditioned(model, cond)
    return Guided(model, cond, uncond, jnp.asarray(scale, jnp.float32), float(rescale), interval, objective,
                  rescale_axis)
