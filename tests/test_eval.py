"""sa_jax.eval: the timing measure on constructed signals, the attribute measurement on the synthetic
corpus' own clips (the oracle), the reconstruction distance, and the silence re-centring of the recipe."""

import subprocess
import sys

import numpy as np
import pytest

from sa_jax.data import synth
from sa_jax.eval import adherence, timing

SR = 44100


def tone_then_silence(seconds: float, total: float, level_db: float = -20.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(round(total * sr))) / sr
    x = np.where(t < seconds, np.sin(2 * np.pi * 440 * t), 0.0) * 10 ** (level_db / 20) * np.sqrt(2)
    return np.stack([x, 0.5 * x]).astype(np.float32)


@pytest.mark.parametrize("seconds", [0.5, 1.23, 3.0, 4.975])
@pytest.mark.parametrize("level_db", [-40.0, -6.0])
def test_generated_length_of_a_tone_is_exact_within_one_frame(seconds, level_db):
    audio = tone_then_silence(seconds, 6.0, level_db)
    got = timing.generated_length(audio, SR)
    assert seconds <= got <= seconds + timing.FRAME_SECONDS + 1e-9, got


def test_generated_length_ignores_a_quiet_tail_and_handles_silence():
    audio = tone_then_silence(2.0, 5.0, -10.0)
    audio += (np.random.default_rng(0).standard_normal(audio.shape) * 10 ** (-70 / 20)).astype(np.float32)
    assert 2.0 <= timing.generated_length(audio, SR) <= 2.05          # -60 dB below the peak: silence
    assert timing.generated_length(audio, SR, reference="full_scale", threshold_db=-80) == pytest.approx(5.0)
    assert timing.generated_length(np.zeros((2, SR), np.float32), SR) == 0.0
    assert timing.generated_length(tone_then_silence(1.0, 1.0), SR) == pytest.approx(1.0)   # never past the end
    with pytest.raises(ValueError, match="reference"):
        timing.generated_length(audio, SR, reference="rms")


def test_timing_errors_median_and_p90():
    requested = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    measured = [1.0, 2.1, 3.2, 4.3, 5.4, 6.5, 7.6, 8.7, 9.8, 12.0]
    e = timing.timing_errors(requested, measured)
    assert e["median"] == pytest.approx(0.45)
    assert e["p90"] == pytest.approx(np.percentile([0, .1, .2, .3, .4, .5, .6, .7, .8, 2.0], 90))
    assert e["max"] == pytest.approx(2.0) and e["count"] == 10
    with pytest.raises(ValueError):
        timing.timing_errors([1, 2], [1])
    assert timing.requested_lengths(8.9, 5) == [1.0, 3.0, 4.0, 6.0, 8.0]
    assert timing.requested_lengths(8.9, 5, low=2.0) == [2.0, 4.0, 5.0, 6.0, 8.0]
    # the default 8 lengths over 2..8 s (7 whole seconds): one repeats, so 8 prompts still make 64 generations
    assert timing.requested_lengths(8.9, low=2.0) == [2.0, 3.0, 4.0, 5.0, 5.0, 6.0, 7.0, 8.0]
    with pytest.raises(ValueError, match="at least 1"):
        timing.requested_lengths(8.9, 0)


def test_timing_lengths_start_at_the_corpus_shortest_seconds_total(tmp_path):
    """A model never saw a seconds_total below its corpus's shortest clip (rounded up), so the evaluation
    does not ask for one."""
    import json

    from sa_jax.eval.report import shortest_seconds_total

    lines = [json.dumps({"path": f"audio/{i}.wav", "duration_s": d}) for i, d in enumerate([3.5, 1.2, 7.9])]
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    assert shortest_seconds_total(tmp_path) == 2.0
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"path": "a.wav", "duration_s": 0.4}) + "\n")
    assert shortest_seconds_total(tmp_path) == 1.0
    (tmp_path / "metadata.jsonl").write_text("")
    with pytest.raises(ValueError, match="lists no clips"):
        shortest_seconds_total(tmp_path)


