"""Helpers for the training tests: a tiny pre-encoded latents corpus and a tiny run config."""

import json
from pathlib import Path

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
