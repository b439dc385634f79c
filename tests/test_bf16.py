"""bfloat16 inference (issue 24, item 2): `StableAudio.load(path, dtype="bfloat16")` holds the denoiser's and
the text encoder's weights in bfloat16 (matrices, kernels and tables; vectors stay float32), LoRA adapters
are merged in float32 before the cast, the VAE has its own `vae_dtype` (float32 by default), a model held
in bfloat16 is not saved, and `sa-jax sample --dtype bfloat16 --vae-dtype bfloat16` runs. On tiny random
models (test_lora_pipeline.tiny_model): the weights of both families, generation with the SAO one.

The bound on the sampled latents, relative to float32 (RMS ||a - b|| / ||b||): measured on these tiny
models with 4 dpmpp-3m-sde steps, seeds 0-2, at most 0.028 (sao) and 0.046 (sa1) (peak 0.054 and 0.086).
bfloat16 keeps 8 bits of mantissa (unit roundoff 3.9e-3); a random network sampled from sigma 500 in a few
SDE steps amplifies that about tenfold, as it does on the shipped model (8 steps: 0.067 RMS, 30 steps: 0.011;
bench/bench_bf16.py, bench/RESULTS.md). The bound, 0.1, leaves twice the worst measured for other CPUs'
rounding; a real defect (weights rounded before the LoRA merge, the wrong tree cast, NaN) moves them by O(1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_lora_pipeline import make_adapter, tiny_model

from sa_jax import StableAudio
from sa_jax.cli import main as cli
from sa_jax.errors import ConfigError

PROMPT = "rain on the roof"
SAMPLING = {"steps": 4, "seed": 0}
LATENT_RMS_BOUND = 0.1   # measured at most 0.046 (see the module docstring)


def rms_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def nbytes(tree) -> int:
    return sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(tree))


def _saved(family: str, root):
    model = tiny_model(family)
    return model.save(root / "base"), model, root


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny SAO model, saved (the generation tests run this family: T5 + DiT)."""
    return _saved("sao", tmp_path_factory.mktemp("bf16-sao"))


@pytest.mark.parametrize("family", ["sao", "sa1"])
def test_weights_held_in_bfloat16(family, tmp_path):
    folder, _, _ = _saved(family, tmp_path)
    f32, bf16 = StableAudio.load(folder), StableAudio.load(folder, dtype="bfloat16")
    held = bf16.family
    for tree in (held.trainable()["denoiser"], held.text_encoder.params):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            want = jnp.bfloat16 if leaf.ndim >= 2 else jnp.float32
            assert leaf.dtype == want, (jax.tree_util.keystr(path), leaf.dtype)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(held.trainable()["conditioner"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(bf16.autoencoder.params))
    assert bf16.autoencoder.dtype == "float32" and held.weights_dtype == "bfloat16"
    assert StableAudio.load(folder, dtype="bfloat16", vae_dtype="bfloat16").autoencoder.dtype == "bfloat16"
    # counted in elements: the helper's random text encoder arrives in float64, a real one in float32
    leaves = jax.tree_util.tree_leaves((f32.family.trainable()["denoiser"], f32.family.text_encoder.params))
    before = sum(4 * x.size for x in leaves)
    after = nbytes((held.trainable()["denoiser"], held.text_encoder.params))
    print(f"{held.name}: denoiser + text encoder {before} -> {after} bytes ({after / before:.3f})")
    assert after == sum((2 if x.ndim >= 2 else 4) * x.size for x in leaves) and after < 0.52 * before


def test_bfloat16_latents_within_bound(saved):
    folder, _, _ = saved
    f32, bf16 = StableAudio.load(folder), StableAudio.load(folder, dtype="bfloat16")
    for seed in (0, 1):
        ref = f32.generate_latents([PROMPT], steps=4, seed=seed)
        got = bf16.generate_latents([PROMPT], steps=4, seed=seed)
        err = rms_err(got, ref)
        print(f"seed {seed}: bfloat16 latents vs float32, RMS relative {err:.3f}")
        assert np.all(np.isfinite(got)) and err < LATENT_RMS_BOUND


def test_lora_merged_in_float32_before_the_cast(saved):
    folder, model, root = saved
    adapter, _ = make_adapter(model, root / "adapter", seed=1)
    merged32 = StableAudio.load(folder, lora=[adapter]).family.trainable()["denoiser"]
    held = StableAudio.load(folder, lora=[adapter], dtype="bfloat16").family.trainable()["denoiser"]
    for a, b in zip(jax.tree_util.tree_leaves(held), jax.tree_util.tree_leaves(merged32)):
        assert a.dtype == (jnp.bfloat16 if b.ndim >= 2 else jnp.float32)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(a.dtype)))   # cast(merge), bit for bit


