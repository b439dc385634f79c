"""`sa-jax ablate`: the spec (grid x variants expansion, names, every error before anything runs), a
sampling-only study of a tiny random model run as a user runs it, the table and plots from known results,
shards, and (slow) a training study resumed after kill -9 mid-variant.

The tiny model: configs/train_unet_tiny.yaml's U-Net with the tiny random CLAP of test_clap_api and a random
Oobleck VAE of 2048x, so its 32-frame window is 1.49 s at 44.1 kHz: long enough for the evaluation's timing
(1 s requests) and adherence clips. Its numbers mean nothing; the tests check the plumbing (which run wrote
which row) and, for resume, that the weights of a resumed run equal an uninterrupted one's bitwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from sa_jax.ablate.collect import direction
from sa_jax.ablate.run import parse_shard, shard_items
from sa_jax.ablate.spec import build_spec, folder_name, load_spec
from sa_jax.cli import main
from sa_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
FRAMES, RATIO, SR = 32, 2048, 44100
VAE = {"encoder": {"type": "oobleck", "config": {"in_channels": 2, "channels": 4, "c_mults": [1, 1, 1, 1],
                                                 "strides": [4, 8, 8, 8], "latent_dim": 16, "use_snake": True}},
       "decoder": {"type": "oobleck", "config": {"out_channels": 2, "channels": 4, "c_mults": [1, 1, 1, 1],
                                                 "strides": [4, 8, 8, 8], "latent_dim": 8, "use_snake": True,
                                                 "final_tanh": False}},
       "latent_dim": 8, "downsampling_ratio": RATIO, "io_channels": 2, "sample_rate": SR}
# The evaluation made small: 1 timing generation, 28 adherence generations (one per value) in one batch.
EVALUATE = {"timing_lengths": 1, "timing_prompts": ["sine flute"], "per_value": 1, "recon_clips": 2,
            "recon_seconds": 0.5, "classifier_clips": 10, "batch": 32}
# Timing and paths: what differs between two runs of the same item.
NOT_COMPARED = ("seconds", "train_seconds", "eval_seconds", "model.path")


def write_latents(root: Path, count: int = 6) -> Path:
    """Structured latents for the VAE above (8 channels, 12-32 frames) in the `sa-jax encode` layout."""
    (root / "latents").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        frames = int(rng.integers(12, FRAMES + 1))
        z = np.sin(2 * np.pi * rng.uniform(0.05, 0.4, (8, 1)) * np.arange(frames) + rng.uniform(0, 6, (8, 1)))
        np.save(root / "latents" / f"clip{i}.npy", z.astype(np.float32))
        rows.append({"latents": f"latents/clip{i}.npy", "relpath": f"clip{i}.wav", "samples": frames * RATIO,
                     "frames": frames, "metadata_json": json.dumps({"description": f"clip {i}"})})
    (root / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "info.json").write_text(json.dumps({
        "format": "sa-jax-latents", "version": 1, "sample_rate": SR, "downsampling_ratio": RATIO, "latent_dim": 8,
        "channels": 2, "count": count, "source": "synthetic"}))
    return root


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny whole model (sampling-only studies), its parts (training studies), latents, a held-out corpus."""
    from finetune_util import random_like, tiny_params
    from test_clap_api import clap_folder

    from sa_jax import StableAudio
    from sa_jax.autoencoder import Autoencoder
    from sa_jax.encoders import load_clap_text_encoder
    from sa_jax.families.sa1 import SA1Family
    from sa_jax.models.autoencoder import AudioAutoencoder, config_from_dict

    root = tmp_path_factory.mktemp("ablate")
    _, _, clap = clap_folder(str(root))
    config = config_from_dict(VAE)
    x = jax.ShapeDtypeStruct((1, RATIO, 2), np.float32)
    shapes = jax.eval_shape(lambda x: AudioAutoencoder(config).init(jax.random.key(0), x, jax.random.key(0)), x)
    ae = Autoencoder(config, random_like(shapes["params"], 7))
    ae.save(root / "vae")
    model, params = tiny_params("train_unet_tiny.yaml", 0)
    text = load_clap_text_encoder(clap, clap, max_length=model.text_tokens)
    family = SA1Family(model.unet, params["denoiser"], params["conditioner"], text, -2, (model.timing, model.timing))
    StableAudio(family, ae, FRAMES * RATIO).save(root / "model")
    assert main(["synth", "--out", str(root / "heldout"), "--count", "4", "--seed", "1", "--min-seconds", "0.5",
                 "--max-seconds", "1"]) == 0
    write_latents(root / "latents")
    return {"root": root, "clap": clap, "vae": root / "vae", "model": root / "model", "heldout": root / "heldout",
            "latents": root / "latents"}


