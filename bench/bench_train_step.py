"""Training steps per second: sa-jax's jitted train step against the stable-audio-tools model
trained the same way in PyTorch, both on this machine's CPU.

    python bench/bench_train_step.py [--steps 20] [--warmup 3] [--only unet_tiny,unet_small,dit_small,dit_sao]
    python bench/bench_train_step.py --only unet_small_xla_convs,unet_small   # the U-Net before/after, one run

Each case is one model size of one family with one batch (batch size, latent frames, context
tokens the same on both sides) and one training step at a time:

  sa-jax   sa_jax.training.diffusion.create_state + make_train_step on a one-device mesh: conditioner,
           denoiser, v-objective MSE, AdamW (clipped), EMA, the non-finite guard, all in one jit.
  torch    stable-audio-tools' UNetCFG1d (models/adp.py) or DiffusionTransformer (models/dit.py):
           the v-objective as DiffusionCondTrainingWrapper computes it (t ~ U(0, 1),
           alpha = cos(t pi / 2), sigma = sin(t pi / 2), x_t = alpha x + sigma noise,
           target = alpha noise - sigma x), CFG dropout 0.1 by the model's own argument, MSE,
           backward, gradient clipping, torch.optim.AdamW, an EMA of the weights.

The U-Net starts from the same weights on both sides (the reference's random init, imported
with sa_jax.checkpoints.unet.from_sat, which also checks the two configs agree); the DiT from
each side's own init (same shapes). The torch side gets the conditioning tensors ready-made;
sa-jax also runs its (small) conditioner: the timing embeddings, and for the DiT the text
projection. torch uses as many threads as JAX's CPU client has cores. The median over `--steps`
timed steps after `--warmup` untimed ones (the first sa-jax call compiles) is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from timing import timed  # noqa: E402

# The U-Net keys are stable-audio-tools' adp_cfg_1d config keys (UNetCFG1d's keyword arguments).
UNET_TINY = dict(in_channels=8, channels=16, multipliers=[1, 2, 2], factors=[2, 2], num_blocks=[1, 1],
                 attentions=[0, 1, 1], context_embedding_features=32, context_embedding_max_length=10,
                 attention_heads=2, attention_multiplier=2, resnet_groups=4)
UNET_SMALL = dict(in_channels=8, channels=64, multipliers=[1, 2, 2, 4], factors=[2, 2, 2], num_blocks=[2, 2, 2],
                  attentions=[0, 1, 1, 1], context_embedding_features=64, context_embedding_max_length=10,
                  attention_heads=4, attention_multiplier=2, resnet_groups=8)
# DiffusionTransformer keyword arguments; sa-jax's DiTConfig defaults (timestep features 256, SwiGLU x4,
# rotary max(head_dim / 2, 32)) are the reference's. Global vector = two number embeddings of cond_dim.
DIT_SMALL = dict(io_channels=8, embed_dim=256, depth=4, num_heads=4, cond_token_dim=64, global_cond_dim=128)

# SAO's DiT shape at reduced width (6 blocks x 384, 6 heads over 3 key/value heads) at SAO's window: 1024 frames.
DIT_SAO = dict(io_channels=64, embed_dim=384, depth=6, num_heads=6, cond_token_dim=192, global_cond_dim=384)

CASES = {
    "unet_tiny": dict(family="unet", model=UNET_TINY, batch=8, frames=32),
    "unet_small": dict(family="unet", model=UNET_SMALL, batch=8, frames=64),
    "dit_small": dict(family="dit", model=DIT_SMALL, batch=8, frames=64),
    "dit_sao": dict(family="dit", model=DIT_SAO, batch=2, frames=1024),
    # unet_small with the U-Net's convolutions left to XLA:CPU (before they ran as matrix products on the CPU)
    "unet_small_xla_convs": dict(family="unet", model=UNET_SMALL, batch=8, frames=64, xla_convs=True),
}
TEXT_TOKENS = 8      # text tokens; the U-Net's context adds the two timing tokens
LR, WEIGHT_DECAY, CLIP, EMA_DECAY, CFG_DROPOUT = 1e-3, 1e-3, 1.0, 0.999, 0.1


def sa_jax_config(case):
    from sa_jax.config import load
    from sa_jax.models.dit import DiTConfig
    from sa_jax.models.unet import config_from_dict
    from sa_jax.training import TrainConfig

    base = "configs/train_unet_tiny.yaml" if case["family"] == "unet" else "configs/train_dit_tiny.yaml"
    cfg = load(TrainConfig, ROOT / base, ["mesh.shape=[1,-1]", f"optim.lr={LR}", f"optim.weight_decay={WEIGHT_DECAY}",
                                          f"optim.clip_norm={CLIP}", f"diffusion.cfg_dropout={CFG_DROPOUT}",
                                          "optim.schedule=constant", "ema.warmup=false",
                                          f"ema.decay={EMA_DECAY}"])
    m = case["model"]
    if case["family"] == "unet":
        cfg.model.unet = config_from_dict(m)
        cfg.model.text_tokens = m["context_embedding_max_length"] - 2
        cfg.model.text_dim = m["context_embedding_features"]
    else:
        cfg.model.dit = DiTConfig(**m)
        d = m["cond_token_dim"]
        cfg.model.conditioning = dataclasses.replace(cfg.model.conditioning, cond_dim=d, text_dim=d,
                                                     max_length=TEXT_TOKENS)
        assert m["global_cond_dim"] == 2 * d
    return cfg


def random_batch(cfg, b, frames):
    """A training batch of random latents with hashed text features: the same for sa-jax's every case."""
    import jax.numpy as jnp
    import numpy as np

    from sa_jax.training import model as tm

    n, d = tm.text_shape(cfg.model)
    text, mask = tm.hash_text_features([f"prompt {i}" for i in range(b)], n, d, n // 2)
    latents = np.random.default_rng(0).standard_normal((b, cfg.model.latent_dim, frames))
    return {"latents": jnp.asarray(latents, jnp.float32), "text": jnp.asarray(text), "text_mask": jnp.asarray(mask),
            "seconds_start": jnp.zeros((b,), jnp.int32), "seconds_total": jnp.full((b,), 10, jnp.int32)}


def bench_sa_jax(case, ref_state, steps, warmup):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sa_jax.models import unet
    from sa_jax.parallel import make_mesh
    from sa_jax.training import engine
    from sa_jax.training.diffusion import create_state, make_train_step

    unet.CPU_MATMUL_CONVS = not case.get("xla_convs", False)   # read when the step is traced
    engine._CACHE.clear()   # a compiled step is cached by config: the variants share one
    cfg = sa_jax_config(case)
    mesh = make_mesh(cfg.mesh)
    state = create_state(cfg, mesh)
    if ref_state is not None:   # the reference's weights (and a check that the configs agree)
        from sa_jax.checkpoints.unet import from_sat

        den = from_sat(ref_state, cfg.model.unet, "reference UNetCFG1d")
        ours = state.params["denoiser"]
        assert jax.tree.structure(den) == jax.tree.structure(ours)
        # on the state's own shardings and dtypes: otherwise the second step compiles again
        den = jax.tree.map(lambda a, o: jax.device_put(np.asarray(a, o.dtype), o.sharding), den, ours)
        params = {**state.params, "denoiser": den}
        state = state.replace(params=params, ema=jax.tree.map(jnp.copy, params))
    batch = random_batch(cfg, case["batch"], case["frames"])
    step_fn = make_train_step(cfg, mesh)
    holder = [state]

    def one():
        holder[0], metrics = step_fn(holder[0], {}, batch)
        return float(metrics["loss"])   # waits for the step

    losses = [one() for _ in range(warmup)]
    seconds = timed(one, steps)
    n_params = sum(x.size for x in jax.tree.leaves(holder[0].params["denoiser"]))
    return seconds, losses, n_params


def torch_model(case):
    import torch

    from sa_jax.testing.reference import import_reference

    torch.manual_seed(0)
    if case["family"] == "unet":
        adp = import_reference("stable_audio_tools.models.adp")
        return adp.UNetCFG1d(**case["model"])
    dit = import_reference("stable_audio_tools.models.dit")
    return dit.DiffusionTransformer(**case["model"], project_cond_tokens=False)


def bench_torch(case, model, steps, warmup):
    import torch

    b, frames, m = case["batch"], case["frames"], case["model"]
    g = torch.Generator().manual_seed(0)
    if case["family"] == "unet":
        x = torch.randn(b, m["in_channels"], frames, generator=g)
        ctx = torch.randn(b, m["context_embedding_max_length"], m["context_embedding_features"], generator=g)
        ctx_mask = torch.ones(b, ctx.shape[1], dtype=torch.bool)
        ctx_mask[:, TEXT_TOKENS // 2:TEXT_TOKENS] = False   # padded text tokens, as the hashed text has
        kwargs = dict(embedding=ctx, embedding_mask=ctx_mask, embedding_mask_proba=CFG_DROPOUT)
    else:
        x = torch.randn(b, m["io_channels"], frames, generator=g)
        ctx = torch.randn(b, TEXT_TOKENS, m["cond_token_dim"], generator=g)
        ctx_mask = torch.ones(b, TEXT_TOKENS, dtype=torch.bool)
        glob = torch.randn(b, m["global_cond_dim"], generator=g)
        kwargs = dict(cross_attn_cond=ctx, cross_attn_cond_mask=ctx_mask, global_embed=glob,
                      cfg_dropout_prob=CFG_DROPOUT)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    ema = [p.detach().clone() for p in params]

    def one():
        t = torch.rand(b)
        alpha, sigma = torch.cos(t * math.pi / 2)[:, None, None], torch.sin(t * math.pi / 2)[:, None, None]
        noise = torch.randn_like(x)
        x_t = alpha * x + sigma * noise
        target = alpha * noise - sigma * x
        loss = torch.nn.functional.mse_loss(model(x_t, t, **kwargs), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1 - EMA_DECAY)
        return float(loss.detach())

    losses = [one() for _ in range(warmup)]
    seconds = timed(one, steps)
    return seconds, losses, sum(p.numel() for p in params)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", default=",".join(CASES), help="comma-separated cases: " + ", ".join(CASES))
    ap.add_argument("--cores", type=int, default=0, help="pin this process to its first N allowed cores (0: all)")
    args = ap.parse_args()
    if args.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
    # OpenMP threads that spin while waiting collapse when the cores are shared with other work (2 torch
    # threads ran a step 50x slower than 1 here under load); passive waiting keeps torch's numbers usable.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import jax
    import torch

    threads = len(os.sched_getaffinity(0))   # XLA's CPU thread pool uses every core this process may run on
    torch.set_num_threads(threads)
    rows = []
    for name in args.only.split(","):
        case = CASES[name]
        model = torch_model(case)
        ref_state = None
        if case["family"] == "unet":
            ref_state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        j_s, j_loss, j_n = bench_sa_jax(case, ref_state, args.steps, args.warmup)
        t_s, t_loss, t_n = bench_torch(case, model, args.steps, args.warmup)
        rows.append((name, case, j_n, t_n, 1 / j_s, 1 / t_s))
        print(f"{name}: sa-jax {1 / j_s:.2f} steps/s (warm-up losses {', '.join(f'{v:.3f}' for v in j_loss)}), "
              f"torch {1 / t_s:.2f} steps/s (warm-up losses {', '.join(f'{v:.3f}' for v in t_loss)})", flush=True)

    print(f"\nCPU, {threads} cores (torch threads = {threads}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}); "
          f"jax {jax.__version__}, torch {torch.__version__}; "
          f"median of {args.steps} steps after {args.warmup} warm-up steps\n")
    print("| case | denoiser params (sa-jax / torch) | batch x frames | sa-jax steps/s | torch steps/s | ratio |")
    print("|---|---|---|---|---|---|")
    for name, case, j_n, t_n, j, t in rows:
        print(f"| {name} | {j_n / 1e6:.2f} M / {t_n / 1e6:.2f} M | {case['batch']} x {case['frames']} | "
              f"{j:.2f} | {t:.2f} | {j / t:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
