"""Reconstruction quality of an autoencoder on held-out corpus clips: the multi-resolution STFT
distance of the VAE trainer (`sa_jax.training.losses.reconstruction_losses`: the A-weighted sum/difference
loss of stable-audio-tools' recipe, FFT 2048..32 with hop 1/4, reals as input and posterior-mean
reconstructions as target), averaged over clips. Lower is better; 0 is a perfect reconstruction.
Beside it: the median absolute difference of each clip's RMS level and its reconstruction's (dB), and
the level of what digital silence reconstructs to (dBFS)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def corpus_clips(folder, count: int | None = None, seconds: float | None = None, sample_rate: int = 44100,
                 channels: int = 2) -> list[tuple[np.ndarray, dict]]:
    """(audio (channels, samples), metadata) of the first `count` clips of a `sa-jax synth` folder
    (metadata.jsonl + audio/), each cut to its first `seconds` (None: whole)."""
    from sa_jax.audio import load_audio

    folder = Path(folder)
    manifest = folder / "metadata.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} does not exist; give a folder written by `sa-jax synth`")
    out = []
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        meta = json.loads(line)
        audio = load_audio(folder / meta["path"], sample_rate, channels)
        if seconds is not None:
            audio = audio[:, :int(round(seconds * sample_rate))]
        out.append((np.asarray(audio, np.float32), meta))
        if count is not None and len(out) >= count:
            break
    if not out:
        raise ValueError(f"no clips in {folder}")
    return out


def reconstruction_distance(autoencoder, clips, seconds: float = 2.0, stft=None) -> dict:
    """STFT distance of `autoencoder` (an `sa_jax.Autoencoder`) on clips (channels, samples): each
    clip cut or zero-padded to `seconds` (rounded up to the downsampling ratio), one at a time.
    `stft`: an `sa_jax.training.losses.STFTLossConfig` (default: the reference's resolutions).
    Returns {"stft_distance": mean over clips, "per_clip": [...], "count", "seconds", "level_error_db",
    "silence_rms_db"}."""
    from sa_jax.eval.quality import rms_db
    from sa_jax.training.losses import STFTLossConfig, reconstruction_losses

    stft = stft or STFTLossConfig()
    roundtrip = lambda x: autoencoder.decode(autoencoder.encode(x[None], chunk_frames=None), chunk_frames=None)[0]
    ratio = autoencoder.downsampling_ratio
    n = -(-int(round(seconds * autoencoder.sample_rate)) // ratio) * ratio
    dists, level_errors = [], []
    for a in clips:   # one clip at a time: the distance is a batch mean
        a = np.asarray(a, np.float32)[:, :n]
        clip = np.pad(a, ((0, 0), (0, n - a.shape[1])))
        recon = roundtrip(clip)
        # the trainer's loss with the reals as input and the reconstruction as target, (batch, time, channels)
        dists.append(float(reconstruction_losses(clip.T[None], recon.T[None], stft, autoencoder.sample_rate)["mrstft"]))
        level_errors.append(abs(rms_db(recon) - rms_db(clip)))
    silence = roundtrip(np.zeros((autoencoder.io_channels, n), np.float32))
    # The STFT distance alone can look fine for a decoder that ignores its input and plays a fixed
    # hum at the corpus' average level; the level error and the silence level show that failure.
    return {"stft_distance": float(np.mean(dists)), "per_clip": [float(d) for d in dists], "count": len(dists),
            "seconds": n / autoencoder.sample_rate, "level_error_db": float(np.median(level_errors)),
            "silence_rms_db": float(max(rms_db(silence), -200.0))}
