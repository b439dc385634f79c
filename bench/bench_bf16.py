"""bfloat16 inference against float32: how far the latents and the audio move, and the weights' memory.

    .venv/bin/python bench/bench_bf16.py [--steps 20] [--frames 256] [--seeds 0,1]

Models:
* a random Stable-Audio-Open-shaped model at reduced width: DiT 6 blocks x 384 wide (6 heads of 64 over 3
  key/value heads; SAO's cross-attention, timing and 64 latent channels), a random T5 at t5-base's shape and
  SAO's Oobleck VAE at its full widths; a window of `--frames` latent frames (256: 11.9 s). Weights are
  filled on the host (matrices ~ N(0, 1/fan_in), norm scales ~ 1, the rest small) so every layer takes part,
  also those a real initialisation zeroes;
* the small model shipped with sa-jax (Stable Audio 1.0 U-Net, its trained weights), its 8.9 s window.

Each prompt and seed is generated with `StableAudio.load(path)` (float32), `dtype="bfloat16"` (weights held
and the denoiser run in bfloat16, VAE float32: the default) and `dtype="bfloat16", vae_dtype="bfloat16"`,
same seed, same sampler (the model's default, dpmpp-3m-sde), and `--steps` steps. Errors are relative to
float32: max |a - b| / max |b| (peak) and ||a - b|| / ||b|| (RMS), the worst over prompts and seeds; the
decoder's own share is the float32 latents decoded in bfloat16. Memory: bytes of the held denoiser and text
encoder trees in each dtype, counted leaf by leaf, for these two models and (from shapes alone, nothing
allocated) for Stable Audio Open 1.0's DiT + T5-base.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["A warm plucked string playing a steady melody in C major at 120 BPM, loud.",
           "A soft sine pad holding a chord in A minor, quiet."]


def random_params(module, *inputs, seed: int):
    """Random float32 parameters for a Flax module, filled on the host from its parameter shapes."""
    import jax

    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if len(leaf.shape) >= 2:
            noise = noise / np.sqrt(np.prod(leaf.shape[:-1]))
        else:
            noise = 1.0 + 0.05 * noise if str(path[-1].key) in ("scale", "gamma") else 0.05 * noise
        return noise.astype(np.float32)   # (numpy's float64 sqrt would promote)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def sao_shaped(folder: Path, frames: int) -> Path:
    """Save the random SAO-shaped model (see the module docstring) as an sa-jax checkpoint."""
    import jax.numpy as jnp

    from sa_jax import Autoencoder, StableAudio
    from sa_jax.config import resolve_config
    from sa_jax.encoders import T5TextEncoder
    from sa_jax.families import SamplingDefaults
    from sa_jax.families.sao import SAOFamily
    from sa_jax.models.conditioners import ConditioningConfig, SAOConditioner
    from sa_jax.models.dit import DiT, DiTConfig
    from sa_jax.models.t5 import T5Config, T5Encoder
    from sa_jax.text_tokenizer import build_word_tokenizer

    tok = build_word_tokenizer([" ".join(PROMPTS)], model_max_length=128)
    t5 = T5Config()   # t5-base's shape
    ids, mask, z = jnp.zeros((1, 128), jnp.int32), jnp.ones((1, 128), bool), jnp.zeros((1,))
    text = T5TextEncoder(t5, random_params(T5Encoder(t5), ids, mask, seed=0), tok, 128)
    cond = ConditioningConfig()
    dit = DiTConfig(embed_dim=384, depth=6, num_heads=6, num_kv_heads=3)   # SAO groups 2 query heads a key head
    fam = SAOFamily(dit, random_params(DiT(dit), jnp.zeros((1, 64, 32)), z, jnp.zeros((1, 130, 768)),
                                       jnp.zeros((1, 1536)), seed=1),
                    cond, random_params(SAOConditioner(cond), jnp.zeros((1, 128, 768)), mask, z, z, seed=2), text)
    vae = Autoencoder.from_config(resolve_config("vae_sao"), seed=3)
    sa = StableAudio(fam, vae, frames * vae.downsampling_ratio, SamplingDefaults())
    return sa.save(folder)


def held_bytes(sa) -> int:
    """Bytes of the denoiser's and the text encoder's weights as the model holds them."""
    import jax

    trees = (sa.family.trainable()["denoiser"], sa.family.text_encoder.params)
    return sum(leaf.nbytes for tree in trees for leaf in jax.tree_util.tree_leaves(tree))


def sao_release_bytes() -> dict[str, int]:
    """Stable Audio Open 1.0's DiT + T5-base, float32 and as `hold_weights("bfloat16")` keeps them, from
    their shapes (jax.eval_shape: nothing is allocated)."""
    import jax
    import jax.numpy as jnp

    from sa_jax.models.dit import DiT, DiTConfig
    from sa_jax.models.t5 import T5Config, T5Encoder

    dit = jax.eval_shape(lambda: DiT(DiTConfig()).init(jax.random.key(0), jnp.zeros((1, 64, 32)), jnp.zeros((1,)),
                                                       jnp.zeros((1, 130, 768)), jnp.zeros((1, 1536))))
    t5 = jax.eval_shape(lambda: T5Encoder(T5Config()).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
    leaves = jax.tree_util.tree_leaves((dit, t5))
    f32 = sum(int(np.prod(x.shape)) * 4 for x in leaves)
    bf16 = sum(int(np.prod(x.shape)) * (2 if len(x.shape) >= 2 else 4) for x in leaves)
    return {"float32": f32, "bfloat16": bf16}


def errors(a, b) -> tuple[float, float]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max()), float(np.linalg.norm(a - b) / np.linalg.norm(b))


def compare(name: str, path, steps: int, seeds: list[int]) -> dict:
    """Worst errors of each load against float32; one model in memory at a time."""
    import gc

    from sa_jax import StableAudio

    loads = {"float32": {}, "bfloat16": {"dtype": "bfloat16"},
             "bfloat16 + VAE bfloat16": {"dtype": "bfloat16", "vae_dtype": "bfloat16"}}
    runs, seconds, held, decoder = {}, {}, {}, [0.0, 0.0]
    for k, kw in loads.items():
        sa = StableAudio.load(path, **kw)
        runs[k] = []
        for seed in seeds:
            for prompt in PROMPTS:
                start = time.perf_counter()
                lat = sa.generate_latents([prompt], steps=steps, seed=seed)
                runs[k].append((lat, sa.autoencoder.decode(lat)))
                seconds[k] = time.perf_counter() - start   # the last: compiled
        if k == "bfloat16 + VAE bfloat16":   # the decoder's own share: float32 latents decoded in bfloat16
            for lat32, audio32 in runs["float32"]:
                decoder = [max(w, e) for w, e in zip(decoder, errors(sa.autoencoder.decode(lat32), audio32))]
        held[k], window = held_bytes(sa), sa.window_seconds
        del sa
        gc.collect()
    worst = {}
    for k, outs in runs.items():
        worst[k] = [0.0] * 4   # latents peak, RMS; audio peak, RMS
        for (lat, audio), (lat32, audio32) in zip(outs, runs["float32"]):
            worst[k] = [max(w, e) for w, e in zip(worst[k], errors(lat, lat32) + errors(audio, audio32))]
    return {"name": name, "worst": worst, "decoder": decoder, "seconds": seconds, "bytes": held, "window": window}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--frames", type=int, default=256, help="window of the SAO-shaped model in latent frames")
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = sao_shaped(Path(tmp) / "sao-shaped", args.frames)
        results.append(compare("random SAO-shaped (DiT 6 x 384, T5-base shape, SAO VAE)", folder, args.steps, seeds))
    results.append(compare("shipped small model (SA 1.0 U-Net, trained)", None, args.steps, seeds))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; dpmpp-3m-sde, "
          f"{args.steps} steps, CFG the model's default; prompts {len(PROMPTS)} x seeds {seeds}; errors relative "
          "to float32, the worst over prompts and seeds\n")
    print("| model | window s | load | latents peak | latents RMS | audio peak | audio RMS | s per clip (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for k, w in r["worst"].items():
            if k == "float32":
                cells = "- | - | - | -"
            else:
                cells = " | ".join(f"{e:.1e}" for e in w)
            print(f"| {r['name']} | {r['window']:.1f} | {k} | {cells} | {r['seconds'][k]:.1f} |")
        print(f"| {r['name']} | {r['window']:.1f} | VAE decoder alone in bfloat16 (float32 latents) | - | - | "
              f"{r['decoder'][0]:.1e} | {r['decoder'][1]:.1e} | - |")
    print("\n| weights held (denoiser + text encoder) | float32 MiB | bfloat16 MiB | ratio |")
    print("|---|---|---|---|")
    rows = [(r["name"], r["bytes"]["float32"], r["bytes"]["bfloat16"]) for r in results]
    sao = sao_release_bytes()
    rows.append(("Stable Audio Open 1.0 DiT + T5-base (from shapes)", sao["float32"], sao["bfloat16"]))
    for name, f32, bf16 in rows:
        print(f"| {name} | {f32 / 2**20:.1f} | {bf16 / 2**20:.1f} | {bf16 / f32:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