class FakeModel:
    """Generates a tone exactly seconds_total long, then silence, over the whole window."""

    sample_rate, window_seconds = SR, 6.0

    def generate(self, prompts, seconds_total, trim=True, **_):
        assert trim is False
        return np.stack([tone_then_silence(seconds_total, self.window_seconds) for _ in prompts])


def test_timing_eval_of_a_perfect_model():
    r = timing.timing_eval(FakeModel(), ["a", "b"], [1.0, 2.5, 5.0])
    assert r["count"] == 6 and r["p90"] <= timing.FRAME_SECONDS
    assert {(x["prompt"], x["requested"]) for x in r["items"]} == {(p, s) for p in "ab" for s in (1.0, 2.5, 5.0)}


@pytest.fixture(scope="module")
def classifier():
    return adherence.reference_classifier(100, seed=1)


def test_instrument_classifier_names_clips_it_was_not_fitted_on(classifier):
    """Fitted on seed 1's clips (up to 4 s), it names the instrument of seed 3's clips of 1-8 s.
    Measured: 59 / 60 (0.98; 200 clips of seed 3: 0.99, of 1-2 s of seed 4: 0.97); the band-energy
    nearest-class-mean classifier it replaced named 0.60 of these 60."""
    clips = [synth.synth_clip(3, i, max_seconds=8.0) for i in range(60)]
    named = np.mean([classifier.predict(audio, SR) == meta["instrument"] for audio, meta in clips])
    assert named >= 0.95, named
    assert set(classifier.classes) == set(adherence.values_of("instrument"))


def test_instrument_classifier_is_deterministic_and_handles_silence_and_short_clips():
    clips = [synth.synth_clip(5, i, max_seconds=2.0) for i in range(30)]
    audio, labels = [a for a, _ in clips], [m["instrument"] for _, m in clips]
    a, b = adherence.InstrumentClassifier.fit(audio, labels), adherence.InstrumentClassifier.fit(audio, labels)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert [a.predict(x) for x in audio] == [b.predict(x) for x in audio]
    # silence, a clip shorter than one STFT frame and an empty one: finite features, one of the classes
    for odd in (np.zeros((2, SR), np.float32), 0.1 * np.ones((2, 10), np.float32), np.zeros((2, 0), np.float32)):
        assert np.isfinite(adherence.instrument_features(odd, SR)).all()
        assert np.isfinite(a.scores(odd, SR)).all() and a.predict(odd, SR) in a.classes


