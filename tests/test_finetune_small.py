"""LoRA fine-tuning of the shipped small model (sa_jax/assets/small, trained on the synthetic melody corpus)
on a handful of clips of a sound its corpus never had: band-passed noise swells ("wind noise"), synthesised
here. The measure: the distance of a generation's mean log spectrum (48 log-spaced bands, 200 Hz - 16 kHz)
to that of the new clips as the model's VAE reproduces them (with and without the overall level), and its
spectral flatness, for the new prompt, before and after. Slow (a few hundred CPU steps and two rounds of generation)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from sa_jax.config import load
from sa_jax.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SR = 44100
PROMPT = "instrument: wind noise"
SEEDS = range(4)


def wind_clips(folder: Path, count: int = 8, seconds: float = 6.0, seed: int = 0) -> Path:
    """`count` stereo clips of band-passed noise (a 1.5-2.5 kHz lower edge, 2-3x that upper edge) under a
    slow swell, at -20 dBFS RMS, with metadata.jsonl (instrument: wind noise): a timbre of no corpus
    instrument (those are harmonic or bell partials, their noise only a click on the beat)."""
    from sa_jax.audio import write_audio

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f = np.fft.rfftfreq(n, 1 / SR)
    rows = []
    for i in range(count):
        lo = rng.uniform(1500, 2500)
        hi = lo * rng.uniform(2.0, 3.0)
        spec = np.fft.rfft(rng.standard_normal((2, n)), axis=-1) * ((f > lo) & (f < hi))
        x = np.fft.irfft(spec, n, axis=-1)
        x *= 0.25 + 0.75 * (0.5 - 0.5 * np.cos(2 * np.pi * rng.uniform(0.2, 0.5) * t + rng.uniform(0, 6)))
        x *= 10 ** (-20 / 20) / np.sqrt(np.mean(x ** 2))
        write_audio(folder / f"wind{i}.wav", x.astype(np.float32), SR)
        rows.append({"path": f"wind{i}.wav", "instrument": "wind noise"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _frames(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(power spectra of 8192-sample Hann frames, hop 2048, of the channel mean; their frequencies)."""
    x = audio.mean(axis=0)
    frames = np.lib.stride_tricks.sliding_window_view(x, 8192)[::2048] * np.hanning(8192)
    return np.abs(np.fft.rfft(frames, axis=-1)) ** 2, np.fft.rfftfreq(8192, 1 / SR)


def band_spectrum(audio: np.ndarray) -> np.ndarray:
    """Mean log power in 48 log-spaced bands (200 Hz - 16 kHz, each several FFT bins wide) of
    (channels, samples) audio, in dB."""
    power, f = _frames(audio)
    power = power.mean(axis=0)
    edges = np.geomspace(200, 16000, 49)
    return 10 * np.log10(np.asarray([power[(f >= a) & (f < b)].mean() for a, b in zip(edges[:-1], edges[1:])])
                         + 1e-12)


def flatness(audio: np.ndarray) -> float:
    """Spectral flatness (geometric / arithmetic mean power, 200 Hz - 16 kHz) of the frames, averaged:
    near 1 for noise, near 0 for a few partials."""
    power, f = _frames(audio)
    p = power[:, (f >= 200) & (f < 16000)] + 1e-12
    return float(np.mean(np.exp(np.mean(np.log(p), axis=-1)) / np.mean(p, axis=-1)))


def measure(model, reference: np.ndarray) -> dict:
    audio = model.generate([PROMPT] * len(SEEDS), seconds_total=6, steps=50, seed=0)
    diff = [band_spectrum(a) - reference for a in audio]
    return {"distance_db": float(np.mean([np.sqrt(np.mean(d ** 2)) for d in diff])),
            # the spectrum's shape alone: the distance once the overall level difference is taken out
            "shape_distance_db": float(np.mean([np.sqrt(np.mean((d - d.mean()) ** 2)) for d in diff])),
            "flatness": float(np.mean([flatness(a) for a in audio])),
            "rms_db": float(np.mean([10 * np.log10(np.mean(a ** 2) + 1e-12) for a in audio]))}


def finetune_small(work: Path, steps: int = 300) -> tuple[dict, dict, dict]:
    """Synthesise the clips, encode them with the shipped model's VAE, measure its generations for PROMPT,
    train rank-8 LoRA adapters (attention and convolutions) from it, measure again. Returns (before, after,
    the reference: the clips as the VAE reproduces them)."""
    from sa_jax import StableAudio
    from sa_jax.audio import read_audio
    from sa_jax.data.latents import encode_dataset
    from sa_jax.pipeline import SHIPPED_MODEL

    base = StableAudio.load(SHIPPED_MODEL)
    clips = wind_clips(work / "wind")
    encode_dataset(base.autoencoder, clips, work / "latents")
    # the target: the new clips as the model's VAE reproduces them (what generation can reach at best)
    recon = [base.autoencoder.decode(base.autoencoder.encode(read_audio(p)[0][None]))[0]
             for p in sorted(clips.glob("*.wav"))]
    reference = np.mean([band_spectrum(a) for a in recon], axis=0)
    target = {"flatness": float(np.mean([flatness(a) for a in recon])),
              "rms_db": float(np.mean([10 * np.log10(np.mean(a ** 2)) for a in recon]))}
    before = measure(base, reference)
    overrides = {"init.from": str(SHIPPED_MODEL), "autoencoder.path": "null", "text.path": "null",
                 "data.path": str(work / "latents"), "checkpoint.dir": str(work / "run"),
                 "lora.rank": 8, "lora.targets": '["attention|cross_attention", "conv/kernel$"]',
                 "optim.lr": 2e-3, "optim.schedule": "constant", "optim.warmup_steps": 0, "ema.decay": 0.99,
                 "data.batch_size": 8, "steps": steps, "checkpoint.every": steps, "log.every": 50}
    if not (work / "run" / "export").is_dir():
        cfg = load(TrainConfig, ROOT / "configs/train_unet_small.yaml", [f"{k}={v}" for k, v in overrides.items()])
        train(cfg, print_fn=lambda line: print(line, file=sys.stderr))
    after = measure(StableAudio.load(SHIPPED_MODEL, lora=[work / "run" / "export"]), reference)
    return before, after, target


@pytest.mark.slow   # 300 LoRA steps of the small U-Net and 2 x 4 generations: ~9 minutes on a busy 2-core VM
def test_lora_moves_the_shipped_model_toward_a_new_sound(tmp_path):
    before, after, target = finetune_small(tmp_path)
    print(f"{PROMPT}: before {before}, after {after}, the clips through the VAE {target}", file=sys.stderr)
    assert after["distance_db"] < 0.7 * before["distance_db"], (before, after)
    assert after["shape_distance_db"] < 0.7 * before["shape_distance_db"], (before, after)
    assert after["flatness"] > before["flatness"], (before, after)


if __name__ == "__main__":   # the measurement, kept in a folder: python tests/test_finetune_small.py WORKDIR
    print(finetune_small(Path(sys.argv[1])))