def write_spec(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ablate(*args, timeout=900) -> subprocess.CompletedProcess:
    """`sa-jax ablate ...` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "sa_jax.cli", "ablate", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def rows(out: Path) -> list[dict]:
    found = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in NOT_COMPARED} for r in found]


# ------------------------------------------------------------------ the spec


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "heldout").mkdir()
    (tmp_path / "heldout" / "metadata.jsonl").write_text('{"duration_s": 1.0}\n')
    return str(tmp_path / "heldout")


def test_grid_times_variants_expansion_order_and_names(tmp_path, corpus):
    spec = build_spec({"base": {"model": str(tmp_path)},
                       "grid": {"sample.cfg_scale": [3, 6.0], "sample.steps": [25, 50]},
                       "variants": {"baseline": [], "other": [f"model={tmp_path}", "sample.sampler=dpmpp-2m"]},
                       "seeds": [0, 1], "evaluate": {"corpus": corpus, "steps": 4}})
    assert spec.variants == [f"{v}__sample.cfg_scale={c}__sample.steps={s}" for v in ("baseline", "other")
                             for c in ("3", "6.0") for s in ("25", "50")]
    assert [(i.name, i.seed) for i in spec.items] == [(v, s) for v in spec.variants for s in (0, 1)]
    item = spec.items[-1]
    assert item.overrides == [f"model={tmp_path}", "sample.sampler=dpmpp-2m", "sample.cfg_scale=6.0",
                              "sample.steps=50"]
    assert item.sample == {"sampler": "dpmpp-2m", "cfg_scale": 6.0, "steps": 50} and item.model == str(tmp_path)
    assert spec.items[0].sample == {"cfg_scale": 3, "steps": 25} and spec.items[0].model == str(tmp_path)
    # the grid alone, the variants alone
    grid_only = build_spec({"base": {"model": str(tmp_path)}, "grid": {"sample.steps": [1, 2]},
                            "evaluate": {"corpus": corpus}})
    assert grid_only.variants == ["sample.steps=1", "sample.steps=2"] and [i.seed for i in grid_only.items] == [0, 0]
    named = build_spec({"base": {"model": str(tmp_path)}, "variants": {"a": [], "b": ["sample.steps=3"]},
                        "seeds": [5], "evaluate": {"corpus": corpus}})
    assert named.variants == ["a", "b"] and named.items[1].sample == {"steps": 3}


def test_training_items_carry_seed_and_run_directory(tmp_path, corpus):
    base = ["text.source=clap", "text.path=/clap", "autoencoder.path=/vae"]
    spec = build_spec({"base": {"train": "configs/train_unet_tiny.yaml", "overrides": base},
                       "grid": {"optim.lr": [1e-3, "2e-4"]}, "seeds": [3], "evaluate": {"corpus": corpus}},
                      out=tmp_path)
    assert spec.variants == ["optim.lr=0.001", "optim.lr=2e-4"]
    from sa_jax.ablate.run import job_of

    job = job_of(spec, spec.items[1], tmp_path)
    tool = ["seed=3", f"checkpoint.dir={tmp_path.resolve()}/optim.lr=2e-4/seed3/run"]
    assert job["train_stages"] == [[*base, "optim.lr=2e-4", *tool]]
    assert job["train"] == str(ROOT / "configs" / "train_unet_tiny.yaml")

    # base.then: the run continues in the same directory, each stage's overrides on top of the item's
    tail = ["steps=400", "diffusion.timestep_shift=1"]
    staged = build_spec({**spec.data, "base": {**spec.data["base"], "then": [tail]}}, out=tmp_path)
    assert job_of(staged, staged.items[1], tmp_path)["train_stages"] == [
        [*base, "optim.lr=2e-4", *tool], [*base, "optim.lr=2e-4", *tail, *tool]]


def test_a_staged_run_trains_each_stage_once_and_resumes_at_the_unfinished_one(tmp_path, monkeypatch):
    """The worker trains stage after stage in one run directory, marks each finished one, and after a
    stop trains only the stages not marked (a finished stage's checkpoint is past its steps)."""
    import sa_jax.pipeline
    import sa_jax.training
    from sa_jax.ablate import worker
    from sa_jax.training.engine import RunResult

    run = tmp_path / "run"
    trained, stop_at = [], {1}

    def fake_train(cfg):
        trained.append(cfg.steps)
        (run / "export").mkdir(parents=True, exist_ok=True)
        return RunResult(None, cfg.steps, len(trained) - 1 in stop_at, run / "export")

    monkeypatch.setattr(sa_jax.training, "train", fake_train)
    monkeypatch.setattr(sa_jax.pipeline.StableAudio, "load", staticmethod(lambda path, **_: f"model at {path}"))
    common = ["text.source=clap", "text.path=/c", "autoencoder.path=/v", "seed=0", f"checkpoint.dir={run}"]
    job = {"train": str(ROOT / "configs" / "train_unet_tiny.yaml"),
           "train_stages": [["steps=4", *common], ["steps=6", *common], ["steps=9", *common]]}
    assert worker.trained_model(job) is None               # stopped (SIGTERM) in the second stage
    assert trained == [4, 6] and sorted(p.name for p in run.glob("stage*.done")) == ["stage0.done"]
    stop_at.clear()
    assert worker.trained_model(job) == ("model at " + str(run / "export"), str(run / "export"))
    assert trained == [4, 6, 6, 9] and len(list(run.glob("stage*.done"))) == 3
    assert worker.trained_model(job)[1] == str(run / "export") and trained == [4, 6, 6, 9]   # all done


def test_folder_names_are_safe_and_stable():
    assert folder_name("data.path=/x/y latents") == "data.path=_x_y_latents"
    long = "v__" + "__".join(f"model.unet.key{i}=value{i}" for i in range(20))
    assert len(folder_name(long)) == 120 and folder_name(long) == folder_name(long)
    assert folder_name(long) != folder_name(long + "x")


def test_shards_split_the_fixed_list(tmp_path, corpus):
    spec = build_spec({"base": {"model": str(tmp_path)}, "grid": {"sample.steps": [1, 2, 3]}, "seeds": [0, 1],
                       "evaluate": {"corpus": corpus}})
    parts = [[k for k, _ in shard_items(spec, (i, 3))] for i in (1, 2, 3)]
    assert parts == [[0, 3], [1, 4], [2, 5]]
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard("3/2")


def test_metric_directions():
    assert direction("timing.median_abs_error_s") == "lower"
    assert direction("reconstruction.stft_distance") == "lower"
    assert direction("adherence.instrument.accuracy") == "higher"
    assert direction("adherence.instrument.p_value") == "lower"
    assert direction("distribution.clap_score.value") == "higher"
    assert direction("distribution.fd_clap.value") == "lower"
    assert direction("reconstruction.silence_rms_db") is None
    assert direction("reconstruction.silence_rms_db", {"reconstruction": "lower"}) == "lower"


def spec_errors(tmp, corpus):
    """(spec text, words the one-line error must hold) for each kind of bad spec."""
    model = f"base: {{model: {tmp}}}\nevaluate: {{corpus: {corpus}}}\n"
    train = ("base: {train: configs/train_unet_tiny.yaml, overrides: [text.source=clap, text.path=/c, "
             f"autoencoder.path=/v]}}\nevaluate: {{corpus: {corpus}}}\n")
    return [
        (model + "grid: {sample.steps: [1]}\ngrids: {}\n", ["unknown key", "grids"]),
        (model + "grid: {sample.steps: []}\n", ["grid.sample.steps", "non-empty list"]),
        (model + "grid: {sample.cfg_scale: [6, 6.0]}\n", ["grid.sample.cfg_scale", "6 and 6.0 are the same value"]),
        (model + "grid: {sample.steps: [2, 3, 2]}\n", ["grid.sample.steps", "2 is listed twice"]),
        (model + "variants: {a: [sample.steps]}\n", ["variants.a", "key=value"]),
        (model + "variants:\n  a: []\n  a: [sample.steps=2]\n", ["line 5", "'a'", "twice"]),
        (model + "variants: {a: [optim.lr=1e-4]}\n", ["variant a", "training override"]),
        (model + "variants: {a: [sample.nonsense=1]}\n", ["sample.nonsense", "takes no `nonsense`"]),
        (model + "variants: {a: [sample.seed=1]}\n", ["sample.seed", "set by the tool"]),
        (model + "grid: {sample.steps: [1]}\nseeds: [0, 0]\n", ["seeds", "twice"]),
        (model.replace(corpus, str(tmp)) + "grid: {sample.steps: [1]}\n", ["evaluate.corpus", "metadata.jsonl"]),
        (f"base: {{model: {tmp}, train: x}}\nevaluate: {{corpus: {corpus}}}\ngrid: {{a: [1]}}\n",
         ["base", "exactly one"]),
        (train.replace("configs/train_unet_tiny.yaml", "no_such_config") + "grid: {steps: [2]}\n",
         ["base.train", "no_such_config"]),
        (train + "variants: {fast: [optim.lr=fast]}\n", ["variant fast", "optim.lr=fast", "number"]),
        (train + "variants: {a: [model=/x]}\n", ["variant a", "sampling-only"]),
        (train + "variants: {a: [checkpoint.dir=/x]}\n", ["variant a", "the tool sets `checkpoint.dir`"]),
        (train.replace("text.source=clap, ", "") + "grid: {steps: [2]}\n", ["export", "text.source"]),
        (model + "variants: {a: []}\nbetter: {timing.median: down}\n", ["better.timing.median", "lower or higher"]),
        (model.replace("}\nevaluate", ", then: [[steps=9]]}\nevaluate", 1) + "variants: {a: []}\n",
         ["base.then", "need base.train"]),
        (train.replace("]}\n", "], then: [steps=9]}\n", 1) + "variants: {a: []}\n",
         ["base.then", "a list of stages"]),
        (train.replace("]}\n", "], then: [[sample.steps=9]]}\n", 1) + "variants: {a: []}\n",
         ["base.then[0]", "training overrides only"]),
        (train.replace("]}\n", "], then: [[steps=2]]}\n", 1) + "variants: {a: [steps=5]}\n",
         ["variant a", "base.then[0] trains to step 2, not past the stage before it (step 5)"]),
        (model.replace(f"{corpus}}}", f"{corpus}, evaluations: [timing, fad]}}") + "variants: {a: []}\n",
         ["evaluate.evaluations: 'fad'", "each of reconstruction, timing, adherence, distribution"]),
        (model.replace(f"{corpus}}}", f"{corpus}, evaluations: [distribution]}}") + "variants: {a: []}\n",
         ["evaluate.evaluations names 'distribution' but no embedder is given"]),
    ]


def test_every_spec_error_is_one_line_exit_2_before_anything_runs(tmp_path, corpus, capsys):
    for i, (text, words) in enumerate(spec_errors(tmp_path, corpus)):
        spec = tmp_path / f"bad{i}.yaml"
        spec.write_text(text)
        out = tmp_path / f"out{i}"
        assert main(["ablate", str(spec), "--out", str(out)]) == 2, text
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("sa-jax ablate: error: "), err
        for word in words:
            assert word in err, (word, err)
        assert not out.exists()


def test_a_bad_spec_as_a_command(tmp_path, corpus):
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"base: {{model: {tmp_path}}}\nevaluate: {{corpus: {corpus}}}\ngrid: {{sample.steps: []}}\n")
    result = ablate(spec, "--out", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"sa-jax ablate: error: {spec}: grid.sample.steps: expected a non-empty list of values, got []"]
    result = ablate(spec, "--out", tmp_path / "out", "--shard", "0/2")
    assert result.returncode == 2 and "--shard '0/2'" in result.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ results, table, plots


def test_collect_table_marks_the_best_and_plots_each_metric(tmp_path, corpus):
    """Results written by hand: the table's mean +- spread (one seed: the value; two: min to max; three:
    the standard deviation), the best per column in bold by its direction, a PNG per metric, missing named;
    the corpus need not exist to collect."""
    spec_path = write_spec(tmp_path / "spec.yaml", {
        "name": "by hand", "base": {"model": str(tmp_path)}, "grid": {"sample.cfg_scale": [3, 6]},
        "variants": {"a": [], "b": ["sample.steps=9"]}, "seeds": [0, 1, 2], "evaluate": {"corpus": corpus},
        "better": {"reconstruction.silence_rms_db": "lower"}})
    spec = load_spec(spec_path)
    out = tmp_path / "out"
    errors = {"a__sample.cfg_scale=3": [1.0, 2.0, 3.0], "a__sample.cfg_scale=6": [0.5, 1.5],
              "b__sample.cfg_scale=3": [4.0], "b__sample.cfg_scale=6": [2.0, 2.0, 2.0]}
    for item in spec.items:
        values = errors[item.name]
        if item.seed >= len(values):
            continue   # missing
        folder = item.folder(out)
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({
            "variant": item.name, "seed": item.seed, "overrides": item.overrides, "seconds": 10.0,
            "settings": {"seed": item.seed}, "timing": {"median_abs_error_s": values[item.seed], "count": 4,
                                                        "items": [{"measured": 1.0}]},
            "adherence": {"stereo": {"accuracy": 0.5 + values[item.seed] / 10, "chance": 1 / 3}},
            "reconstruction": {"silence_rms_db": -values[item.seed]}}))
    shutil.rmtree(corpus)   # collecting needs the results alone (e.g. copied to another machine)
    assert main(["ablate", str(spec_path), "--out", str(out), "--collect"]) == 0
    table = (out / "results.md").read_text()
    assert "| variant | seeds | timing.median_abs_error_s ↓ | adherence.stereo.accuracy ↑ | " \
           "reconstruction.silence_rms_db ↓ |" in table
    assert "| a__sample.cfg_scale=3 | 0, 1, 2 | 2 ± 1 | 0.7 ± 0.1 | -2 ± 1 |" in table
    assert "| a__sample.cfg_scale=6 | 0, 1 | **1 (0.5 to 1.5)** | 0.6 (0.55 to 0.65) | -1 (-1.5 to -0.5) |" in table
    assert "| b__sample.cfg_scale=3 | 0 | 4 | **0.9** | **-4** |" in table
    assert "| b__sample.cfg_scale=6 | 0, 1, 2 | 2 ± 0 | 0.7 ± 0 | -2 ± 0 |" in table
    assert "Missing (3): a__sample.cfg_scale=6 seed 2, b__sample.cfg_scale=3 seed 1, b__sample.cfg_scale=3 seed 2" \
        in table
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 9 and lines[0] == {
        "variant": "a__sample.cfg_scale=3", "seed": 0, "overrides": ["sample.cfg_scale=3"], "seconds": 10.0,
        "settings.seed": 0.0, "timing.median_abs_error_s": 1.0, "timing.count": 4.0, "adherence.stereo.accuracy": 0.6,
        "adherence.stereo.chance": 1 / 3, "reconstruction.silence_rms_db": -1.0}
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert plots == ["adherence.stereo.accuracy.png", "reconstruction.silence_rms_db.png",
                     "timing.median_abs_error_s.png"]
    assert all((out / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)


# ------------------------------------------------------------------ a sampling-only study, run as a user does


def sampling_spec(tmp_path, assets, **extra) -> Path:
    return write_spec(tmp_path / "sampling.yaml", {
        "name": "cfg", "base": {"model": str(assets["model"])}, "grid": {"sample.cfg_scale": [3, 6]}, "seeds": [0, 1],
        "evaluate": {"corpus": str(assets["heldout"]), "steps": 2, **EVALUATE}, **extra})


@pytest.fixture(scope="module")
def sampled(assets, tmp_path_factory):
    """The sampling-only study, run once: (spec, out, the command's result)."""
    tmp = tmp_path_factory.mktemp("sampled")
    spec = sampling_spec(tmp, assets)
    return spec, tmp / "out", ablate(spec, "--out", tmp / "out")


def test_sampling_only_study_writes_results_table_and_plots(sampled):
    spec, out, result = sampled
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 runs in this shard, 0 already done, 4 to run" in result.stdout
    assert (out / "spec.yaml").read_text() == spec.read_text()
    found = rows(out)
    assert [(r["variant"], r["seed"]) for r in found] == [("sample.cfg_scale=3", 0), ("sample.cfg_scale=3", 1),
                                                          ("sample.cfg_scale=6", 0), ("sample.cfg_scale=6", 1)]
    for r in found:   # each row is its own run's evaluation: its CFG scale and seed
        assert r["settings.cfg_scale"] == float(r["variant"][-1]) and r["settings.seed"] == r["seed"]
        assert r["overrides"] == [r["variant"]] and np.isfinite(r["timing.median"])
        report = json.loads((out / r["variant"] / f"seed{r['seed']}" / "result.json").read_text())
        assert report["variant"] == r["variant"] and report["seconds"] > 0 and report["adherence"]["items"]
    table = (out / "results.md").read_text()
    assert table.startswith("# cfg\n")
    assert "| sample.cfg_scale=3 | 0, 1 |" in table and "| sample.cfg_scale=6 | 0, 1 |" in table
    assert (out / "plots" / "seconds.png").is_file()


def test_a_finished_study_reruns_nothing_and_refuses_another_spec(sampled, assets, tmp_path):
    spec, out, _ = sampled
    before = (out / "sample.cfg_scale=3" / "seed0" / "result.json").read_text()
    result = ablate(spec, "--out", out)
    assert result.returncode == 0 and "4 already done, 0 to run" in result.stdout, result.stdout + result.stderr
    assert (out / "sample.cfg_scale=3" / "seed0" / "result.json").read_text() == before
    other = sampling_spec(tmp_path, assets, seeds=[0])
    result = ablate(other, "--out", out)
    assert result.returncode == 2 and "holds the results of another spec" in result.stderr
    dry = ablate(other, "--out", out, "--dry-run")
    assert dry.returncode == 0 and dry.stdout.splitlines()[1:] == [
        "   0  sample.cfg_scale=3  seed 0  done  sample.cfg_scale=3",
        "   1  sample.cfg_scale=6  seed 0  done  sample.cfg_scale=6"]


def test_dry_run_lists_each_shard(sampled, assets, tmp_path):
    spec, _, _ = sampled
    result = ablate(spec, "--out", tmp_path / "new", "--dry-run", "--shard", "2/2")
    assert result.returncode == 0 and result.stdout.splitlines() == [
        f"2 of 4 runs (shard 2/2), sampling {assets['model']}",
        "   1  sample.cfg_scale=3  seed 1  todo  sample.cfg_scale=3",
        "   3  sample.cfg_scale=6  seed 1  todo  sample.cfg_scale=6"]
    assert not (tmp_path / "new").exists()


def test_two_shards_then_collect_equal_one_run(sampled, tmp_path):
    spec, whole, _ = sampled
    out = tmp_path / "sharded"
    first = ablate(spec, "--out", out, "--shard", "1/2")
    assert first.returncode == 0
    assert "missing 2 of 4: sample.cfg_scale=3 seed1, sample.cfg_scale=6 seed1" in first.stdout
    assert ablate(spec, "--out", out, "--shard", "2/2").returncode == 0
    collected = ablate(spec, "--out", out, "--collect")
    assert collected.returncode == 0 and "missing" not in collected.stdout
    assert rows(out) == rows(whole)


# ------------------------------------------------------------------ a training study, killed and resumed


def training_spec(tmp_path, assets, steps: int) -> Path:
    overrides = [f"data.path={assets['latents']}", f"data.latent_window={FRAMES}", f"data.window={FRAMES * RATIO}",
                 "data.batch_size=2", "data.num_threads=1", "data.shard_index=0", "data.shard_count=1",
                 "text.source=clap", f"text.path={assets['clap']}", f"autoencoder.path={assets['vae']}",
                 f"steps={steps}", "checkpoint.every=2", "checkpoint.async_save=false", "log.every=2"]
    return write_spec(tmp_path / "train.yaml", {   # a two-stage run: a schedule's tail, as the study's recipe
        "name": "lr", "base": {"train": "train_unet_tiny", "overrides": overrides,
                               "then": [[f"steps={steps + 4}", "optim.lr=5e-4"]]},
        "variants": {"base": [], "fast": ["optim.lr=3e-3"]}, "seeds": [0],
        "evaluate": {"corpus": str(assets["heldout"]), "steps": 2, **EVALUATE}})


def committed_checkpoint(run: Path) -> bool:
    folder = run / "checkpoints"
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def export_leaves(run: Path) -> list:
    from sa_jax import StableAudio

    family = StableAudio.load(run / "export").family
    return [np.asarray(x) for x in jax.tree.leaves((family.unet_params, family.timing_params))]


@pytest.mark.slow   # five training processes of a tiny U-Net and their evaluations: several minutes on 2 cores
def test_training_study_resumes_after_kill_9_and_equals_an_uninterrupted_one(assets, tmp_path):
    spec = training_spec(tmp_path, assets, steps=12)
    whole = tmp_path / "whole"
    result = ablate(spec, "--out", whole)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (whole / "base" / "seed0" / "run" / "export" / "config.yaml").is_file()

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "sa_jax.cli", "ablate", str(spec), "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 900
    while not ((out / "base" / "seed0" / "result.json").is_file()
               and committed_checkpoint(out / "fast" / "seed0" / "run")):
        assert proc.poll() is None and time.time() < deadline, "the study ended before the kill"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)   # the study and its worker, as a machine that dies
    proc.wait()
    assert not (out / "fast" / "seed0" / "result.json").exists()

    result = ablate(spec, "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 runs in this shard, 1 already done, 1 to run" in result.stdout
    assert "resumed from" in (out / "fast" / "seed0" / "log.txt").read_text()
    assert rows(out) == rows(whole)
    for variant in ("base", "fast"):
        resumed, uninterrupted = (export_leaves(d / variant / "seed0" / "run") for d in (out, whole))
        for a, b in zip(resumed, uninterrupted, strict=True):
            np.testing.assert_array_equal(a, b)


def test_the_example_spec_is_valid(corpus):
    """configs/ablations/example_tiny.yaml (packaged: `sa-jax configs` lists it) passes the spec's checks,
    its evaluation arguments included, with its relative paths made absolute here."""
    from sa_jax.ablate.spec import read_spec

    data = read_spec("ablations/example_tiny")
    data["base"]["model"] = str(ROOT / data["base"]["model"])
    data["evaluate"]["corpus"] = corpus
    spec = build_spec(data)
    assert len(spec.items) == 2 * 2 * 2 and spec.items[0].sample == {"cfg_scale": 3, "steps": 8}


@pytest.mark.parametrize("study", sorted(p.stem for p in (ROOT / "configs" / "ablations").glob("small_*.yaml")))
def test_the_study_specs_read_and_expand(study):
    """#22's specs (their data lives in runs/study, so the checks that need it are left out: strict=False)."""
    from sa_jax.ablate.spec import read_spec

    spec = build_spec(read_spec(f"ablations/{study}"), strict=False)
    assert spec.items and spec.name == study


def test_a_sigterm_outside_the_training_loop_stops_the_study(tmp_path, corpus, monkeypatch):
    """SIGTERM while a worker loads or evaluates (it dies by the signal, exit -15, not the trainer's 143):
    the study stops and starts no later run, as it does when the trainer saves and stops."""
    import threading

    from sa_jax.ablate import run as ablate_run

    fake = tmp_path / "python"   # a worker that is busy until a signal ends it
    fake.write_text(f"#!/bin/sh\ntouch {tmp_path}/started\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    spec_path = write_spec(tmp_path / "train.yaml", {
        "base": {"train": "configs/train_unet_tiny.yaml",
                 "overrides": ["text.source=clap", "text.path=/clap", "autoencoder.path=/vae"]},
        "variants": {"a": [], "b": ["optim.lr=2e-4"]}, "evaluate": {"corpus": corpus}})
    out = tmp_path / "out"
    spec = load_spec(spec_path, out)

    original = signal.getsignal(signal.SIGTERM)

    def terminate_when_started():   # once the worker runs and the study has its handler (never the default's kill)
        deadline = time.time() + 30
        while not ((tmp_path / "started").exists() and signal.getsignal(signal.SIGTERM) is not original):
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)   # as a scheduler stopping the study

    said = []
    threading.Thread(target=terminate_when_started, daemon=True).start()
    t0 = time.time()
    assert ablate_run.run_study(spec, spec_path, out, print_fn=said.append) == ablate_run.PREEMPTED
    assert time.time() - t0 < 30
    assert any("stopped by SIGTERM" in s for s in said), said
    assert (out / "a" / "seed0" / "job.json").is_file() and not (out / "b" / "seed0" / "job.json").exists()


