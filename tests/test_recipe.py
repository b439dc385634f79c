"""`sa-jax recipe small --quick`: every stage of the small model's recipe end to end (synth, VAE, CLAP,
silence re-centring, encode, quiet decoder, U-Net, evaluate) into a temporary folder; the result loads with
StableAudio.load and generates; a second run skips every stage."""

import json

import jax
import numpy as np
import pytest


@pytest.mark.slow
def test_quick_recipe_end_to_end(tmp_path):
    from sa_jax import StableAudio
    from sa_jax.cli import main

    out = tmp_path / "small"
    assert main(["recipe", "small", "--out", str(out), "--quick"]) == 0
    for done in ("corpus/metadata.jsonl", "heldout/metadata.jsonl", "vae/export/config.yaml", "vae_silence",
                 "clap/export/config.json", "latents/info.json", "vae_quiet/quiet.json", "vae_quieter/quiet.json",
                 "corpus_long/metadata.jsonl", "latents_long/info.json", "latents_mix/info.json",
                 "unet/export/config.yaml", "unet/tail.done", "unet/checkpoints/30", "report.json"):
        assert (out / done).exists(), done
    stages = json.loads((out / "stages.json").read_text())
    assert set(stages) == {"corpus", "heldout", "corpus_long", "vae", "vae_tail", "vae_flat", "vae_silence", "clap",
                           "latents", "latents_long", "latents_mix", "vae_quiet", "vae_quieter", "unet", "unet_tail",
                           "evaluate"}

    report = json.loads((out / "report.json").read_text())
    assert np.isfinite(report["reconstruction"]["stft_distance"])
    method = report["timing"]["method"]
    assert report["timing"]["count"] == len(method["prompts"]) * len(method["lengths"])
    assert 0 <= report["timing"]["median"] <= report["timing"]["p90"]
    for a in ("instrument", "root", "mode", "tempo", "stereo", "loudness"):
        assert 0 <= report["adherence"][a]["accuracy"] <= 1 and report["adherence"][a]["count"] > 0
    assert report["adherence_oracle"]["stereo"]["accuracy"] == 1.0
    assert report["adherence_oracle"]["loudness"]["accuracy"] == 1.0
    durations = [json.loads(line)["duration_s"] for line in (out / "corpus" / "metadata.jsonl").open()]
    assert all(d == round(d) for d in durations), durations     # a whole-second corpus
    # the U-Net's data: those clips and the long ones, past its 3 s window
    mix = [json.loads(line) for line in (out / "latents_mix" / "index.jsonl").open()]
    assert len(mix) == len(durations) + 4 and sum(r["frames"] > 128 for r in mix) >= 4
    assert all((out / "latents_mix" / r["latents"]).is_file() for r in mix)

    silence = json.loads((out / "vae_silence" / "silence.json").read_text())
    assert silence["residual"] < 1e-3
    from sa_jax.autoencoder import Autoencoder  # the latents have unit standard deviation
    assert Autoencoder.load(out / "vae_silence").config.scale == pytest.approx(silence["latent_std"])
    report_std = np.concatenate([np.load(f) for f in sorted((out / "latents").rglob("*.npy"))[:8]], axis=-1).std()
    assert 0.5 < report_std < 2.0, report_std

    # the quiet decoders kept the encoder, and the model decodes with the second
    centred = Autoencoder.load(out / "vae_silence")
    for name in ("vae_quiet", "vae_quieter"):
        quiet = Autoencoder.load(out / name)
        for a, b in zip(jax.tree.leaves(quiet.params["encoder"]), jax.tree.leaves(centred.params["encoder"])):
            np.testing.assert_array_equal(a, b)
    model = StableAudio.load(out / "unet" / "export")
    for a, b in zip(jax.tree.leaves(model.autoencoder.params), jax.tree.leaves(quiet.params)):
        np.testing.assert_array_equal(a, b)
    assert model.sample_rate == 44100 and model.window_seconds == pytest.approx(131072 / 44100)
    audio = model.generate(["instrument: bell"], seconds_total=2, steps=4, seed=0)
    assert audio.shape == (1, 2, 88200) and np.all(np.isfinite(audio))

    # everything exists: a rerun skips every stage
    assert main(["recipe", "small", "--out", str(out), "--quick"]) == 0
    assert json.loads((out / "stages.json").read_text()) == stages
