"""CLAP training on the synthetic corpus: the contrastive loss falls; a small CLAP retrieves held-out
clips by instrument far above chance; a kill -9 run resumes to the same weights as an uninterrupted
one (data order included); the export is a transformers ClapModel folder that loads as a whole CLAP
and as the SA1 frozen text conditioner; `sa-jax train` picks this trainer; bad configs are named.

The fast tests use a micro model (one Swin block per stage, one text layer). The slow ones train the
tiny config (configs/train_clap_tiny.yaml) in child processes that share a persistent XLA
compilation cache, so only the first one compiles.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from sa_jax.config import load
from sa_jax.errors import ConfigError
from sa_jax.training.clap import (
    ClapTrainConfig,
    clap_text_conditioner,
    export_clap,
    hf_state_dict,
    text_to_audio_top1,
    train_clap,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/train_clap_tiny.yaml"
# half the XLA compile time on CPU (the tests' bottleneck)
QUICK = ["xla_options={xla_backend_optimization_level: 0, xla_llvm_disable_expensive_passes: true}"]
MICRO = ["model.audio.depths=[1, 1]", "model.text.num_layers=1", *QUICK]


def corpus(root: Path, count: int, seed: int) -> Path:
    from sa_jax.data.synth import write_corpus

    if not (root / "metadata.jsonl").is_file():
        write_corpus(root, count, seed=seed, min_seconds=1.0, max_seconds=3.0)
    return root


def config(data, run_dir, *extra):
    return load(ClapTrainConfig, TINY, [f"data.path={data}", f"checkpoint.dir={run_dir}", *extra])


def losses(lines):
    return [float(line.split("loss ")[1].split()[0]) for line in lines if line.startswith("step ")]


def flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("clap_data")
    return corpus(root / "train", 48, seed=1), corpus(root / "held", 40, seed=2)


# --------------------------------------------------------------------------------------------
# Config and dispatch (no compiling)

def test_train_command_picks_the_clap_trainer():
    from sa_jax.commands.train import TRAINERS, trainer_of

    assert trainer_of(TINY) == "clap" and trainer_of(ROOT / "configs/train_clap_sa1.yaml") == "clap"
    assert TRAINERS["clap"] == ("sa_jax.training.clap", "ClapTrainConfig", "train_clap")
    paper = load(ClapTrainConfig, ROOT / "configs/train_clap_sa1.yaml")
    assert paper.model.audio.enable_fusion and paper.model.audio.depths == (2, 2, 6, 2)
    assert (paper.model.text.hidden_size, paper.model.text.num_layers, paper.model.text.vocab_size) == (768, 12, 50265)
    assert paper.epochs == 100 and paper.steps is None and paper.data.batch_size == 6144
    assert paper.data.sample_rate == paper.model.features.sample_rate == 48000


@pytest.mark.parametrize("override, message", [
    (["epochs=3"], "exactly one of steps and epochs"),
    (["data.kind=latents"], "data.kind must be 'folder' or 'tfds'"),
    (["data.sample_rate=44100"], "must equal model.features.sample_rate"),
    (["model.text.positions=absolute"], "RoBERTa-layout"),
    (["text.max_length=100"], "exceeds the text tower's 78 positions"),
    (["model.features.max_length_s=0.01"], "spectrogram frames"),
    (["model.audio.spec_size=40"], "multiple of num_mel_bins"),
])
def test_bad_configs_are_named(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, tmp_path / "run", *override)


def test_retrieval_metric():
    # 4 clips, labels a a b c; texts 0, 2, 3 find a clip of their label, text 1 finds clip 2 (label b)
    audio = np.eye(4)
    text = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0.9, 0.1], [0, 0, 0, 1]], float)
    acc, chance = text_to_audio_top1(text, audio, ["a", "a", "b", "c"])
    assert acc == 0.75 and chance == pytest.approx((0.5 + 0.5 + 0.25 + 0.25) / 4)


# --------------------------------------------------------------------------------------------
# Export: transformers ClapModel folder, whole CLAP, SA1 conditioner

def test_export_round_trip_and_text_conditioner(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from sa_jax.checkpoints.clap import import_hf_clap, load_hf_clap
    from sa_jax.encoders import Clap
    from sa_jax.models.clap import ClapConfig
    from sa_jax.testing.sat_ref import randomize, rel_err, state_dict
    from sa_jax.text_tokenizer import build_word_tokenizer

    hf = transformers.ClapConfig(
        text_config=dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=80, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0),
        audio_config=dict(window_size=4, num_mel_bins=16, spec_size=32, patch_embeds_hidden_size=8, depths=[2, 2],
                          num_attention_heads=[2, 4], hidden_size=16),
        projection_dim=12)
    ref = randomize(transformers.ClapModel(hf), seed=3).eval()
    config = ClapConfig.from_hf(ref.config.to_dict())
    variables = import_hf_clap(state_dict(ref), config)
    tok = build_word_tokenizer(["a loud bell", "soft sine flute, quiet", "instrument: plucked string"])
    tok.save_pretrained(str(tmp_path / "tok"))
    out = export_clap(config, variables, tmp_path / "export", tokenizer_folder=tmp_path / "tok")

    # Our importer reads back the same config and the same numbers.
    config2, variables2 = load_hf_clap(out)
    assert config2.text == config.text and config2.audio == config.audio
    assert config2.projection_dim == config.projection_dim
    a, b = flat(variables), flat(variables2)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # transformers loads it as a ClapModel with every tensor in place.
    again = transformers.ClapModel.from_pretrained(str(out)).eval()
    s0, s1 = ref.state_dict(), again.state_dict()
    assert set(hf_state_dict(config, variables)) == set(s0) == set(s1)     # buffers included
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k

    # The SA1 conditioner: the text tower with the exported tokenizer, layer -2, 77 tokens, a mask.
    prompts = ["a loud bell", "soft sine flute"]
    enc = clap_text_conditioner(out)
    hidden, mask = enc(prompts)
    assert hidden[-2].shape == (2, 77, 32) and mask.shape == (2, 77)
    assert np.asarray(mask).sum(1).tolist() == [5, 5]
    ids = tok(prompts, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        states = again.text_model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"],
                                  output_hidden_states=True).hidden_states
    m = np.asarray(mask)
    assert rel_err(np.asarray(hidden[-2])[m], states[-2].numpy()[m]) < 1e-4
    # The whole CLAP loads with its tokenizer too.
    clap = Clap.load(out)
    np.testing.assert_array_equal(np.asarray(clap.text_features(prompts)[0]), np.asarray(hidden[-2]))


# --------------------------------------------------------------------------------------------
# Training (micro model, in process)

def test_loss_falls_micro(data, tmp_path):
    train, _ = data
    lines = []
    cfg = config(train, tmp_path / "run", "steps=40", "log.every=10", "checkpoint.every=1000",
                 "log.memory_analysis=false", "optim.lr=3.0e-3", *MICRO)
    state = train_clap(cfg, print_fn=lines.append).state
    curve = losses(lines)
    print(f"\nmicro CLAP, 40 steps: loss every 10 steps {curve}")
    assert len(curve) == 4 and int(state.step) == 40 and int(state.bad_steps) == 0
    # ln(16) = 2.77 is the loss of an untrained model on a batch of 16; prompts name 5 instruments
    assert curve[0] > 2.4 and curve[-1] < 0.85 * curve[0], curve
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").is_file()
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    # BatchNorm statistics moved off their initial values
    assert not np.allclose(np.asarray(state.batch_stats["audio_model"]["bn0"]["mean"]), 0.0)


# --------------------------------------------------------------------------------------------
# Slow: retrieval accuracy and kill -9 resume (tiny config, child processes)

STEPS, EVERY, KILL = 200, 100, 150

CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_training_clap import QUICK, config, flat
    from sa_jax.training.clap import train_clap, embed_dataset, text_to_audio_top1
    mode, train_dir, held_dir, run, out = sys.argv[1:6]
    cfg = config(train_dir, run, "steps={steps}", "checkpoint.every={every}", "log.every=10", *QUICK)
    def kill_at(line):
        print(line, flush=True)
        if mode == "kill" and line.startswith("step {kill}/"):
            while not os.path.isdir(os.path.join(run, "checkpoints", "{every}")):   # the async save is committed
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
    state = train_clap(cfg, print_fn=kill_at).state
    v = {{"params": state.params, "batch_stats": state.batch_stats}}
    np.savez(out + ".npz", **flat(v))
    if mode == "full":
        from sa_jax.checkpoints.tokenizer import load_tokenizer
        import dataclasses
        tok = load_tokenizer(os.path.join(run, "tokenizer"))
        result = {{}}
        for name, where in (("held", held_dir), ("train", train_dir)):
            data = dataclasses.replace(cfg.data, path=where, p_key_value=0.0)
            t, a, labels = embed_dataset(cfg.model, v, tok, data, cfg.text.max_length, labels_key="instrument")
            result[name] = text_to_audio_top1(t, a, labels) + (len(labels),)
        json.dump(result, open(out + ".json", "w"))
""").format(tests=str(ROOT / "tests"), steps=STEPS, every=EVERY, kill=KILL)


