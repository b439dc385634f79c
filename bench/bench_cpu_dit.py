"""Where a DiT denoiser step spends its time on the CPU: sa-jax's pieces against torch's, same shapes, same run.

    .venv/bin/python bench/bench_cpu_dit.py                    # SAO-shaped: 6 blocks x 384, 1024 frames, CFG batch 2
    .venv/bin/python bench/bench_cpu_dit.py --repeats 9 --only step,attn

The model is Stable Audio Open's DiT at reduced width (6 blocks, 384 wide, 6 heads of 64 over 3 key/value
heads, 130 context tokens of 768, 1024 latent frames = 47.55 s, so 1025 tokens with the global token), called
with batch 2 as classifier-free guidance does. Each row times one jitted sa-jax function and the torch
(2.x CPU) equivalent on the same shapes: the whole denoiser call (sa-jax's DiT against diffusers'
`StableAudioDiTModel`), then the pieces of one block (attention core, projections, rotary, norm,
feed-forward, cross-attention). The two sides are interleaved call by call and repeated; each cell is the
median, so both sides see the same load on a shared machine. The ratio is torch time / sa-jax time
(> 1: sa-jax is faster). `--threads` sets torch's threads (XLA:CPU uses every core it is given).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WIDTH, DEPTH, HEADS, KV_HEADS, HEAD_DIM, CONTEXT, CONTEXT_DIM, FRAMES, BATCH = 384, 6, 6, 3, 64, 130, 768, 1024, 2


@contextlib.contextmanager
def fused_attention():
    """Trace sa-jax's attention as before the by-head loop (XLA's attention over all heads at once)."""
    from sa_jax.nn import attention as att

    saved, att.BY_HEAD_MIN_LOGITS = att.BY_HEAD_MIN_LOGITS, float("inf")
    try:
        yield
    finally:
        att.BY_HEAD_MIN_LOGITS = saved


def cases(args):
    """(name, jax function, jax args, torch function, torch args) for each row."""
    import jax
    import jax.numpy as jnp
    import torch
    import torch.nn.functional as F

    from sa_jax.models.dit import DiTConfig, init_params, make_denoiser
    from sa_jax.nn import attention as att

    rng = np.random.default_rng(0)
    n, b, h, d, kvh = FRAMES + 1, BATCH, HEADS, HEAD_DIM, KV_HEADS

    def arr(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    out = []
    if "step" in args.only:
        from diffusers import StableAudioDiTModel

        cfg = DiTConfig(embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_kv_heads=KV_HEADS,
                        cond_token_dim=CONTEXT_DIM, global_cond_dim=2 * CONTEXT_DIM)
        params = init_params(cfg, jax.random.key(0))
        params = jax.tree_util.tree_map(lambda p: p + 0.01, params)   # no zero-initialised layer
        apply = jax.jit(make_denoiser(cfg))
        x, c, g = arr(b, 64, FRAMES), arr(b, CONTEXT, CONTEXT_DIM), arr(b, 2 * CONTEXT_DIM)
        t = np.full((b,), 0.5, np.float32)
        torch.manual_seed(0)
        ref = StableAudioDiTModel(sample_size=FRAMES, in_channels=64, out_channels=64, num_layers=DEPTH,
                                  attention_head_dim=HEAD_DIM, num_attention_heads=HEADS,
                                  num_key_value_attention_heads=KV_HEADS, cross_attention_dim=CONTEXT_DIM,
                                  cross_attention_input_dim=CONTEXT_DIM, global_states_input_dim=2 * CONTEXT_DIM,
                                  time_proj_dim=256).eval()
        from diffusers.models.embeddings import get_1d_rotary_pos_embed

        rot = get_1d_rotary_pos_embed(max(HEAD_DIM // 2, 32), n, use_real=True, repeat_interleave_real=False)

        def torch_step(x, t, c, g):
            return ref(x, t, c, g[:, None], rotary_embedding=rot, return_dict=False)[0]

        targs = tuple(torch.from_numpy(a) for a in (x, t * 1000, c, g))
        out.append(("denoiser call (whole DiT)", apply, (params, x, t, c, g), torch_step, targs))
        with fused_attention():   # a new function: jit's trace cache would hand back the program above
            before = jax.jit(make_denoiser(cfg)).lower(params, x, t, c, g).compile()
        out.append(("  the same, attention not by head (before)", before, (params, x, t, c, g), torch_step, targs))

        # One block and its three parts, sa-jax's Flax modules against diffusers' (the block's input is the
        # residual stream, the context is after to_cond_embed: 768 wide, 3 key/value heads).
        from sa_jax.models.dit import CrossAttention, DiTBlock, SelfAttention, SwiGLU

        hs, ctx = arr(b, n, WIDTH), arr(b, CONTEXT, CONTEXT_DIM)
        cos, sin = (np.asarray(a) for a in att.rotary_cos_sin(n, cfg.rotary_features))
        layer, blk = params["layers_0"], ref.transformer_blocks[0]
        hst, ctxt = torch.from_numpy(hs), torch.from_numpy(ctx)
        parts = [("one block", DiTBlock, layer, (hs, ctx, cos, sin),
                  lambda: blk(hst, encoder_hidden_states=ctxt, rotary_embedding=rot)),
                 ("  self-attention (qkv, rotary, attention, out)", SelfAttention, layer["self_attn"], (hs, cos, sin),
                  lambda: blk.attn1(hst, rotary_emb=rot)),
                 ("  cross-attention (q, kv, attention, out)", CrossAttention, layer["cross_attn"], (hs, ctx),
                  lambda: blk.attn2(hst, encoder_hidden_states=ctxt)),
                 ("  feed-forward (SwiGLU)", SwiGLU, layer["ff"], (hs,), lambda: blk.ff(hst))]
        for name, module, p, inputs, torch_fn in parts:
            fn = jax.jit(lambda p, *a, module=module: module(cfg).apply({"params": p}, *a))
            out.append((name, fn, (p, *inputs), torch_fn, ()))

    q, k, v = arr(b, n, h, d), arr(b, n, h, d), arr(b, n, h, d)
    qt, kt, vt = (torch.from_numpy(np.ascontiguousarray(a.transpose(0, 2, 1, 3))) for a in (q, k, v))
    if "attn" in args.only:
        out.append(("self-attention core (sa-jax's attention: by head)", jax.jit(att.attention), (q, k, v),
                    F.scaled_dot_product_attention, (qt, kt, vt)))
        out.append(("  jax.nn.dot_product_attention xla (before)", jax.jit(
            lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")), (q, k, v),
            F.scaled_dot_product_attention, (qt, kt, vt)))

        def heads_major(q, k, v):   # (b, h, t, d) in and out
            s = jnp.einsum("bhtd,bhsd->bhts", q * (d ** -0.5), k)
            return jnp.einsum("bhts,bhsd->bhtd", jax.nn.softmax(s, axis=-1), v)

        out.append(("  einsum heads-major (b,h,t,d)", jax.jit(heads_major), tuple(a.numpy() for a in (qt, kt, vt)),
                    F.scaled_dot_product_attention, (qt, kt, vt)))

        def logits_only(q, k):
            return jnp.einsum("bhtd,bhsd->bhts", q, k)

        out.append(("  q k^T alone (b,h,t,d)", jax.jit(logits_only), (qt.numpy(), kt.numpy()),
                    lambda q, k: q @ k.transpose(-1, -2), (qt, kt)))
        s = arr(b, h, n, n)
        out.append(("  softmax over (b,h,1025,1025)", jax.jit(lambda s: jax.nn.softmax(s, axis=-1)), (s,),
                    lambda s: torch.softmax(s, -1), (torch.from_numpy(s),)))
        out.append(("  exp over (b,h,1025,1025)", jax.jit(jnp.exp), (s,), torch.exp, (torch.from_numpy(s),)))

    if "proj" in args.only:
        xw = arr(b, n, WIDTH)
        w_qkv, w_ff, w_out = arr(WIDTH, 3 * WIDTH), arr(WIDTH, 8 * WIDTH), arr(4 * WIDTH, WIDTH)
        xt = torch.from_numpy(xw)
        out.append(("qkv projection 384->1152", jax.jit(jnp.matmul), (xw, w_qkv),
                    F.linear, (xt, torch.from_numpy(np.ascontiguousarray(w_qkv.T)))))
        hw = arr(b, n, 4 * WIDTH)
        out.append(("ff out 1536->384", jax.jit(jnp.matmul), (hw, w_out),
                    F.linear, (torch.from_numpy(hw), torch.from_numpy(np.ascontiguousarray(w_out.T)))))

        def swiglu(x, w1, w2):
            hh, gate = jnp.split(x @ w1, 2, axis=-1)
            return (hh * jax.nn.silu(gate)) @ w2

        def swiglu_t(x, w1, w2):
            hh, gate = F.linear(x, w1).chunk(2, dim=-1)
            return F.linear(hh * F.silu(gate), w2)

        out.append(("SwiGLU feed-forward 384->3072->384", jax.jit(swiglu), (xw, w_ff, w_out),
                    swiglu_t, (xt, torch.from_numpy(np.ascontiguousarray(w_ff.T)),
                               torch.from_numpy(np.ascontiguousarray(w_out.T)))))
        cos, sin = att.rotary_cos_sin(n, 32)
        out.append(("rotary on q (32 of 64 features)", jax.jit(att.apply_rotary), (q, np.asarray(cos), np.asarray(sin)),
                    lambda x, c, s: torch.cat([torch.cat([-x[..., 16:32], x[..., :16]], -1) * s + x[..., :32] * c,
                                               x[..., 32:]], -1),
                    (qt, torch.from_numpy(np.asarray(cos)), torch.from_numpy(np.asarray(sin)))))
        scale = np.ones(WIDTH, np.float32)
        out.append(("layer norm (no bias)", jax.jit(lambda x, s: att.layer_norm(1e-5, jnp.float32, "n").apply(
            {"params": {"scale": s}}, x)), (xw, scale),
            lambda x, s: F.layer_norm(x, (WIDTH,), s, None, 1e-5), (xt, torch.from_numpy(scale))))
        kc, vc = arr(b, CONTEXT, kvh, d), arr(b, CONTEXT, kvh, d)
        kct, vct = (torch.from_numpy(np.ascontiguousarray(a.transpose(0, 2, 1, 3))).repeat_interleave(h // kvh, 1)
                    for a in (kc, vc))
        out.append(("cross-attention core (130 keys, 3 kv heads)", jax.jit(att.attention), (q, kc, vc),
                    F.scaled_dot_product_attention, (qt, kct, vct)))
        out.append(("  the same, fused (before)", jax.jit(jax.nn.dot_product_attention), (q, kc, vc),
                    F.scaled_dot_product_attention, (qt, kct, vct)))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--only", default="step,attn,proj", help="comma list of: step, attn, proj")
    args = parser.parse_args()
    args.only = args.only.split(",")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # spinning OpenMP threads starve on shared cores
    import jax
    import torch

    torch.set_num_threads(args.threads)
    rows = cases(args)
    times = {name: ([], []) for name, *_ in rows}
    with torch.no_grad():
        for name, jf, ja, tf, ta in rows:        # warm-up (compiles)
            jax.block_until_ready(jf(*ja))
            tf(*ta)
        for _ in range(args.repeats):
            for name, jf, ja, tf, ta in rows:
                start = time.perf_counter()
                jax.block_until_ready(jf(*ja))
                mid = time.perf_counter()
                tf(*ta)
                times[name][0].append(mid - start)
                times[name][1].append(time.perf_counter() - mid)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}; jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"DiT {DEPTH} x {WIDTH}, {HEADS} heads of {HEAD_DIM} ({KV_HEADS} kv), {FRAMES + 1} tokens, "
          f"{CONTEXT} context tokens, batch {BATCH}; median of {args.repeats}, interleaved\n")
    print("| piece | sa-jax ms | torch ms | torch / sa-jax |")
    print("|---|---|---|---|")
    for name, (tj, tt) in times.items():
        mj, mt = statistics.median(tj) * 1e3, statistics.median(tt) * 1e3
        print(f"| {name} | {mj:.1f} | {mt:.1f} | {mt / mj:.2f}x |")


if __name__ == "__main__":
    main()
