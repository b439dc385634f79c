"""Each prompt's audio is the same whatever it is batched with and over how many devices (issue 24, item 5):
item n of a run draws its starting noise and every SDE step's noise from (seed, n) alone.

On a tiny random SAO model (T5 + DiT + Oobleck, 32 latent frames) with the default SDE sampler
(dpmpp-3m-sde, so the per-step noise is exercised): `sa-jax sample --prompts-file F --batch-size 2` (8 items)
with --max-batch 1 against --max-batch 4, and the same command in a process with 8 simulated CPU devices and
--max-batch 8 (the 8 items sharded one per device); `generate(first_item=n)` alone against a batch.
What differs between batch shapes is float rounding only (XLA's kernels may block a batch of 1 and of 8
differently), amplified by sampling from sigma 500: measured 1.3e-7 of the peak on the audio and 1.8e-6 on
the latents, bounded at 1e-5 (a different item's noise moves the latents by about 1, the audio by 2e-3)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from test_lora_pipeline import tiny_model

from sa_jax.cli import main as cli

PROMPTS = ["rain on the roof", "bright bells", "soft piano", "dark bass"]
SAMPLING = {"steps": 4, "seed": 11}
BOUND = 1e-5   # relative to the peak; measured 1.3e-7 (audio), 1.8e-6 (latents)


def peak_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    sa = tiny_model("sao")
    folder = sa.save(tmp_path_factory.mktemp("invariance") / "tiny-sao")
    return sa, folder


def _wavs(folder) -> dict[str, np.ndarray]:
    import soundfile as sf

    return {p.name: sf.read(p, dtype="float32")[0] for p in sorted(folder.glob("*.wav"))}


@pytest.mark.slow   # moved out of the default run for its time (~45s on 2 AVX2 cores); run with -m slow
def test_sample_command_same_wavs_for_any_max_batch_and_device_count(model, tmp_path):
    _, folder = model
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    common = ["sample", "--model", str(folder), "--prompts-file", str(prompts), "--batch-size", "2",
              "--steps", str(SAMPLING["steps"]), "--seed", str(SAMPLING["seed"])]
    outs = {}
    for max_batch in (1, 4):
        outs[max_batch] = tmp_path / f"max{max_batch}"
        assert cli(common + ["--max-batch", str(max_batch), "--out", str(outs[max_batch])]) == 0
    eight = tmp_path / "devices8"
    script = ("import jax, sys; assert len(jax.devices()) == 8, jax.devices(); from sa_jax.cli import main; "
              "sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", script, *common, "--max-batch", "8", "--out", str(eight)], check=True,
                   env=env, timeout=600)

    one, four, sharded = _wavs(outs[1]), _wavs(outs[4]), _wavs(eight)
    assert len(one) == 8 and one.keys() == four.keys() == sharded.keys()
    for name, ref in one.items():
        e4, e8 = peak_err(four[name], ref), peak_err(sharded[name], ref)
        print(f"{name}: --max-batch 4 {e4:.1e}, 8 devices --max-batch 8 {e8:.1e}")
        assert e4 < BOUND and e8 < BOUND
    # the two variations of a prompt are different clips
    assert peak_err(one["000_rain-on-the-roof_1.wav"], one["000_rain-on-the-roof_0.wav"]) > 100 * BOUND


def test_the_item_number_picks_the_noise(model):
    """`generate(first_item=n)`: a prompt alone as item n is item n of a batch (the command above checks
    the batches); item 0's noise is not item 1's; a negative first_item is an error."""
    sa, _ = model
    together = sa.generate_latents(PROMPTS, **SAMPLING)   # the batch of 4 the command compiled
    alone = sa.generate_latents([PROMPTS[1]], first_item=1, **SAMPLING)[0]
    err = peak_err(alone, together[1])
    print(f"item 1 alone vs in a batch of 4: {err:.1e}")
    assert err < BOUND
    other = peak_err(sa.generate_latents([PROMPTS[1]], first_item=0, **SAMPLING)[0], together[1])
    print(f"item 1's prompt with item 0's noise: {other:.1e}")
    assert other > 100 * BOUND
    with pytest.raises(ValueError, match="first_item"):
        sa.generate_latents(PROMPTS, first_item=-1, **SAMPLING)
