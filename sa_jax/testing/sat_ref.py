"""Helpers for the SAO parity tests (DiT, T5, conditioners): random weights for PyTorch
references, the relative error the tests report, and the stable-audio-tools DiT/conditioner
modules through `reference.import_reference` (which stubs the heavy optional imports)."""

from __future__ import annotations

import numpy as np


def randomize(module, seed: int = 0, skip: tuple[str, ...] = ()):
    """Give every parameter of a torch module random values of a moderate scale (the references
    zero-initialise output projections, which would hide mistakes). Names containing any of
    `skip` keep their values."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(s in name for s in skip):
                continue
            fan_in = p.shape[-1] if p.ndim > 1 else 1
            scale = 1.5 / fan_in ** 0.5 if p.ndim > 1 else 0.3
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def state_dict(module, prefix: str = "") -> dict[str, np.ndarray]:
    return {prefix + k: v.detach().float().numpy() for k, v in module.state_dict().items()}


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def sat_module(name: str):
    """A stable-audio-tools module (e.g. 'models.dit'), or skip when the package is absent.

    `models.diffusion` reaches `import k_diffusion` (through `inference/sampling.py`), whose package
    `__init__` does not import beside CPU torch; `kdiffusion_ref` puts a bare, working k_diffusion
    package in `sys.modules` first when k-diffusion is installed (otherwise `reference` stubs it)."""
    try:
        import sa_jax.testing.kdiffusion_ref  # noqa: F401
    except Exception:
        pass
    from sa_jax.testing.reference import import_reference

    return import_reference(f"stable_audio_tools.{name}")


# Stable Audio Open 1.0's model_config.json, the parts sa-jax reads (pretransform left out).
SAO_MODEL_CONFIG = {
    "model_type": "diffusion_cond",
    "sample_size": 2097152,
    "sample_rate": 44100,
    "audio_channels": 2,
    "model": {
        "conditioning": {
            "configs": [
                {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 128}},
                {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 512}},
                {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 512}},
            ],
            "cond_dim": 768,
        },
        "diffusion": {
            "cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
            "global_cond_ids": ["seconds_start", "seconds_total"],
            "type": "dit",
            "config": {
                "io_channels": 64, "embed_dim": 1536, "depth": 24, "num_heads": 24,
                "cond_token_dim": 768, "global_cond_dim": 1536, "project_cond_tokens": False,
                "transformer_type": "continuous_transformer",
            },
        },
        "io_channels": 64,
    },
}