def test_instrument_classifier_leaves_librosa_unimported():
    """librosa registers a lazy `resampy` module; torch's import, walking sys.modules, then imports resampy,
    which fails where pkg_resources is missing: loading a model after an evaluation broke that way."""
    code = ("import sys; from sa_jax.eval import adherence; adherence.reference_classifier(10, max_seconds=1.0); "
            "assert 'librosa' not in sys.modules and 'resampy' not in sys.modules, sorted(sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


def test_instrument_classifier_fit_errors():
    one, meta = synth.synth_clip(5, 0, max_seconds=1.0)
    with pytest.raises(ValueError, match="at least 2 instruments"):
        adherence.InstrumentClassifier.fit([one, one], [meta["instrument"]] * 2)
    with pytest.raises(ValueError, match="one label per clip"):
        adherence.InstrumentClassifier.fit([one, one], ["bell", "sine flute", "bell"])


def test_oracle_measures_the_corpus_clips_attributes(classifier):
    """The measurement recovers each clip's metadata (clips the classifier was not fitted on)."""
    clips = [synth.synth_clip(2, i, max_seconds=4.0) for i in range(40)]
    r = adherence.oracle(clips, SR, classifier)
    # measured on 40 clips (seed 2): instrument 1.00 (0.80 by the band-energy classifier it replaced), root 0.825,
    # mode 0.875, tempo 0.775, stereo 1, loudness 1
    bounds = {"instrument": 0.95, "root": 0.65, "mode": 0.75, "tempo": 0.7, "stereo": 1.0, "loudness": 1.0}
    for a, lo in bounds.items():
        assert r[a]["accuracy"] >= lo, (a, r[a])
        assert r[a]["accuracy"] > r[a]["chance"] + 0.3, (a, r[a])
    assert r["root"]["chance"] == pytest.approx(1 / 12) and r["instrument"]["chance"] == pytest.approx(1 / 5)


def test_adherence_eval_with_an_oracle_generator_and_a_deaf_one(classifier):
    """A 'model' that plays the prompted attribute scores far above chance; one that ignores the
    prompt scores about chance."""
    def obedient(prompts, first_item):
        out = []
        for p in prompts:
            wanted = [x.split(": ")[-1] for x in p.replace(" | ", ", ").split(", ")]
            for i in range(2000):   # the first corpus clip that has the prompted values
                a, m = synth.synth_clip(7, i, max_seconds=3.0)
                if all(w in (m["instrument"], m["stereo"], m["loudness"]) for w in wanted):
                    out.append(np.pad(a, ((0, 0), (0, 3 * SR - a.shape[1]))))
                    break
            else:
                raise AssertionError(p)
        return np.stack(out)

    attrs = ("stereo", "loudness", "instrument")
    good = adherence.adherence_eval(obedient, SR, classifier, attributes=attrs, per_value=2, seed=0)
    for a in attrs:
        assert good[a]["accuracy"] >= 0.6, (a, good[a])
    fixed, _ = synth.synth_clip(3, 0, max_seconds=3.0)
    deaf = adherence.adherence_eval(lambda ps, n: np.stack([fixed] * len(ps)), SR, classifier, attributes=attrs,
                                    per_value=2, seed=0)
    for a in attrs:
        assert deaf[a]["accuracy"] <= 0.5, (a, deaf[a])


def test_prompts_name_the_value():
    rng = np.random.default_rng(0)
    for a in adherence.ATTRIBUTES:
        for v in adherence.values_of(a):
            p, ctx = adherence.prompt_for(a, v, rng)
            if a == "tempo":
                bpm = int([x for x in p.replace(" | ", ", ").split(", ") if x.split(": ")[-1].isdigit()][0]
                          .split(": ")[-1])
                assert adherence.tempo_class(bpm) == v and ctx["notes_per_beat"] in (1, 2, 4)
            else:
                assert v in p, (a, v, p)


@pytest.mark.slow   # moved out of the default run for its time (~35s on 2 AVX2 cores); run with -m slow
def test_reconstruction_distance_and_silence_centring():
    """The trainer's STFT distance: 0 for a perfect reconstruction is not reachable by a random VAE,
    but the re-centred autoencoder reconstructs exactly as the original and encodes silence to ~0."""
    from sa_jax.autoencoder import Autoencoder
    from sa_jax.commands.recipe import centre_on_silence
    from sa_jax.eval.recon import reconstruction_distance

    vae = {"encoder": {"type": "dac", "config": {"in_channels": 2, "latent_dim": 8, "d_model": 4,
                                                 "strides": [2, 4]}},
           "decoder": {"type": "dac", "config": {"out_channels": 2, "latent_dim": 4, "channels": 16, "rates": [4, 2]}},
           "bottleneck": {"type": "vae"}, "latent_dim": 4, "downsampling_ratio": 8, "io_channels": 2,
           "sample_rate": SR}
    ae = Autoencoder.from_config(vae, seed=0)
    # give every bias a non-zero value, so silence does not encode to zero by construction
    import jax
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: np.asarray(x) + 0.3 if "bias" in jax.tree_util.keystr(p) else np.asarray(x), ae.params)
    ae = Autoencoder(ae.config, params)
    from sa_jax.training.losses import STFTLossConfig

    clips = [synth.synth_clip(0, i, max_seconds=1.0)[0][:, :1024] for i in range(2)]
    small = STFTLossConfig(fft_sizes=(256, 64), hop_sizes=(64, 16), win_lengths=(256, 64))
    r = reconstruction_distance(ae, clips, seconds=1024 / SR, stft=small)
    assert r["count"] == 2 and np.isfinite(r["stft_distance"]) and r["stft_distance"] > 0
    assert np.isfinite(r["level_error_db"]) and r["level_error_db"] >= 0 and r["silence_rms_db"] > -200
    centred, z_sil = centre_on_silence(ae, frames=128)
    assert np.abs(z_sil).max() > 1e-2
    inner = slice(24, -24)   # latent frames away from the encoder's and decoder's zero-padded edges
    assert np.abs(centred.encode(np.zeros((1, 2, 1024), np.float32), chunk_frames=None)[0][:, inner]).max() < 1e-4
    x = clips[0][None]
    z, zc = ae.encode(x, chunk_frames=None), centred.encode(x, chunk_frames=None)
    np.testing.assert_allclose(zc[..., inner], (z - z_sil[None, :, None])[..., inner], atol=1e-4)
    y, yc = ae.decode(z, chunk_frames=None), centred.decode(zc, chunk_frames=None)
    samples = slice(24 * 8, -24 * 8)
    np.testing.assert_allclose(yc[..., samples], y[..., samples], atol=1e-4 * max(1.0, np.abs(y).max()))


