"""The CPU's by-head attention (sa_jax.nn.attention.attention_by_head) against XLA's whole-tensor attention,
which the parity tests check against the torch references: values and gradients, self-attention and
grouped-query cross-attention, float32 and bfloat16; and where `attention` takes the loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_jax.nn import attention as att

torch = pytest.importorskip("torch")


def _qkv(b, t, n, s, kv, d, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(keys[0], (b, t, n, d), dtype), jax.random.normal(keys[1], (b, s, kv, d), dtype),
            jax.random.normal(keys[2], (b, s, kv, d), dtype))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("shape", [(2, 1025, 6, 1025, 6, 64), (2, 1025, 6, 130, 3, 64), (1, 300, 4, 200, 1, 32)],
                         ids=["self", "cross-gqa", "mqa-odd"])
def test_by_head_matches_whole_attention_and_torch(shape):
    q, k, v = _qkv(*shape, jnp.float32)
    ours = jax.jit(lambda q, k, v: att.attention_by_head(q, k, v, scale=0.2))(q, k, v)
    whole = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=0.2))(q, k, v)
    group = shape[2] // shape[4]
    qt, kt, vt = (torch.from_numpy(np.asarray(a).transpose(0, 2, 1, 3).copy()) for a in (q, k, v))
    kt, vt = kt.repeat_interleave(group, 1), vt.repeat_interleave(group, 1)
    ref = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, scale=0.2).numpy().transpose(0, 2, 1, 3)
    print(f"{shape}: by head vs XLA {_rel(ours, whole):.1e}, vs torch SDPA {_rel(ours, ref):.1e}")
    assert _rel(ours, whole) < 1e-5 and _rel(ours, ref) < 1e-5

    def loss(fn):
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v))), (0, 1, 2)))

    for a, b in zip(loss(att.attention_by_head)(q, k, v), loss(jax.nn.dot_product_attention)(q, k, v)):
        assert _rel(a, b) < 1e-5


def test_by_head_bfloat16_is_xla_arithmetic():
    """Half precision: logits and softmax in float32, probabilities cast to bfloat16, as XLA's attention."""
    q, k, v = _qkv(2, 1025, 4, 1025, 2, 64, jnp.bfloat16, seed=1)
    ours = jax.jit(att.attention_by_head)(q, k, v)
    whole = jax.jit(jax.nn.dot_product_attention)(q, k, v)
    assert ours.dtype == jnp.bfloat16
    print(f"bfloat16: by head vs XLA {_rel(ours, whole):.1e}")
    assert _rel(ours, whole) < 2 ** -7   # a bfloat16 rounding of the output


def test_attention_loops_over_heads_only_where_it_applies():
    long, short = _qkv(2, 1025, 6, 1025, 6, 64, jnp.float32), _qkv(2, 64, 6, 64, 6, 64, jnp.float32)
    assert att.by_head_applies(*long[:2]) and not att.by_head_applies(*short[:2])
    assert not att.by_head_applies(*long[:2], mask=jnp.ones((1, 1, 1025, 1025), bool))
    assert "while" in jax.jit(att.attention).lower(*long).compile().as_text()
    assert "while" not in jax.jit(att.attention).lower(*short).compile().as_text()
    # a program lowered for another platform gets XLA's whole attention
    text = jax.jit(att.attention).trace(*long).lower(lowering_platforms=("cuda",)).as_text()
    assert "while" not in text and "dot_general" in text
    np.testing.assert_allclose(att.attention(*long), jax.nn.dot_product_attention(*long), rtol=1e-5, atol=1e-6)
