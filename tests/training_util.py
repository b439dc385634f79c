"""Helpers shared by the tests: a tiny pre-encoded latents corpus, a tiny run config, a tiny VAE config,
and parameter trees as lists of NumPy arrays."""

import json
from pathlib import Path

import jax
import numpy as np

RATIO, SR, DIM = 1024, 44100, 8


def write_latents(root, count: int = 6, seed: int = 0) -> Path:
    """`count` clips of structured latents (a few sinusoids per channel, 20..60 frames), in the
    layout `encode_dataset` writes, with prompts in their metadata."""
    root = Path(root)
    (root / "latents").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        frames = int(rng.integers(20, 61))
        t = np.arange(frames)[None, :]
        freq = rng.uniform(0.05, 0.4, (DIM, 1))
        z = (np.sin(2 * np.pi * freq * t + rng.uniform(0, 6, (DIM, 1))) * rng.uniform(0.5, 1.5, (DIM, 1)))
        np.save(root / "latents" / f"clip{i}.npy", z.astype(np.float32))
        rows.append({"latents": f"latents/clip{i}.npy", "relpath": f"clip{i}.wav", "samples": frames * RATIO,
                     "frames": frames, "metadata_json": json.dumps({"description": f"clip number {i}"})})
    with open(root / "index.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(root / "info.json", "w") as f:
        json.dump({"format": "sa-jax-latents", "version": 1, "sample_rate": SR, "downsampling_ratio": RATIO,
                   "latent_dim": DIM, "channels": 2, "count": count, "source": "synthetic"}, f)
    return root


def tiny_overrides(latents, run_dir, **extra) -> list[str]:
    """Overrides on configs/train_dit_tiny.yaml for a fast, deterministic test run."""
    items = {"data.path": str(latents), "checkpoint.dir": str(run_dir), "data.shard_index": 0,
             "data.shard_count": 1, "data.num_threads": 1, "log.every": 5, "checkpoint.async_save": False}
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


def leaves(tree) -> list:
    """The arrays of a (device) tree, on the host, in tree order: for bitwise comparisons of runs."""
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


# A tiny random-weight Oobleck VAE config (a few hundred parameters), 32x, 4 latent channels.
TINY_VAE = {
    "encoder": {"type": "oobleck", "config": {"in_channels": 2, "channels": 4, "c_mults": [1, 1],
                                              "strides": [4, 8], "latent_dim": 8, "use_snake": True}},
    "decoder": {"type": "oobleck", "config": {"out_channels": 2, "channels": 4, "c_mults": [1, 1],
                                              "strides": [4, 8], "latent_dim": 4, "use_snake": True,
                                              "final_tanh": False}},
    "latent_dim": 4, "downsampling_ratio": 32, "io_channels": 2, "sample_rate": SR,
}
