"""`sa-jax recipe small --out runs/small [--quick]`: the small model end to end, from an empty folder.

Stages (each skips when its output exists, and a training stage that was interrupted resumes from its
last checkpoint, so rerunning the command continues where it stopped):

    corpus/        `sa-jax synth --whole-seconds`: the training corpus (44.1 kHz stereo, clips of 1-8 whole
                   seconds, so that the seconds_total a clip is trained with, ceil(length), is its length)
    heldout/       `sa-jax synth --seed 1`: clips no stage trains on (evaluation)
    corpus_long/   `sa-jax synth --seed 2 --min-seconds 10 --max-seconds 32 --whole-seconds`: 200 clips longer than
                   the U-Net's window, which only the U-Net trains on (random window crops with their
                   seconds_start and a seconds_total past the window: what long form asks for)
    vae/           `sa-jax train --config configs/train_vae_small.yaml`   -> vae/export (an Autoencoder)
    vae/ (tail)    the same run continued with crops that may run past a clip's end (`data.crop_past_end`),
                   so the VAE also sees silence; re-exports vae/export
    vae/ (flat)    continued again with the STFT losses unweighted (no A-weighting pre-filter): the A-weighting
                   hides the low-frequency hum the decoder plays over silence (it attenuates 43-200 Hz by 12-20
                   dB), so with it alone the hum stayed (bench/RESULTS.md); re-exports vae/export
    vae_silence/   the same autoencoder re-centred so that silence encodes to zero latents (below), with
                   its latent scale set so the latents have unit standard deviation (`scale_to_unit_std`)
    clap/          `sa-jax train --config configs/train_clap_small.yaml`  -> clap/export (a ClapModel folder)
    latents/       `sa-jax encode corpus/ latents/ --model vae_silence` (`encode_dataset`, clips padded to
                   64-frame buckets so that few shapes compile)
    latents_long/  corpus_long/ encoded the same way
    latents_mix/   an index over latents/ and latents_long/ (`combine_latents`): the U-Net's data
    vae_quiet/     vae_silence with its decoder fine-tuned on latents/ to play silence for silence latents
                   (`sa_jax.training.quiet` on the training engine, run directory vae_quiet_run/; the encoder,
                   so the latents, are unchanged): the trained decoder hums at -46 dBFS over silence and clicks
                   at the window's end, loud enough to hide where the music stops (bench/RESULTS.md)
    vae_quieter/   vae_quiet's decoder fine-tuned once more with the silence term 5x and a spectral term that
                   keeps the music's spectrum (run directory vae_quieter_run/): the quiet clips' timing
                   threshold lies below vae_quiet's floor (docs/ablations/README.md, parts 2-4)
    unet/          `sa-jax train --config configs/train_unet_small.yaml` (data.path = latents_mix, text.source
                   clap = clap/export, autoencoder.path = vae_quieter) -> unet/export, a whole model:
                   StableAudio.load(unet/export). Its training times are shifted toward high noise
                   (`diffusion.timestep_shift` 8), where only the prompt can say how loud a clip is; without
                   the shift the U-Net read the level from its noisy input and ignored the loudness words
                   (docs/ablations/README.md, parts 7 and 9)
    unet/ (tail)   the same run continued 3000 steps with unshifted times, which the low-noise end (clean
                   silence after seconds_total) needs; re-exports unet/export
    report.json    `sa-jax evaluate unet/export --corpus heldout/`

Why re-centre: the latent data pipeline pads clips shorter than the window with zero latents, where the
paper pads the audio with silence and encodes it. For a trained VAE the latent of silence is some
z_sil != 0, so the model would learn to end clips with decode(0), which need not be silent. The
re-centred autoencoder subtracts z_sil in the encoder's last layer (the posterior mean's bias) and adds
it back in the decoder's first convolution (its bias gains W * z_sil), an exact reparametrisation away
from the edges: decode'(encode'(x)) = decode(encode(x)), and zero latents decode to silence.

`--quick` shrinks every stage to a smoke run (a few dozen clips, tens of steps, a 3 s window) that
finishes in minutes; `stages.json` records each stage's wall time.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from sa_jax.config import CONFIG_DIR as CONFIGS  # the packaged configs (works from an installed wheel too)

# Per-stage settings: the full recipe, and the --quick smoke run.
FULL = {
    "corpus": {"count": 800, "max_seconds": 8.0}, "heldout": {"count": 24, "max_seconds": 8.0},
    "corpus_long": {"count": 200, "min_seconds": 10.0, "max_seconds": 32.0},
    "vae": [], "vae_tail": ["steps=2000", "data.crop_past_end=16384"],
    "vae_flat": ["steps=2500", "data.crop_past_end=16384", "losses.stft.perceptual_weighting=false"],
    "clap": [], "quiet": {}, "quieter": {"silence_weight": 1.0, "spectral_weight": 2.0}, "unet": [],
    "unet_tail": ["steps=16000", "diffusion.timestep_shift=1"],
    "eval": {"steps": 50, "recon_clips": 16},   # evaluate's defaults: 64 timing, >= 48 per attribute
}
QUICK = {
    "corpus": {"count": 32, "max_seconds": 3.0}, "heldout": {"count": 4, "max_seconds": 3.0},
    "corpus_long": {"count": 4, "min_seconds": 4.0, "max_seconds": 6.0},
    "vae": ["steps=20", "data.window=16384", "data.batch_size=2", "losses.disc_start=0", "checkpoint.every=20",
            "log.every=10", "log.demo_every=0", "log.demo_count=1"],
    "vae_tail": ["steps=30", "data.crop_past_end=8192"],
    "vae_flat": ["steps=40", "data.crop_past_end=8192", "losses.stft.perceptual_weighting=false"],
    "clap": ["steps=10", "data.batch_size=8", "checkpoint.every=10", "log.every=5", "optim.warmup_steps=2"],
    "quiet": {"steps": 5, "frames": 16},
    "quieter": {"steps": 5, "frames": 16, "silence_weight": 1.0, "spectral_weight": 2.0},
    "unet": ["steps=20", "data.latent_window=128", "data.window=131072", "data.batch_size=4",
             "checkpoint.every=20", "log.every=10", "optim.warmup_steps=2"],
    "unet_tail": ["steps=30", "diffusion.timestep_shift=1"],
    "eval": {"steps": 4, "timing_lengths": 2, "per_value": 1, "recon_clips": 2, "metric_clips": 2},
}


def silence_latent(ae, frames: int = 64):
    """The posterior mean of digital silence, per latent channel (the median over the middle frames)."""
    import numpy as np

    z = ae.encode(np.zeros((1, ae.io_channels, frames * ae.downsampling_ratio), np.float32), chunk_frames=None)[0]
    return np.median(z[:, frames // 4: frames - frames // 4], axis=1).astype(np.float32)


def centre_on_silence(ae, frames: int = 64):
    """An Autoencoder equal to `ae` up to a latent shift: encode' = encode - z_sil, decode'(z) =
    decode(z + z_sil), so silence encodes to ~0 and zero latents decode to (near) silence. Needs an
    encoder whose last layer is `proj_out` (DAC-style with latent_dim) or `conv_out` (Oobleck) and a
    decoder whose first layer is the weight-normed `conv_in`."""
    import jax
    import numpy as np

    from sa_jax.autoencoder import Autoencoder

    z_sil = silence_latent(ae, frames)
    d = ae.latent_dim
    params = jax.tree_util.tree_map(np.array, jax.device_get(ae.params))
    enc = params["encoder"]
    last = enc["proj_out"] if "proj_out" in enc else enc["conv_out"]
    last["bias"][:d] -= z_sil   # the posterior mean is the first latent_dim channels
    conv = params["decoder"]["conv_in"]
    v = conv["weight_v"].astype(np.float64)
    kernel = conv["weight_g"] * v / np.sqrt(np.sum(v * v, axis=(0, 1), keepdims=True))   # (k, in, out)
    conv["bias"] = (conv["bias"] + np.einsum("kio,i->o", kernel, z_sil)).astype(np.float32)
    return Autoencoder(ae.config, params), z_sil


def scale_to_unit_std(ae, corpus: Path, clips: int = 32):
    """`ae` with its latent scale (stable-audio-tools' pretransform `scale`: encode divides by it,
    decode multiplies) set to the latents' standard deviation over the first `clips` corpus clips, so the
    diffusion model sees unit-variance data as its sigma_data = 1 preconditioning assumes. A VAE trained
    with a small KL weight can have latents ~30x smaller than that, and a denoiser trained on them learns
    to predict ~0 everywhere. Returns (autoencoder, the std)."""
    import dataclasses

    import numpy as np

    from sa_jax.autoencoder import Autoencoder
    from sa_jax.eval.recon import corpus_clips

    z = [ae.encode(a[None], chunk_frames=None)[0]
         for a, _ in corpus_clips(corpus, clips, sample_rate=ae.sample_rate, channels=ae.io_channels)]
    std = float(np.concatenate(z, axis=-1).std()) * ae.config.scale
    return Autoencoder(dataclasses.replace(ae.config, scale=std), ae.params), std


class BucketedEncoder:
    """`sa-jax encode`'s encoder (what `encode_dataset` calls), with each clip padded with silence to a
    multiple of `bucket` latent frames before encoding and the latents cut back to the clip's frames, so
    a corpus of many lengths compiles a handful of shapes instead of one per clip. Silence after the clip
    is what the paper's pipeline encodes too (it pads the audio to the window)."""

    def __init__(self, ae, bucket: int = 64):
        self.ae, self.bucket = ae, bucket
        self.sample_rate, self.downsampling_ratio = ae.sample_rate, ae.downsampling_ratio
        self.io_channels = ae.io_channels

    def encode(self, audio, **_):
        import numpy as np

        r, n = self.downsampling_ratio, audio.shape[-1]
        frames = -(-n // r)
        padded = -(-frames // self.bucket) * self.bucket
        x = np.pad(np.asarray(audio, np.float32), ((0, 0), (0, 0), (0, padded * r - n)))
        return self.ae.encode(x, chunk_frames=None)[..., :frames]


def save_autoencoder(ae, folder: Path, notes_name: str, notes: dict) -> None:
    """Save `ae` with a JSON of notes beside it into `folder`, which appears only when complete (the
    stage's done-marker)."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    ae.save(tmp)
    (tmp / notes_name).write_text(json.dumps(notes))
    tmp.rename(folder)


def _train(config: Path, overrides: list[str]) -> None:
    """Train a stage's config with its trainer (the engine), stopping the recipe when SIGTERM stopped it."""
    from sa_jax.commands.train import train_from

    if train_from(config, overrides).preempted:
        raise SystemExit(f"[recipe] stopped by SIGTERM in sa-jax train --config {config} (checkpoint saved); "
                         "rerun the recipe to resume")


def run_recipe(out, quick: bool = False, log=print) -> dict:
    """Run every stage into `out` (see the module docstring); returns {stage: seconds} of this run."""
    import numpy as np

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = QUICK if quick else FULL
    times: dict[str, float] = {}
    stages_file = out / "stages.json"
    recorded = json.loads(stages_file.read_text()) if stages_file.is_file() else {}

    def stage(name: str, done: Path, fn) -> None:
        if done.exists():
            log(f"[recipe] {name}: done ({done} exists), skipped")
            return
        log(f"[recipe] {name} ...")
        t0 = time.time()
        fn()
        times[name] = round(time.time() - t0, 1)
        recorded[name] = times[name]
        stages_file.write_text(json.dumps(recorded, indent=2))
        log(f"[recipe] {name}: {times[name]:.0f} s")

    from sa_jax.data.synth import write_corpus

    stage("corpus", out / "corpus" / "metadata.jsonl",
          lambda: write_corpus(out / "corpus", s["corpus"]["count"], seed=0, workers=2,
                               max_seconds=s["corpus"]["max_seconds"], whole_seconds=True))
    stage("heldout", out / "heldout" / "metadata.jsonl",
          lambda: write_corpus(out / "heldout", s["heldout"]["count"], seed=1, workers=1,
                               max_seconds=s["heldout"]["max_seconds"]))
    stage("corpus_long", out / "corpus_long" / "metadata.jsonl",
          lambda: write_corpus(out / "corpus_long", seed=2, workers=2, whole_seconds=True, **s["corpus_long"]))
    corpus = f"data.path={out / 'corpus'}"
    vae_args = [corpus, f"checkpoint.dir={out / 'vae'}", *s["vae"]]
    stage("vae", out / "vae" / "export" / "config.yaml",
          lambda: _train(CONFIGS / "train_vae_small.yaml", vae_args))

    def continued(name: str, config: str, args: list[str], marker: Path):
        # A finished run continued to further steps with other settings (why: the module docstring); the
        # trainer re-exports the run's export/ at the end, the marker records that the phase finished.
        def run():
            _train(CONFIGS / config, [*args, *s[name]])
            marker.write_text("")
        stage(name, marker, run)

    for name, marker in (("vae_tail", "tail.done"), ("vae_flat", "flat.done")):
        continued(name, "train_vae_small.yaml", vae_args, out / "vae" / marker)

    def silence():
        from sa_jax.autoencoder import Autoencoder

        ae = Autoencoder.load(out / "vae" / "export")
        centred, z_sil = centre_on_silence(ae)
        x = np.zeros((1, ae.io_channels, 32 * ae.downsampling_ratio), np.float32)
        residual = float(np.abs(centred.encode(x, chunk_frames=None)[0][:, 8:-8]).max())
        centred, std = scale_to_unit_std(centred, out / "corpus")
        save_autoencoder(centred, out / "vae_silence", "silence.json",
                         {"z_silence": z_sil.tolist(), "residual": residual, "latent_std": std})
        log(f"[recipe] silence latent |z_sil| max {np.abs(z_sil).max():.3f}; after centring {residual:.2e}; "
            f"latent std {std:.4f} -> scale")
    stage("vae_silence", out / "vae_silence", silence)
    stage("clap", out / "clap" / "export" / "config.json",
          lambda: _train(CONFIGS / "train_clap_small.yaml", [corpus, f"checkpoint.dir={out / 'clap'}", *s["clap"]]))

    def encode(source: str, name: str):
        from sa_jax.autoencoder import Autoencoder
        from sa_jax.data import encode_dataset

        report = encode_dataset(BucketedEncoder(Autoencoder.load(out / "vae_silence")), out / source, out / name)
        log(f"[recipe] encoded {source}: {report.summary()}")
    for source, name in (("corpus", "latents"), ("corpus_long", "latents_long")):
        stage(name, out / name / "info.json", lambda source=source, name=name: encode(source, name))

    def mix():
        from sa_jax.data.latents import combine_latents

        combine_latents(out / "latents_mix", [out / "latents", out / "latents_long"])
    stage("latents_mix", out / "latents_mix" / "info.json", mix)

    def quiet(name: str, start: str):
        # a decoder fine-tuning pass of sa_jax.training.quiet from `start`'s autoencoder into `name`
        from sa_jax.autoencoder import Autoencoder
        from sa_jax.training.quiet import QuietConfig, train_quiet

        settings = s["quiet" if name == "vae_quiet" else "quieter"]
        result, ae, stats = train_quiet(Autoencoder.load(out / start), out / "latents", QuietConfig(**settings),
                                        out / f"{name}_run", print_fn=log)
        if result.preempted:
            raise SystemExit(f"[recipe] stopped by SIGTERM in the {name} stage (checkpoint saved in "
                             f"{out / f'{name}_run'}); rerun the recipe to resume")
        save_autoencoder(ae, out / name, "quiet.json", stats)
        log(f"[recipe] {name}: decode(silence) loudest frame {stats['before'][0]:.1f} -> {stats['after'][0]:.1f} "
            f"dBFS, last frame {stats['before'][1]:.1f} -> {stats['after'][1]:.1f} dBFS")
    stage("vae_quiet", out / "vae_quiet", lambda: quiet("vae_quiet", "vae_silence"))
    stage("vae_quieter", out / "vae_quieter", lambda: quiet("vae_quieter", "vae_quiet"))
    unet_args = [f"data.path={out / 'latents_mix'}", f"checkpoint.dir={out / 'unet'}",
                 f"text.path={out / 'clap' / 'export'}", f"autoencoder.path={out / 'vae_quieter'}", *s["unet"]]
    stage("unet", out / "unet" / "export" / "config.yaml",
          lambda: _train(CONFIGS / "train_unet_small.yaml", unet_args))
    continued("unet_tail", "train_unet_small.yaml", unet_args, out / "unet" / "tail.done")

    def evaluate():
        from sa_jax.eval.report import evaluate as run_eval
        from sa_jax.eval.report import table
        from sa_jax.pipeline import StableAudio

        model = StableAudio.load(out / "unet" / "export")
        # the in-domain FD and CLAP score judged by this run's own CLAP (clap/export)
        report = run_eval(model, out / "heldout", **s["eval"], clap=out / "clap" / "export", log=log)
        report["model"]["path"] = str(out / "unet" / "export")
        (out / "report.json").write_text(json.dumps(report, indent=2))
        log(table(report))
    stage("evaluate", out / "report.json", evaluate)
    return times


def run(args) -> int:
    if args.name != "small":
        raise ValueError(f"unknown recipe {args.name!r}; known: small")
    t0 = time.time()
    times = run_recipe(args.out, quick=args.quick, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"recipe {args.name} finished in {time.time() - t0:.0f} s; stages run now: {times}; "
          f"the model: {Path(args.out) / 'unet' / 'export'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("recipe", help="train the small model end to end (synth, VAE, CLAP, encode, U-Net, evaluate)")
    p.add_argument("name", choices=["small"], help="the recipe (small: configs/train_*_small.yaml)")
    p.add_argument("--out", required=True, help="run folder; rerun to resume (finished stages are skipped)")
    p.add_argument("--quick", action="store_true", help="a smoke run of every stage (minutes)")
    p.set_defaults(func=run)