def test_collect_needs_no_training_config(tmp_path):
    """`--collect` of a training study where neither its training config nor its corpus exists (the results
    copied to another machine): the table comes from the result.json files alone."""
    spec_path = write_spec(tmp_path / "spec.yaml", {
        "base": {"train": str(tmp_path / "elsewhere" / "my_train.yaml")}, "variants": {"a": [], "b": ["optim.lr=1e-4"]},
        "evaluate": {"corpus": str(tmp_path / "elsewhere" / "heldout")}})
    out = tmp_path / "out"
    for name, error in (("a", 0.5), ("b", 0.25)):
        (out / name / "seed0").mkdir(parents=True)
        (out / name / "seed0" / "result.json").write_text(json.dumps({
            "variant": name, "seed": 0, "overrides": [], "timing": {"median": error}}))
    assert main(["ablate", str(spec_path), "--out", str(out), "--collect"]) == 0
    assert "| b | 0 | **0.25** |" in (out / "results.md").read_text()
    assert main(["ablate", str(spec_path), "--out", str(out)]) == 2   # running it still needs the config


def test_collect_refuses_a_spec_other_than_the_recorded_one(tmp_path):
    """`sa-jax ablate SPEC --out DIR --collect` where DIR/spec.yaml is another spec: exit 2, one line saying so and
    how to collect with the recorded one, nothing written; the recorded spec itself (or an equal one) collects."""
    def spec(tmp_path, name, grid):
        return write_spec(tmp_path / name, {"base": {"model": str(tmp_path / "m")}, "grid": {"sample.cfg_scale": grid},
                                            "evaluate": {"corpus": str(tmp_path / "heldout")}})
    out = tmp_path / "out"
    recorded = spec(tmp_path, "recorded.yaml", [3, 6])
    out.mkdir()
    shutil.copy(recorded, out / "spec.yaml")
    for value in (3, 6):
        (out / f"sample.cfg_scale={value}" / "seed0").mkdir(parents=True)
        (out / f"sample.cfg_scale={value}" / "seed0" / "result.json").write_text(json.dumps({
            "variant": f"sample.cfg_scale={value}", "seed": 0, "overrides": [], "timing": {"median": value / 10}}))
    other = spec(tmp_path, "other.yaml", [3, 7])
    result = ablate(other, "--out", out, "--collect")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"sa-jax ablate: error: {out} holds the results of another spec ({out / 'spec.yaml'} differs from {other}); "
        f"collect with the spec the study ran: `sa-jax ablate {out / 'spec.yaml'} --out {out} --collect`"]
    assert not (out / "results.md").exists()
    result = ablate(out / "spec.yaml", "--out", out, "--collect")
    assert result.returncode == 0, result.stderr
    assert "| sample.cfg_scale=3 | 0 | **0.3** |" in (out / "results.md").read_text()
