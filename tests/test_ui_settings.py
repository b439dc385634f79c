"""The web UI's logic without a browser (sa_jax/ui/settings.py, studio.py) and the pipeline's per-step
progress hook it draws its progress bar from:
- which job a request is, and an error that names the control and what is allowed for every bad value;
- the Settings command line parses with the real `sa-jax sample` / `inpaint` / `continue` parsers into the
  same values, and run as a subprocess it makes the same audio as the page (same seed: max |diff| <= 1e-5);
- `generate(on_step=...)` reports every step in order, changes nothing in the audio (bit for bit) and
  compiles the sampling loop once for every listener;
- a request of a shape already run compiles nothing new; variations, inpainting, continuation and long form
  (a progress step per window) through the Studio; an unreadable audio file is an AudioError;
- the Stable Audio Open family through the same Studio (a tiny random diffusers model);
- LoRA: a slider per adapter, the page's strength reaches StableAudio.load, the command line carries it;
- `sa-jax ui` / `python -m sa_jax.ui` refuse a bad or busy port before loading the model.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sa_jax.errors import ConfigError
from sa_jax.ui.settings import MAX_BATCH, ModelInfo, Request, resolve

STEPS = 4
SA_JAX = str(Path(sys.executable).with_name("sa-jax"))

INFO = ModelInfo(window_seconds=8.92, max_seconds=512.0, samplers=("dpmpp-3m-sde", "heun", "euler"),
                 sampler="dpmpp-3m-sde", steps=100, cfg_scale=6.0, sigma_min=0.3, sigma_max=500.0, rho=1.0,
                 family="sa1")


def request(**kw) -> Request:
    base = dict(prompt="a warm pad", seconds_total=2.0, steps=STEPS, cfg_scale=6.0, seed=7, sampler="dpmpp-3m-sde",
                sigma_min=0.3, sigma_max=500.0, rho=1.0, batch_size=1)
    return Request(**{**base, **kw})


# --- request -> settings ------------------------------------------------------------------------

def test_the_job_follows_from_what_is_filled_in():
    assert resolve(request(), INFO).mode == "generate"
    assert resolve(request(seconds_total=30.0), INFO).mode == "long"
    s = resolve(request(init_audio="/tmp/x/take.wav", init_noise_level=3.0), INFO)
    assert (s.mode, s.init_noise_level) == ("variation", 3.0) and "sigma_max" not in s.sampling()
    s = resolve(request(source_audio="/tmp/x/src.wav", inpaint_start=1.0, inpaint_end=2.0), INFO)
    assert (s.mode, s.inpaint_start, s.inpaint_end) == ("inpaint", 1.0, 2.0)
    s = resolve(request(source_audio="/tmp/x/src.wav", continue_seconds=5.0), INFO)
    assert (s.mode, s.continue_seconds) == ("continue", 5.0)
    s = resolve(request(negative_prompt="  ", steps=8.0, batch_size=3.0), INFO)   # numbers arrive as floats
    assert s.negative_prompt is None and s.steps == 8 and isinstance(s.steps, int) and s.batch_size == 3


def test_seed_minus_one_draws_a_seed_in_range():
    seeds = {resolve(request(seed=-1), INFO).seed for _ in range(5)}
    assert all(0 <= s < 2**32 for s in seeds) and len(seeds) > 1
    assert resolve(request(seed=2**32 - 1), INFO).seed == 2**32 - 1


@pytest.mark.parametrize("kw, message", [
    (dict(prompt="  "), "Prompt is empty"),
    (dict(seconds_total=600.0), "Seconds total 600 is out of range: give more than 0 and at most 512 s"),
    (dict(seconds_total=0.0), "Seconds total 0 is out of range"),
    (dict(seconds_total=math.nan), "Seconds total must be a number (more than 0 and at most 512 s), got nan"),
    (dict(seconds_total=None), "Seconds total is empty: give a number (more than 0 and at most 512 s)"),
    (dict(seconds_total="ten"), "Seconds total must be a number (more than 0 and at most 512 s), got 'ten'"),
    (dict(seconds_start=2.0), "Seconds start 2 is out of range: give 0 or more and less than Seconds total"),
    (dict(seconds_start=1.0, seconds_total=20.0), "long form"),
    (dict(steps=0), "Steps must be a whole number from 1 to 1000, got 0"),
    (dict(steps=2.5), "Steps must be a whole number"),
    (dict(cfg_scale=math.inf), "CFG scale must be a number"),
    (dict(cfg_scale=-1.0), "CFG scale must be 0 or more"),
    (dict(seed=-2), "Seed must be a whole number from -1 to 4294967295"),
    (dict(seed=2**32), "Seed must be a whole number from -1 to 4294967295"),
    (dict(sampler="nope"), "Sampler 'nope' is not one this model can use; choose one of dpmpp-3m-sde, heun, euler"),
    (dict(sigma_min=0.0), "Sigma min and Rho must be more than 0"),
    (dict(sigma_max=0.2), "Sigma max (0.2) must be more than Sigma min (0.3)"),
    (dict(rho=math.nan), "Rho must be a number"),
    (dict(batch_size=MAX_BATCH + 1), f"Batch size must be a whole number from 1 to {MAX_BATCH}"),
    (dict(init_audio="a.wav", source_audio="b.wav"), "clear one of them"),
    (dict(source_audio="b.wav"), "give Inpaint start and Inpaint end"),
    (dict(source_audio="b.wav", inpaint_start=2.0, inpaint_end=1.0), "0 <= Inpaint start < Inpaint end"),
    (dict(source_audio="b.wav", continue_seconds=-1.0), "Continue by (s) must be 0"),
    (dict(init_audio="a.wav", init_noise_level=0.1), "Init noise level (0.1) must be more than Sigma min (0.3)"),
    (dict(init_audio="a.wav", seconds_total=20.0), "takes no Init audio"),
    (dict(lora_scales=(math.nan,)), "LoRA strength 1 must be a number"),
])
def test_bad_values_say_what_is_allowed(kw, message):
    with pytest.raises(ConfigError) as e:
        resolve(request(**kw), INFO)
    assert message in str(e.value)


def test_a_model_without_long_form_says_so():
    info = ModelInfo(**{**INFO.__dict__, "max_seconds": INFO.window_seconds})
    with pytest.raises(ConfigError, match="at most 8.92 s .*this model has no long form"):
        resolve(request(seconds_total=20.0), info)


# --- settings -> command line -------------------------------------------------------------------

def _parse(line: str):
    from sa_jax.cli import build_parser

    args = shlex.split(line.splitlines()[0])
    assert args[0] == "sa-jax"
    return build_parser().parse_args(args[1:])


def test_the_command_line_parses_back_into_the_same_settings():
    info = ModelInfo(**{**INFO.__dict__, "load_args": ("--model", "my model/")})
    s = resolve(request(prompt="it's a \"pad\"", negative_prompt="hiss", seconds_start=0.5, cfg_scale=6.25,
                        batch_size=2, sigma_min=0.05, sigma_max=80.0, rho=7.0), info)
    a = _parse(s.command(info))
    assert (a.command, a.prompt, a.negative_prompt, a.model) == ("sample", [s.prompt], "hiss", "my model/")
    assert (a.seconds_start, a.seconds_total, a.steps, a.cfg_scale, a.sampler, a.seed, a.batch_size) == \
        (0.5, 2.0, STEPS, 6.25, "dpmpp-3m-sde", 7, 2)
    assert (a.sigma_min, a.sigma_max, a.rho, a.init_audio) == (0.05, 80.0, 7.0, None)

    s = resolve(request(init_audio="/tmp/gradio/abc/my take.wav", init_noise_level=2.5), INFO)
    a = _parse(s.command(INFO))
    assert (a.init_audio, a.init_noise_level, a.sigma_max) == ("my take.wav", 2.5, None)

    s = resolve(request(source_audio="/x/src.wav", inpaint_start=1.25, inpaint_end=2.0, batch_size=2), INFO)
    line = s.command(INFO)
    a = _parse(line)
    assert (a.command, a.input, a.start, a.end, a.prompt, a.seed, a.sigma_max) == \
        ("inpaint", "src.wav", 1.25, 2.0, "a warm pad", 7, 500.0)
    assert "# the command makes one item; this batch of 2" in line

    s = resolve(request(source_audio="/x/src.wav", continue_seconds=12.0), INFO)
    a = _parse(s.command(INFO))
    assert (a.command, a.input, a.seconds) == ("continue", "src.wav", 12.0)


def test_lora_strengths_go_into_the_command_line():
    info = ModelInfo(**{**INFO.__dict__, "loras": (("adapters/drums", 1.0), ("adapters/bass", 0.5))})
    s = resolve(request(lora_scales=(0.75, 0.0)), info)
    assert s.command(info).endswith("--lora adapters/drums:0.75 --lora adapters/bass:0")


# --- the pipeline's per-step progress hook --------------------------------------------------------

@pytest.fixture(scope="module")
def sa():
    from sa_jax import StableAudio

    return StableAudio.load()


@pytest.mark.slow   # moved out of the default run for its time (~30s on 2 AVX2 cores); run with -m slow
def test_on_step_reports_each_step_changes_nothing_and_compiles_once(sa):
    from sa_jax.diffusion.samplers import _run

    plain = sa.generate(["a warm pad"], seconds_total=1.0, steps=STEPS, seed=3)
    compiled = _run._cache_size()
    seen, seen2 = [], []
    with_hook = sa.generate(["a warm pad"], seconds_total=1.0, steps=STEPS, seed=3,
                            on_step=lambda i, n: seen.append((i, n)))
    assert np.array_equal(plain, with_hook)
    assert seen == [(i, STEPS) for i in range(STEPS + 1)]
    sa.generate(["another prompt"], seconds_total=1.0, steps=STEPS, seed=4, on_step=lambda i, n: seen2.append(i))
    assert seen2 == list(range(STEPS + 1))
    assert _run._cache_size() == compiled + 1   # one program with the callback, whatever the listener


@pytest.mark.slow   # moved out of the default run for its time (~20s on 2 AVX2 cores); run with -m slow
def test_a_failing_progress_display_does_not_stop_sampling(sa):
    def broken(i, n):
        if i < n:
            raise RuntimeError("display gone")

    out = sa.generate(["a warm pad"], seconds_total=1.0, steps=STEPS, seed=3, on_step=broken)
    assert out.shape == (1, 2, sa.sample_rate) and np.all(np.isfinite(out))


# --- the page's runs: the same audio as the command line, both families ---------------------------

@pytest.fixture(scope="module")
def studio(sa):
    from sa_jax.ui.studio import Studio

    st = Studio(loaded=sa)   # the module's model, not a second load
    yield st
    st.close()


@pytest.mark.slow   # moved out of the default run for its time (~55s on 2 AVX2 cores); run with -m slow
def test_the_page_and_its_command_line_make_the_same_audio(studio, tmp_path):
    s = resolve(request(prompt="a bright bell", seconds_total=1.5, batch_size=2, seed=11, cfg_scale=5.0,
                        rho=2.0, sigma_max=200.0), studio.info)
    progress = []
    result = studio.run(s, lambda done, what: progress.append((done, what)))
    assert [p.name for p in result.wavs] == ["000_a-bright-bell_0.wav", "000_a-bright-bell_1.wav"]
    assert all(p.with_suffix(".png").is_file() for p in result.wavs)
    assert ((0, STEPS), "sampling steps") in progress and ((STEPS, STEPS), "sampling steps") in progress
    from sa_jax.diffusion.samplers import _run

    compiled = _run._cache_size()   # another prompt, seed and length of the same shape: no new compile
    studio.run(resolve(request(prompt="a dark drone", seconds_total=0.5, batch_size=2, seed=12, cfg_scale=5.0,
                               rho=2.0, sigma_max=200.0), studio.info))
    assert _run._cache_size() == compiled
    out = tmp_path / "cli"
    args = shlex.split(result.command)[1:] + ["--out", str(out)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([SA_JAX, *args], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    for page_wav in result.wavs:
        ours, sr = sf.read(page_wav, dtype="float32")
        theirs, sr2 = sf.read(out / page_wav.name, dtype="float32")
        assert sr == sr2 == studio.sa.sample_rate and ours.shape == theirs.shape == (int(1.5 * sr), 2)
        assert np.max(np.abs(ours - theirs)) <= 1e-5
        assert sf.info(page_wav).subtype == "FLOAT"


def test_variation_inpaint_continue_and_long_form_runs(studio, tmp_path):
    sr = studio.sa.sample_rate
    t = np.arange(2 * sr) / sr
    src = tmp_path / "tone.wav"
    sf.write(src, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), sr, subtype="FLOAT")
    r = studio.run(resolve(request(init_audio=str(src), init_noise_level=2.0, seconds_total=1.0), studio.info))
    assert r.settings.mode == "variation" and r.seconds == 1.0 and "--init-audio tone.wav" in r.command
    windows = []
    r = studio.run(resolve(request(source_audio=str(src), inpaint_start=0.5, inpaint_end=1.0), studio.info),
                   lambda done, what: windows.append(done))
    assert r.settings.mode == "inpaint" and r.seconds == 2.0 and r.wavs[0].name == "inpainted.wav"
    assert (0, 1) in windows
    r = studio.run(resolve(request(source_audio=str(src), continue_seconds=1.0), studio.info))
    assert r.settings.mode == "continue" and r.seconds == 3.0 and r.wavs[0].name == "continued.wav"
    windows = []
    r = studio.run(resolve(request(seconds_total=10.0), studio.info), lambda done, what: windows.append(done))
    assert r.settings.mode == "long" and r.seconds == 10.0 and r.wavs[0].name == "000_a-warm-pad.wav"
    assert windows[:2] == [(0, 2), (1, 2)]   # a progress step per window (8.92 s windows)


def test_unreadable_source_audio_is_an_audio_error(studio, tmp_path):
    from sa_jax.errors import AudioError

    bad = tmp_path / "broken.wav"
    bad.write_text("not audio")
    with pytest.raises(AudioError, match="could not be decoded as audio.*readable formats are WAV, FLAC, OGG"):
        studio.run(resolve(request(init_audio=str(bad), init_noise_level=2.0), studio.info))


def test_stable_audio_open_family_through_the_studio(tmp_path):
    """A tiny random diffusers StableAudioPipeline (the SAO family: T5 + DiT + Oobleck, 1 s window)."""
    pytest.importorskip("diffusers")
    from test_pipeline import _build_pipeline

    from sa_jax.ui.studio import Studio

    root = tmp_path / "tiny-sao"
    _build_pipeline(root)
    st = Studio(str(root))
    try:
        assert st.info.family == "sao" and st.info.window_seconds == 1.0 and st.info.max_seconds == 512.0
        s = resolve(request(seconds_total=0.5, steps=2, batch_size=2, cfg_scale=7.0), st.info)
        r = st.run(s)
        assert r.seconds == 0.5 and len(r.wavs) == 2
        audio, sr = sf.read(r.wavs[1], dtype="float32")
        assert sr == st.sa.sample_rate and audio.shape == (sr // 2, 2) and np.all(np.isfinite(audio))
        assert r.command.startswith("sa-jax sample --prompt 'a warm pad' --seconds-total 0.5") and \
            f"--model {root}" in r.command
    finally:
        st.close()


# --- the command ------------------------------------------------------------------------------------

def _ui(*args, module: bool = False):
    cmd = [sys.executable, "-m", "sa_jax.ui"] if module else [SA_JAX, "ui"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", GRADIO_ANALYTICS_ENABLED="False")
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=120, env=env)


def test_the_studio_loads_both_dtypes_and_its_command_line_says_so():
    from sa_jax.ui.studio import Studio

    st = Studio(dtype="bfloat16", vae_dtype="bfloat16")   # what `sa-jax ui --dtype ... --vae-dtype ...` passes
    try:
        assert st.sa.autoencoder.dtype == "bfloat16"
        a = _parse(resolve(request(), st.info).command(st.info))
        assert (a.dtype, a.vae_dtype) == ("bfloat16", "bfloat16")
    finally:
        st.close()
    done = _ui("--vae-dtype", "float16")
    assert done.returncode == 2 and "--vae-dtype: invalid choice: 'float16'" in done.stderr


def test_ui_command_refuses_a_bad_or_busy_port_before_loading():
    import socket

    done = _ui("--port", 70000)
    assert done.returncode == 2 and done.stderr.strip() == "sa-jax ui: error: --port must be from 0 to 65535, got 70000"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _ui("--port", port, module=True)   # python -m sa_jax.ui is the same command
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"sa-jax ui: error: cannot serve on 127.0.0.1:{port} (Address already in use); "
                                   "choose another --port")
    assert "loading" not in done.stderr   # refused before the model loads


@pytest.mark.slow   # moved out of the default run for its time (~40s on 2 AVX2 cores); run with -m slow
def test_lora_adapters_with_strengths(tmp_path):
    """A tiny random SA1 model and an adapter (tests/test_lora_pipeline.py's): a slider per adapter; the page's
    strength reaches StableAudio.load (a new strength reloads: 1.5 changes the audio, 0 is the base model bit for
    bit) and the command line carries it."""
    from test_lora_pipeline import make_adapter, tiny_model

    from sa_jax import StableAudio
    from sa_jax.ui.app import build_app
    from sa_jax.ui.studio import Studio

    model = tiny_model("sa1")
    base = model.save(tmp_path / "base")
    adapter, _ = make_adapter(model, tmp_path / "drums", seed=3)
    st = Studio(str(base), loras=((str(adapter), 1.5),))
    try:
        sliders = [b for b in build_app(st).blocks.values() if getattr(b, "label", None) == "LoRA strength: drums"]
        assert len(sliders) == 1 and sliders[0].value == 1.5
        sampling = dict(seconds_total=0.02, steps=3, cfg_scale=3.0, seed=7)
        audio = {}
        for strength in (1.5, 0.0):
            r = st.run(resolve(request(lora_scales=(strength,), **sampling), st.info))
            assert r.command.endswith(f"--model {base} --lora {adapter}:{strength:g}")
            audio[strength] = sf.read(r.wavs[0], dtype="float32", always_2d=True)[0]
        plain = StableAudio.load(base).generate(["a warm pad"], on_step=lambda *_: None, **sampling)[0].T
        assert np.array_equal(audio[0.0], plain)
        # the same program on the same weights is bit-identical, so any change is the adapter's (measured:
        # 1.2e-3 of the peak on this tiny random model)
        change = np.abs(audio[1.5] - plain).max() / np.abs(plain).max()
        print(f"strength 1.5 changes the audio by {change:.1e} of its peak")
        assert change > 1e-4
    finally:
        st.close()