def test_spectral_flatness_tells_tones_from_noise():
    from sa_jax.eval.quality import rms_db, spectral_flatness

    noise = np.random.default_rng(0).standard_normal((2, SR)).astype(np.float32) * 0.1
    tone = tone_then_silence(1.0, 1.0, -20.0)
    clip, _ = synth.synth_clip(0, 3, max_seconds=3.0)
    assert spectral_flatness(noise) > 0.5
    assert spectral_flatness(tone) < 0.01 and spectral_flatness(clip) < 0.1
    assert rms_db(tone) == pytest.approx(-20.0 + 10 * np.log10(0.625), abs=0.1)   # L at -20 dB, R 6 dB lower
    assert rms_db(np.zeros((2, 10))) == float("-inf")


# Measured on the shipped model (2 CPU cores): RMS -17/-18 dBFS,
# spectral flatness < 0.01; timing median error 1.22 s (95% bootstrap interval 0.85-2.92) over the first 4 timing
# prompts x [2, 4, 6] s x 3 seeds, every generation numbered (its own (seed, n) noise). The timing
# bound sits below what a model that ignores seconds_total can score on that set: 4.92 s playing the whole
# window every time, 2.0 s stopping at the best fixed length (4 s).
SHIPPED_BOUNDS = {"flatness": 0.3, "rms_db": -50.0, "timing_median_s": 0.5}


@pytest.mark.skipif(not (__import__("sa_jax.pipeline").pipeline.SHIPPED_MODEL / "config.yaml").is_file(),
                    reason="the shipped model (sa_jax/assets/small) is not in this checkout")
@pytest.mark.slow   # moved out of the default run for its time (~60s on 2 AVX2 cores); run with -m slow
def test_shipped_model_generates_music_of_the_requested_length():
    """The shipped model on the CPU: 2 prompts x 4 s, not silent, not noise-like, trimmed to
    seconds_total, and, generated over the whole window (trim=False), falling silent nearer
    seconds_total than the window's end (median error over the evaluation's first 4 timing prompts x 3 lengths
    x 3 seeds)."""
    from sa_jax import StableAudio
    from sa_jax.eval.quality import rms_db, spectral_flatness

    model = StableAudio.load()
    audio = model.generate(["sine flute, C major", "instrument: bell | stereo: left"], seconds_total=4, steps=25,
                           seed=0)
    assert audio.shape == (2, 2, 4 * model.sample_rate)
    for a in audio:
        assert rms_db(a) > SHIPPED_BOUNDS["rms_db"]
        assert spectral_flatness(a) < SHIPPED_BOUNDS["flatness"]
    from sa_jax.eval.report import TIMING_PROMPTS

    # Pooled over three seeds (36 generations). Measured 0.10 s (95% interval 0.10-0.125, p90 6.58) for the U-Net
    # shipped with study part 9 (long clips, shift 8); 0.05 s (p90 3.92) for part 7's, 1.22 s for the [2, 2, 2]
    # U-Net; ignoring seconds_total scores 2.0 (stopping at 4 s) or 4.92 (playing the whole window).
    items = [x for seed in range(3) for x in
             timing.timing_eval(model, list(TIMING_PROMPTS[:4]), [2.0, 4.0, 6.0], steps=25, seed=seed)["items"]]
    r = timing.timing_errors([x["requested"] for x in items], [x["measured"] for x in items])
    print(f"shipped model timing over {len(items)} generations: {r}")
    assert r["median"] <= SHIPPED_BOUNDS["timing_median_s"], r
