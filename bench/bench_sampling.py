"""Per-step cost of sa-jax's jitted sampling loop against one call of the same denoiser, and the same
sampler in k-diffusion on torch CPU, in one run. Prints a markdown table with the ratios.

    .venv/bin/python bench/bench_sampling.py                  # 50 steps, latents 1 x 256 x 64, MLP 256 wide
    .venv/bin/python bench/bench_sampling.py --hidden 1024 --length 1024 --samplers dpmpp-2m

The model is a small v-model (a per-frame two-layer MLP with the time mixed in) wrapped by each side's
own VDenoiser. "denoiser call" times one separate call (for sa-jax: one jitted call, dispatch included);
"per step" is a whole sampling run divided by its steps; "overhead/step" is per step minus NFE/step
denoiser calls: what the solver and loop add. Times are medians over --repeats runs after a warm-up
(sa-jax's first run compiles; that time is reported apart). k-diffusion's SDE samplers use their default
Brownian-tree noise, as stable-audio-tools does. Needs k-diffusion (bash setup.sh test).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from timing import timed

# name -> (k-diffusion function, denoiser evaluations per step; the last step may use fewer)
SAMPLERS = {
    "euler": ("sample_euler", 1),
    "heun": ("sample_heun", 2),
    "dpmpp-2m": ("sample_dpmpp_2m", 1),
    "dpmpp-2m-sde": ("sample_dpmpp_2m_sde", 1),
    "dpmpp-3m-sde": ("sample_dpmpp_3m_sde", 1),
    "lms": ("sample_lms", 1),
}



def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=256, help="latent frames")
    parser.add_argument("--channels", type=int, default=64, help="latent channels")
    parser.add_argument("--hidden", type=int, default=256, help="MLP width")
    parser.add_argument("--samplers", default="euler,heun,dpmpp-2m,dpmpp-3m-sde,lms")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for torch and XLA:CPU (1 by default: these tensors are small, and on a "
                             "shared machine more threads mostly wait on each other)")
    args = parser.parse_args()
    if args.threads == 1:  # must be set before jax is imported
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    names = args.samplers.split(",")
    unknown = [n for n in names if n not in SAMPLERS]
    if unknown:
        parser.error(f"unknown sampler(s) {unknown}; choose from {', '.join(SAMPLERS)}")

    import jax
    import jax.numpy as jnp
    import torch
    from jax.tree_util import Partial

    from sa_jax.diffusion import get_sigmas, sample, v_denoiser
    from sa_jax.testing.kdiffusion_ref import K  # the k-diffusion sampling modules without the package's heavy imports

    if K is None:
        sys.exit("k-diffusion is not installed: bash setup.sh test")
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    w1 = (rng.normal(size=(args.channels, args.hidden)) / np.sqrt(args.channels)).astype(np.float32)
    w2 = (rng.normal(size=(args.hidden, args.channels)) / np.sqrt(args.hidden)).astype(np.float32)
    u = rng.normal(size=(args.hidden,)).astype(np.float32)
    shape = (args.batch, args.length, args.channels)

    def jax_model(params, x, t):
        w1, w2, u = params
        return jnp.tanh(x @ w1 + t[:, None, None] * u) @ w2 + 0.1 * x

    t_w1, t_w2, t_u = (torch.from_numpy(a) for a in (w1, w2, u))

    def torch_model(x, t):
        return torch.tanh(x @ t_w1 + t[:, None, None] * t_u) @ t_w2 + 0.1 * x

    denoise = v_denoiser(Partial(jax_model, tuple(jnp.asarray(a) for a in (w1, w2, u))))
    ref_denoise = K.external.VDenoiser(torch_model)
    sigmas = get_sigmas("polyexponential", args.steps, sigma_min=0.3, sigma_max=500.0)
    sigmas_t = torch.from_numpy(np.array(sigmas))
    x = jnp.asarray(rng.normal(size=shape).astype(np.float32)) * sigmas[0]
    x_t = torch.from_numpy(np.array(x))

    one_call = jax.jit(lambda d, x, s: d(x, s))
    s_batch = jnp.full((args.batch,), 1.0)
    one_call(denoise, x, s_batch).block_until_ready()
    t_call = timed(lambda: one_call(denoise, x, s_batch).block_until_ready(), args.repeats * 20)
    empty = jax.jit(lambda x: x)
    empty(x).block_until_ready()
    t_dispatch = timed(lambda: empty(x).block_until_ready(), args.repeats * 20)
    with torch.no_grad():
        s_batch_t = torch.full((args.batch,), 1.0)
        t_call_ref = timed(lambda: ref_denoise(x_t, s_batch_t), args.repeats * 20)

    rows = []
    for name in names:
        fn_name, nfe = SAMPLERS[name]
        run = lambda: sample(denoise, x, sigmas, name, key=jax.random.key(0)).block_until_ready()
        start = time.perf_counter()
        run()
        first = time.perf_counter() - start
        t_run = timed(run, args.repeats)
        ref_fn = getattr(K.sampling, fn_name)
        with torch.no_grad():
            t_ref = timed(lambda: ref_fn(ref_denoise, x_t, sigmas_t, disable=True), max(1, args.repeats // 2))
        rows.append((name, nfe, t_run / args.steps, first, t_ref / args.steps))

    print(f"Sampling loop, {args.steps} steps, latents {args.batch} x {args.length} x {args.channels}, "
          f"MLP v-model width {args.hidden}; {cpu_name()}, {os.cpu_count()} cores, threads {args.threads}, "
          f"jax {jax.__version__} on {jax.default_backend()}, torch {torch.__version__}")
    print(f"One denoiser call: sa-jax (jitted) {t_call * 1e3:.3f} ms (of which dispatching a jitted call: "
          f"{t_dispatch * 1e3:.3f} ms), k-diffusion VDenoiser {t_call_ref * 1e3:.3f} ms")
    print()
    print("| sampler | NFE/step | sa-jax per step ms | sa-jax overhead/step ms | step / call | "
          "k-diffusion per step ms | k-diffusion overhead/step ms | step / call | sa-jax speedup | "
          "sa-jax first run (compile) s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, nfe, step, first, step_ref in rows:
        print(f"| {name} | {nfe} | {step * 1e3:.3f} | {(step - nfe * t_call) * 1e3:+.3f} | {step / t_call:.2f} | "
              f"{step_ref * 1e3:.3f} | {(step_ref - nfe * t_call_ref) * 1e3:+.3f} | {step_ref / t_call_ref:.2f} | "
              f"{step_ref / step:.1f}x | {first:.2f} |")


if __name__ == "__main__":
    main()
