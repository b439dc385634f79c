"""The paper's (Stable Audio 1.0) conditioning: CLAP text tokens plus two integer timing tokens.

As stable-audio-tools' `IntConditioner` and `ConditionedDiffusionModelWrapper` with the paper's
config: `seconds_start` and `seconds_total` are clamped to [min_val, max_val] (0..512) and looked
up in a learned table of max_val - min_val + 1 rows (the reference indexes by the clamped value
itself, without subtracting min_val; with min_val 0 the two agree), one 768-d token each. The
U-Net's cross-attention context is [77 CLAP tokens (penultimate text layer), seconds_start,
seconds_total] = 79 tokens, with the CLAP attention mask extended by ones for the timing tokens.
There is no global conditioning. The timing tables are imported by sa_jax.checkpoints.unet.timing_from_sat.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax.numpy as jnp

from sa_jax.errors import ConfigError


@dataclass(frozen=True)
class IntConditionerConfig:
    min_val: int = 0
    max_val: int = 512

    def validate(self):
        if self.max_val < self.min_val or self.min_val < 0:
            raise ConfigError(f"int conditioner: need 0 <= min_val <= max_val, got [{self.min_val}, {self.max_val}]")


class IntConditioner(nn.Module):
    """Integers (batch,) -> one learned token each, (batch, 1, features)."""

    features: int
    config: IntConditionerConfig = IntConditionerConfig()

    @nn.compact
    def __call__(self, values):
        c = self.config
        table = self.param("embedding", nn.initializers.normal(1.0), (c.max_val - c.min_val + 1, self.features))
        index = jnp.clip(jnp.asarray(values).astype(jnp.int32), c.min_val, c.max_val)
        return table[index][:, None, :]


class SA1Conditioner(nn.Module):
    """(CLAP text tokens (B, 77, 768), their mask (B, 77), seconds_start (B,), seconds_total (B,))
    -> (context (B, 79, 768), context mask (B, 79))."""

    features: int = 768
    seconds_start: IntConditionerConfig = IntConditionerConfig()
    seconds_total: IntConditionerConfig = IntConditionerConfig()

    @nn.compact
    def __call__(self, text, text_mask, seconds_start, seconds_total):
        b = text.shape[0]
        start = IntConditioner(self.features, self.seconds_start, name="seconds_start")(
            jnp.broadcast_to(jnp.asarray(seconds_start), (b,)))
        total = IntConditioner(self.features, self.seconds_total, name="seconds_total")(
            jnp.broadcast_to(jnp.asarray(seconds_total), (b,)))
        context = jnp.concatenate([text.astype(jnp.float32), start, total], axis=1)
        mask = jnp.concatenate([jnp.asarray(text_mask).astype(bool), jnp.ones((b, 2), bool)], axis=1)
        return context, mask
