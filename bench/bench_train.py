"""Lower and compile a full-size train step for an FSDP mesh without running it; report the
per-device memory analysis and the compiled FLOP count.

    python bench/bench_train.py --config configs/train_unet_sa1.yaml --devices 8 --batch 8 [key=value ...]

With --devices N on a CPU host, N devices are simulated (XLA_FLAGS is set before JAX starts).
Parameters, optimiser state and EMA are abstract (jax.eval_shape): nothing is allocated.
"""

import argparse
import json
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/train_unet_sa1.yaml")
    ap.add_argument("--devices", type=int, default=8, help="simulated CPU devices (0: use what is there)")
    ap.add_argument("--batch", type=int, default=8, help="global batch")
    ap.add_argument("--frames", type=int, default=None, help="latent frames (default: the config's window)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.devices:
        flag = f"--xla_force_host_platform_device_count={args.devices}"
        os.environ["XLA_FLAGS"] = f"{flag} {os.environ.get('XLA_FLAGS', '')}"
    import jax
    import jax.numpy as jnp

    from sa_jax.config import load
    from sa_jax.parallel import batch_sharding, make_mesh
    from sa_jax.training import TrainConfig
    from sa_jax.training import model as tm
    from sa_jax.training.diffusion import make_train_step, state_shardings
    from sa_jax.training.engine import memory_report, step_flops

    cfg = load(TrainConfig, args.config, ["mesh.shape=[1,-1]", *args.overrides])
    mesh = make_mesh(cfg.mesh)
    abstract, shardings = state_shardings(cfg, mesh)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(abstract.params))
    ratio = 1024 if cfg.model.family == "sa1" else 2048
    frames = args.frames or cfg.data.latent_window or cfg.data.window // ratio
    n, d = tm.text_shape(cfg.model)
    bs = batch_sharding(mesh, cfg.mesh)
    B = args.batch
    sds = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=bs)
    batch = {"latents": sds((B, cfg.model.latent_dim, frames), jnp.float32), "text": sds((B, n, d), jnp.float32),
             "text_mask": sds((B, n), jnp.bool_), "seconds_start": sds((B,), jnp.int32),
             "seconds_total": sds((B,), jnp.int32)}
    t = time.time()
    lowered = make_train_step(cfg, mesh).lower(state, {}, batch)   # no frozen encoders: features given
    t_lower = time.time() - t
    compiled = lowered.compile()
    t_compile = time.time() - t - t_lower
    flops = step_flops(compiled)
    report = {"config": args.config, "family": cfg.model.family, "params": int(n_params),
              "mesh": dict(mesh.shape), "global_batch": B, "frames": frames, "dtype": cfg.model.compute_dtype,
              "lower_s": round(t_lower, 1), "compile_s": round(t_compile, 1), "flops_per_device_per_step": flops,
              "memory": memory_report(compiled)}
    print("RESULT " + json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