def test_a_bfloat16_model_is_not_saved(saved, tmp_path):
    folder, _, _ = saved
    with pytest.raises(ConfigError, match="dtype='float32' to save"):
        StableAudio.load(folder, dtype="bfloat16").save(tmp_path / "rounded")
    assert not (tmp_path / "rounded").exists()


def test_sample_command_dtype_flags(saved, tmp_path):
    """`--dtype bfloat16` keeps the VAE in float32; `--vae-dtype bfloat16` switches the decoder alone: the
    same latents decoded in bfloat16 (measured 5e-3 RMS from the float32 decode on this tiny VAE)."""
    import soundfile as sf

    folder, _, _ = saved
    runs = {}
    for name, flags in (("bf16", ["--dtype", "bfloat16"]), ("bf16-vae", ["--dtype", "bfloat16", "--vae-dtype",
                                                                         "bfloat16"])):
        out = tmp_path / f"{name}.wav"
        assert cli(["sample", PROMPT, "--model", str(folder), "--steps", "4", "--out", str(out), *flags]) == 0
        runs[name] = sf.read(out, dtype="float32")[0]
    decoder = rms_err(runs["bf16-vae"], runs["bf16"])
    print(f"audio: decoder in bfloat16 vs float32 {decoder:.1e}")
    assert np.all(np.isfinite(runs["bf16-vae"])) and 0 < decoder < LATENT_RMS_BOUND


def test_flash_attention_only_where_it_applies(monkeypatch):
    """cuDNN flash attention is tried on a GPU in half precision without bias or mask; where cuDNN refuses
    while tracing (here: no cuDNN at all) XLA's attention runs, with the same result."""
    from sa_jax.nn import attention as att

    q, k, v = (jax.random.normal(jax.random.key(i), (2, 16, 4, 64), jnp.bfloat16) for i in range(3))
    assert not att.flash_applies(q)   # the CPU
    xla = att.attention(q, k, v)
    monkeypatch.setattr(att.jax, "default_backend", lambda: "gpu")
    assert att.flash_applies(q)
    assert not att.flash_applies(q.astype(jnp.float32))
    assert not att.flash_applies(q, mask=jnp.ones((1, 1, 16, 16), bool))
    assert not att.flash_applies(jnp.zeros((2, 16, 4, 12), jnp.bfloat16))   # head dim not a multiple of 8
    np.testing.assert_array_equal(np.asarray(att.attention(q, k, v), np.float32), np.asarray(xla, np.float32))


def test_inpaint_and_continue_take_vae_dtype(saved, tmp_path, monkeypatch):
    """`sa-jax inpaint` / `sa-jax continue --vae-dtype bfloat16` (sample's flag, one definition) load the model with
    the VAE alone in bfloat16 (what that does to the audio: test_sample_command_dtype_flags; an inpainting run so,
    the input encoded and the result decoded in bfloat16, measured 4.6e-3 RMS from the float32 VAE's here), and
    an inpainting run so gives finite audio of the input's length."""
    import soundfile as sf

    folder, _, _ = saved
    t = np.arange(1764) / 44100   # 0.04 s: this tiny model's window is 32 frames of 32 samples
    src = tmp_path / "in.wav"
    sf.write(src, 0.3 * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1), 44100)
    out = tmp_path / "inpainted.wav"
    inpaint = ["inpaint", str(src), str(out), "--start", "0.01", "--end", "0.02", "--prompt", PROMPT,
               "--model", str(folder), "--steps", "4"]
    continue_ = ["continue", str(src), str(tmp_path / "continued.wav"), "--seconds", "0.01", "--prompt", PROMPT,
                 "--model", str(folder)]
    loads, load = [], StableAudio.load

    def recording(*args, **kwargs):
        loads.append((kwargs["dtype"], kwargs["vae_dtype"]))
        if len(loads) < 3:
            raise ValueError("recorded")   # the command stops here (exit 2), nothing run
        return load(*args, **kwargs)

    monkeypatch.setattr(StableAudio, "load", recording)
    assert cli(continue_ + ["--vae-dtype", "bfloat16"]) == 2 and cli(continue_ + ["--dtype", "bfloat16"]) == 2
    assert cli(inpaint + ["--vae-dtype", "bfloat16"]) == 0
    assert loads == [("float32", "bfloat16"), ("bfloat16", "float32"), ("float32", "bfloat16")]
    audio = sf.read(out, dtype="float32")[0]
    assert audio.shape == (1764, 2) and np.all(np.isfinite(audio)) and np.abs(audio).max() > 0