def child(mode, train, held, run, out, cache):
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return subprocess.run([sys.executable, "-c", CHILD, mode, str(train), str(held), str(run), str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    train, held = data
    root = tmp_path_factory.mktemp("clap_full")
    proc = child("full", train, held, root / "run", root / "out", root / "xla_cache")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc.stdout.splitlines()


@pytest.mark.slow
def test_retrieval_far_above_chance(full_run):
    root, lines = full_run
    curve = losses(lines)
    result = json.loads((root / "out.json").read_text())
    acc, chance, n = result["held"]
    print(f"\nloss {curve[0]:.3f} -> {curve[-1]:.3f}; held-out text->audio top-1 {acc:.3f} vs chance {chance:.3f} "
          f"({n} clips); training clips {result['train'][0]:.3f}")
    assert n == 40 and curve[-1] < 0.6 * curve[0], curve
    assert acc >= 0.8 and acc >= 3 * chance, result


@pytest.mark.slow
def test_kill9_then_resume_matches_uninterrupted(data, full_run, tmp_path):
    from sa_jax.checkpoints.clap import load_hf_clap

    train, held = data
    root, _ = full_run
    run = tmp_path / "run"
    proc = child("kill", train, held, run, tmp_path / "killed", root / "xla_cache")
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"step {KILL}/" in proc.stdout
    assert sorted(os.listdir(run / "checkpoints")) == [str(EVERY)]
    proc = child("resume", train, held, run, tmp_path / "resumed", root / "xla_cache")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resumed from {run}/checkpoints/{EVERY}" in proc.stdout
    full, resumed = np.load(root / "out.npz"), np.load(tmp_path / "resumed.npz")
    assert sorted(full.files) == sorted(resumed.files)
    for k in full.files:
        np.testing.assert_array_equal(full[k], resumed[k], err_msg=k)
    # the export of the resumed run holds the same weights
    _, variables = load_hf_clap(run / "export")
    for k, v in flat(variables).items():
        np.testing.assert_array_equal(v, full[k], err_msg=k)


SHARDED = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_training_clap import MICRO, config, flat
    from sa_jax.training.clap import train_clap
    train_dir, run, out, devices = sys.argv[1:5]
    cfg = config(train_dir, run, "steps=10", "log.every=5", "checkpoint.every=1000", f"mesh.shape=[{{devices}}, 1]",
                 *MICRO)
    state = train_clap(cfg).state
    np.savez(out, **flat({{"params": state.params, "batch_stats": state.batch_stats}}))
""").format(tests=str(ROOT / "tests"))


@pytest.mark.slow
def test_sharded_over_two_devices_matches_one(data, tmp_path):
    """The same 10 steps with the batch split over 2 (simulated CPU) devices: the contrastive loss and
    BatchNorm statistics span the global batch, so losses and weights agree with one device."""
    train, _ = data
    out = {}
    for n in (1, 2):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        proc = subprocess.run([sys.executable, "-c", SHARDED, str(train), str(tmp_path / f"run{n}"),
                               str(tmp_path / f"out{n}.npz"), str(n)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"mesh {{'data': {n}, 'fsdp': 1}} on {n} devices" in proc.stdout
        out[n] = (losses(proc.stdout.splitlines()), np.load(tmp_path / f"out{n}.npz"))
    (l1, w1), (l2, w2) = out[1], out[2]
    print(f"\nlosses, 1 device {l1}, 2 devices {l2}")
    np.testing.assert_allclose(l2, l1, rtol=1e-4)
    # Attention key biases have an exactly zero gradient (q.b_k is the same for every key, softmax ignores
    # it), so Adam turns rounding noise into +-lr steps there: their values say nothing about sharding.
    keys = [k for k in w1.files if not ("key']['bias']" in k or "attention_key']['bias']" in k)]
    assert len(keys) < len(w1.files)
    worst = max(float(np.abs(w1[k] - w2[k]).max() / max(np.abs(w1[k]).max(), 1e-6)) for k in keys)
    print(f"largest relative weight difference after 10 steps (key biases aside): {worst:.2e}")
    assert worst < 1e-4
