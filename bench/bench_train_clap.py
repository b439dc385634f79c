"""CLAP train steps per second on CPU: sa-jax's train step (sa_jax.training.clap: forward in training
mode, symmetric contrastive loss, gradients, AdamW, BatchNorm statistics) against the torch reference
step (transformers' ClapModel with return_loss=True, backward, torch.optim.AdamW), same small
config, same initial weights, same batch, same machine, one run. Prints a table with the ratio.

    .venv/bin/python bench/bench_train_clap.py                       # the tiny config's sizes, batch 16
    .venv/bin/python bench/bench_train_clap.py --width 2 --batch 32   # twice as wide

Times are medians over --steps steps after a warm-up (sa-jax's first call compiles; that time is
reported apart). Features are random log-mel-like arrays given to both sides (the host feature
computation is not part of either step). transformers' loss scores the text->audio direction twice
(with both logit scales) where ours is LAION's symmetric loss: the same work, different numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from timing import timed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=1, help="multiplies the tiny config's widths")
    parser.add_argument("--tokens", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import jax
    import torch
    import transformers

    from sa_jax.checkpoints.clap import import_hf_clap
    from sa_jax.data.config import DataConfig
    from sa_jax.models.clap import ClapConfig
    from sa_jax.parallel import batch_sharding, global_batch, make_mesh
    from sa_jax.training.clap import ClapTrainConfig, compiled_train_step, create_state
    from sa_jax.training.config import MeshConfig, OptimConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    w = args.width
    hf = transformers.ClapConfig(
        text_config=dict(vocab_size=128, hidden_size=32 * w, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64 * w, max_position_embeddings=80, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, hidden_act="gelu"),
        audio_config=dict(window_size=4, num_mel_bins=16, spec_size=32, patch_embeds_hidden_size=16 * w,
                          depths=[2, 2], num_attention_heads=[2, 4], hidden_size=32 * w, drop_path_rate=0.0),
        projection_dim=32 * w)
    ref = transformers.ClapModel(hf).train()
    config = ClapConfig.from_hf(ref.config.to_dict())
    n_params = sum(p.numel() for p in ref.parameters())

    rng = np.random.default_rng(0)
    B, L = args.batch, args.tokens
    ids = rng.integers(5, 128, (B, L)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    mask = np.ones((B, L), bool)
    feats = (rng.normal(size=(B, 1, 63, 16)) * 10 - 40).astype(np.float32)
    longer = np.zeros(B, bool)

    # torch reference step
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-4, betas=(0.9, 0.99), eps=1e-9, weight_decay=1e-2)
    t_ids, t_mask = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
    t_feats, t_longer = torch.from_numpy(feats), torch.from_numpy(longer[:, None])
    initial = {k: v.detach().float().numpy().copy() for k, v in ref.state_dict().items()}

    def torch_step():
        opt.zero_grad(set_to_none=True)
        loss = ref(input_ids=t_ids, attention_mask=t_mask, input_features=t_feats, is_longer=t_longer,
                   return_loss=True).loss
        loss.backward()
        opt.step()
        return float(loss)

    # sa-jax step, same initial weights
    cfg = ClapTrainConfig(model=config, data=DataConfig(sample_rate=config.features.sample_rate, channels=1,
                                                        window=16000, batch_size=B),
                          optim=OptimConfig(lr=1e-4, b1=0.9, b2=0.99, eps=1e-9, weight_decay=1e-2,
                                            schedule="constant"),
                          mesh=MeshConfig(shape=(1, -1)), steps=1000)
    mesh = make_mesh(cfg.mesh)
    state = create_state(cfg, cfg.steps, mesh)
    variables = import_hf_clap(initial, config)
    state = state.replace(params=jax.device_put(variables["params"]),
                          batch_stats=jax.device_put(variables["batch_stats"]))
    batch = global_batch({"input_ids": ids, "attention_mask": mask, "features": feats, "is_longer": longer},
                         batch_sharding(mesh, cfg.mesh))
    t0 = time.perf_counter()
    step = compiled_train_step(cfg, cfg.steps, mesh, state, batch)
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def jax_step():
        holder["state"], m = step(holder["state"], batch)
        return float(m["loss"])

    first_torch = torch_step()
    first_jax = jax_step()
    t_torch = timed(torch_step, args.steps)
    t_jax = timed(jax_step, args.steps)

    print(f"CLAP train step, CPU: batch {B}, {L} tokens, 63 x 16 log-mel frames; {n_params / 1e6:.2f}M parameters "
          f"(text {32 * w} wide x 2 layers, HTSAT width {16 * w}, depths 2-2); median of {args.steps} steps")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}, "
          f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    print(f"first losses: torch {first_torch:.4f} (transformers' loss), sa-jax {first_jax:.4f} (LAION's symmetric)")
    print()
    print("| implementation | s / step | steps / s | vs torch |")
    print("|---|---|---|---|")
    print(f"| torch: transformers ClapModel(return_loss=True) + AdamW | {t_torch:.4f} | {1 / t_torch:.2f} | 1.00x |")
    print(f"| sa-jax: sa_jax.training.clap train step (jit) | {t_jax:.4f} | {1 / t_jax:.2f} | "
          f"{t_torch / t_jax:.2f}x |")
    print(f"\nsa-jax compile (once): {compile_s:.1f} s")


if __name__ == "__main__":
    main()
