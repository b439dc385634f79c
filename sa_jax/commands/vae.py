"""`sa-jax encode`, `sa-jax decode` and `sa-jax roundtrip`: audio files <-> latents through a VAE."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="sa-jax checkpoint dir, stable-audio-tools file/folder, diffusers folder, or a "
                        "config YAML/JSON (random weights: for trying the plumbing only)")
    p.add_argument("--model-config", default=None,
                   help="model_config.json for a bare stable-audio-tools weight file")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--chunk-frames", type=int, default=128,
                   help="latent frames per chunk for long audio (0: one shot)")
    p.add_argument("--allow-nonfinite-weights", action="store_true",
                   help="load weights that hold NaN/inf values (refused by default: they decode NaN audio)")


def load_model(args):
    from sa_jax import Autoencoder
    from sa_jax.checkpoints.table import allow_nonfinite_weights

    path = Path(args.model)
    if path.suffix in (".yaml", ".yml") or (path.suffix == ".json" and path.name != "config.json"):
        print(f"warning: {path} is a config: using randomly initialised weights", file=sys.stderr)
        return Autoencoder.from_config(path, seed=0, dtype=args.dtype)
    with allow_nonfinite_weights(getattr(args, "allow_nonfinite_weights", False)):
        return Autoencoder.load(path, config=args.model_config, dtype=args.dtype)


def _chunk(args):
    return args.chunk_frames or None


def _encode(args, ae):
    from sa_jax.audio import load_audio

    audio = load_audio(args.input, ae.sample_rate, ae.io_channels)
    z = ae.encode(audio[None], sample=args.sample, seed=args.seed if args.sample else None,
                  chunk_frames=_chunk(args))
    return audio, z[0]


def run_encode(args) -> int:
    from sa_jax.audio import write_npy

    ae = load_model(args)
    if Path(args.input).is_dir():
        return _encode_folder(args, ae)
    audio, z = _encode(args, ae)
    write_npy(args.output, z)
    print(f"{args.input}: {audio.shape[1] / ae.sample_rate:.2f} s -> latents {tuple(z.shape)} in {args.output}")
    return 0


def _encode_folder(args, ae) -> int:
    """A dataset folder -> pre-encoded latents that `DataConfig(kind="latents")` reads."""
    from tqdm import tqdm

    from sa_jax.data import encode_dataset
    from sa_jax.errors import NoUsableData

    if args.sample:
        raise ValueError("--sample is for single files; a dataset is encoded to posterior means")

    bar = None

    def progress(done, total, relpath):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="file", desc="encoding", file=sys.stderr, dynamic_ncols=True)
        bar.update(done - bar.n)
        if relpath:
            bar.set_postfix_str(relpath[-40:], refresh=False)

    try:
        report = encode_dataset(ae, args.input, args.output, encode_kwargs={"chunk_frames": _chunk(args)},
                                progress=progress)
    except NoUsableData as e:
        if bar is not None:
            bar.close()
        print(f"sa-jax encode: error: {e}", file=sys.stderr)
        return 1
    if bar is not None:
        bar.close()
    print(f"{args.input} -> {args.output}: {report.summary()}")
    return 0


def run_decode(args) -> int:
    import numpy as np

    from sa_jax.audio import write_audio, write_npy

    ae = load_model(args)
    try:
        z = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{args.input} is not a readable .npy array ({e})") from None
    if z.ndim == 2:
        z = z[None]
    if z.ndim != 3 or z.shape[0] != 1:
        raise ValueError(f"{args.input} must hold latents ({ae.latent_dim}, frames) or (1, {ae.latent_dim}, frames); "
                         f"got shape {z.shape}")
    y = ae.decode(z, chunk_frames=_chunk(args))[0]
    _write(args.output, y, ae.sample_rate, write_audio, write_npy)
    print(f"latents {tuple(z.shape[1:])} -> {y.shape[1] / ae.sample_rate:.2f} s of audio in {args.output}")
    return 0


def run_roundtrip(args) -> int:
    from sa_jax.audio import write_audio, write_npy

    ae = load_model(args)
    audio, z = _encode(args, ae)
    y = ae.decode(z[None], chunk_frames=_chunk(args))[0][:, : audio.shape[1]]
    _write(args.output, y, ae.sample_rate, write_audio, write_npy)
    print(f"{args.input}: {audio.shape[1] / ae.sample_rate:.2f} s -> latents {tuple(z.shape)} -> {args.output}")
    return 0


def _write(path, audio, sample_rate, write_audio, write_npy):
    suffix = Path(path).suffix.lower()
    if suffix == ".wav":
        write_audio(path, audio, sample_rate)
    elif suffix == ".npy":
        write_npy(path, audio)
    else:
        raise ValueError(f"output {path}: write .wav (32-bit float) or .npy")


def register(sub) -> None:
    p = sub.add_parser("encode", help="encode an audio file to latents (.npy), or a dataset folder to "
                                      "pre-encoded training latents")
    p.add_argument("input", help="audio file (WAV, FLAC, OGG, MP3; any rate and channel count), or a "
                                 "dataset folder (audio + metadata, as `sa-jax synth` writes)")
    p.add_argument("output", help="latents .npy, shape (latent_dim, frames); for a folder, the output folder "
                                  "(info.json, index.jsonl, latents/)")
    p.add_argument("--sample", action="store_true", help="draw from the posterior instead of its mean")
    p.add_argument("--seed", type=int, default=0)
    _add_model_args(p)
    p.set_defaults(func=run_encode)

    p = sub.add_parser("decode", help="decode latents (.npy) to audio")
    p.add_argument("input", help="latents .npy, (latent_dim, frames) or (1, latent_dim, frames)")
    p.add_argument("output", help="float WAV or .npy of (channels, samples)")
    _add_model_args(p)
    p.set_defaults(func=run_decode)

    p = sub.add_parser("roundtrip", help="encode and decode an audio file through a VAE")
    p.add_argument("input", help="audio file (WAV, FLAC, OGG, MP3; any rate and channel count)")
    p.add_argument("output", help="float WAV or .npy")
    p.add_argument("--sample", action="store_true", help="draw from the posterior instead of its mean")
    p.add_argument("--seed", type=int, default=0)
    _add_model_args(p)
    p.set_defaults(func=run_roundtrip)
