"""Optimiser, learning-rate schedules and the EMA decay of a training run."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def learning_rate(c):
    """`step -> lr` for an `OptimConfig` (see its docstring for the three schedules)."""
    if c.schedule == "constant":
        return lambda step: jnp.asarray(c.lr, jnp.float32)
    if c.schedule == "inverse":
        # stable-audio-tools' InverseLR: warm-up factor times max(final_lr, lr * decay).
        def inverse(step):
            step = jnp.asarray(step, jnp.float32)
            warm = 1.0 - c.warmup ** (step + 1.0)
            return warm * jnp.maximum(c.final_lr, c.lr * (1.0 + step / c.inv_gamma) ** -c.power)
        return inverse
    raise ValueError(f"learning_rate: use make_optimizer for the {c.schedule!r} schedule")


def make_optimizer(c, total_steps: int) -> tuple[optax.GradientTransformation, callable]:
    """(AdamW with optional global-norm clipping, the lr schedule). `c.mu_dtype` bfloat16 keeps the first
    moments in bfloat16 (the second moments stay float32: their small values need its range)."""
    if c.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0 if c.warmup_steps else c.lr, peak_value=c.lr, warmup_steps=c.warmup_steps,
            decay_steps=max(total_steps, c.warmup_steps + 1), end_value=c.final_lr)
    else:
        schedule = learning_rate(c)
    mu_dtype = getattr(c, "mu_dtype", "float32")   # the VAE and CLAP trainers' optimiser configs have none
    adamw = optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                        mu_dtype=None if mu_dtype == "float32" else jnp.bfloat16)
    if c.clip_norm is not None:
        return optax.chain(optax.clip_by_global_norm(c.clip_norm), adamw), schedule
    return adamw, schedule


def ema_decay(c, step):
    """EMA decay for the update that produces parameters of `step` (1-based count of updates):
    min(decay, 1 - (1 + (step - 1) / inv_gamma) ** -power) with warm-up (0 at the first update,
    so the EMA starts at the parameters), else the constant decay."""
    if not c.warmup:
        return jnp.asarray(c.decay, jnp.float32)
    n = jnp.maximum(jnp.asarray(step, jnp.float32) - 1.0, 0.0)
    return jnp.clip(1.0 - (1.0 + n / c.inv_gamma) ** -c.power, 0.0, c.decay)
