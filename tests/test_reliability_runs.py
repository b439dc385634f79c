"""Run directories and checkpoints do not lose data (issue 17, items 1, 2, 3, 10):
`--overwrite` replaces only what sa-jax wrote, one trainer holds a run directory at a time (a stale lock
of a killed trainer is taken over), a rejected resume changes nothing in the run directory and an accepted
one names the settings that changed, and a disk that fills during a save stops the run at that save."""

import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from training_util import tiny_overrides, write_latents

from sa_jax.config import load
from sa_jax.errors import ConfigError, TrainingError
from sa_jax.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SA_JAX = Path(sys.executable).parent / "sa-jax"


def config(latents, run_dir, **extra):
    extra = {"steps": 10, "checkpoint.every": 5, "optim.lr": 3e-3, **extra}
    return load(TrainConfig, ROOT / "configs/train_dit_tiny.yaml", tiny_overrides(latents, run_dir, **extra))


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return write_latents(tmp_path_factory.mktemp("reliability") / "latents", count=4)


# ---------------------------------------------------------------------------------------------
# 1. --overwrite replaces only an sa-jax checkpoint


def test_convert_overwrite_refuses_a_folder_sa_jax_did_not_write(tmp_path, capsys):
    import torch
    from diffusers import AutoencoderOobleck

    from sa_jax.checkpoints import store
    from sa_jax.cli import main

    torch.manual_seed(0)
    source = tmp_path / "vae"
    AutoencoderOobleck(encoder_hidden_size=8, downsampling_ratios=[2, 4], channel_multiples=[1, 2],
                       decoder_channels=8, decoder_input_channels=4, audio_channels=2,
                       sampling_rate=44100).save_pretrained(source)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("my notes")
    plain = tmp_path / "plain.txt"
    plain.write_text("a file")
    for out in (notes, plain):
        assert main(["convert", str(source), str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert str(out) in err and "not an sa-jax checkpoint" in err, err
        with pytest.raises(FileExistsError, match="not an sa-jax checkpoint"):
            store.save(out, {"model_type": "test"}, {"w": np.ones(3, np.float32)}, overwrite=True)
    assert (notes / "todo.txt").read_text() == "my notes" and sorted(os.listdir(notes)) == ["todo.txt"]
    assert plain.read_text() == "a file"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]   # no partial folder left
    # what sa-jax wrote is replaced
    assert main(["convert", str(source), str(tmp_path / "ae")]) == 0
    assert main(["convert", str(source), str(tmp_path / "ae"), "--overwrite"]) == 0
    ckpt = store.save(tmp_path / "ckpt", {"model_type": "test"}, {"w": np.ones(3, np.float32)})
    store.save(ckpt, {"model_type": "test", "n": 2}, {"w": np.zeros(3, np.float32)}, overwrite=True)
    assert store.read_config(ckpt)["n"] == 2
    np.testing.assert_array_equal(store.load_params(ckpt)["w"], np.zeros(3))


# ---------------------------------------------------------------------------------------------
# 2. one trainer per run directory


def test_a_second_trainer_exits_naming_the_holder(latents, tmp_path):
    from sa_jax.training.engine import RunLock

    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):
        proc = subprocess.run([str(SA_JAX), "train", "--config", str(ROOT / "configs/train_dit_tiny.yaml"),
                               *tiny_overrides(latents, run, steps=10)],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert f"pid {os.getpid()}" in out and socket.gethostname() in out and "Traceback" not in out, out
    assert sorted(os.listdir(run)) == [RunLock.NAME]   # it wrote nothing (no config.yaml, no checkpoints)


@pytest.mark.slow   # moved out of the default run for its time (~25s on 2 AVX2 cores); run with -m slow
def test_the_stale_lock_of_a_killed_trainer_is_taken_over(latents, tmp_path):
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal
        from sa_jax.training.engine import RunLock
        RunLock({str(run)!r}).acquire()
        print(os.getpid(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    dead = int(proc.stdout.split()[0])
    lines = []
    result = train(config(latents, run), print_fn=lines.append)
    assert result.finished
    assert any("taking over" in line and f"pid {dead}" in line for line in lines), lines
    from sa_jax.training.engine import RunLock

    assert RunLock.holder(run) is None   # released at the end


@pytest.mark.slow   # moved out of the default run for its time (~35s on 2 AVX2 cores); run with -m slow
def test_two_trainers_racing_for_one_run_directory(latents, tmp_path):
    run = tmp_path / "run"
    cmd = [str(SA_JAX), "train", "--config", str(ROOT / "configs/train_dit_tiny.yaml"),
           *tiny_overrides(latents, run, steps=30, **{"checkpoint.every": 10})]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0 and codes[1] != 0, outs
    loser = outs[[p.returncode for p in procs].index(codes[1])]
    assert "is held by" in loser and "pid" in loser, loser


# ---------------------------------------------------------------------------------------------
# 3. a rejected resume changes nothing; an accepted one names what changed


def tensorboard_texts(run_dir) -> str:
    """Every text summary in the run's TensorBoard event files."""
    from tensorboardX.proto import event_pb2

    texts = []
    for path in sorted((Path(run_dir) / "tensorboard").glob("events.*")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                if v.HasField("tensor") and v.tensor.string_val:
                    texts += [s.decode() for s in v.tensor.string_val]
    return "\n".join(texts)


def files(run) -> dict:
    """Every file of a run directory but the lock (which only the holder's name changes) -> its mtime."""
    return {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != "train.lock"}


@pytest.mark.slow   # moved out of the default run for its time (~20s on 2 AVX2 cores); run with -m slow
def test_resume_with_another_model_changes_nothing_and_changed_settings_are_named(latents, tmp_path):
    run = tmp_path / "run"
    train(config(latents, run), print_fn=lambda line: None)
    before = files(run)
    saved = (run / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match="different model"):
        train(config(latents, run, **{"steps": 15, "model.dit.depth": 3}), print_fn=lambda line: None)
    assert (run / "config.yaml").read_bytes() == saved
    assert files(run) == before
    lines = []
    result = train(config(latents, run, **{"steps": 15, "optim.lr": 1e-3, "seed": 7, "data.batch_size": 4}),
                   print_fn=lines.append)
    assert result.step == 15
    changed = [line for line in lines if "differ" in line or " -> " in line]
    text = "\n".join(changed)
    for key, old, new in (("optim.lr", "0.003", "0.001"), ("seed", "0", "7"), ("data.batch_size", "8", "4"),
                          ("steps", "10", "15")):
        assert f"{key}: {old} -> {new}" in text, text
        assert f"{key}: {old} -> {new}" in tensorboard_texts(run)
    keys = [item.split(":")[0] for item in text.split("): ", 1)[1].split("; ")]
    assert keys == ["data.batch_size", "optim.lr", "seed", "steps"], text   # only the changed keys
    assert b"lr: 0.001" in (run / "config.yaml").read_bytes()


# ---------------------------------------------------------------------------------------------
# 10. a full disk during a save


@pytest.mark.parametrize("async_save", [pytest.param(False, marks=pytest.mark.slow), True])   # False: 25 s more
def test_a_full_disk_stops_the_run_at_the_failed_save(latents, tmp_path, monkeypatch, caplog, async_save):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh

    calls = []
    original = jh.JsonCheckpointHandler._save_fn

    async def disk_full_at_the_second_save(self, x, directory):
        calls.append(directory)
        if len(calls) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(directory / "metadata"))
        return await original(self, x, directory)

    monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", disk_full_at_the_second_save)
    run = tmp_path / "run"
    lines = []
    cfg = config(latents, run, **{"steps": 20, "log.every": 1, "checkpoint.async_save": async_save})
    with pytest.raises(TrainingError, match="No space left on device") as err:
        train(cfg, print_fn=lines.append)
    assert "step 10" in str(err.value) and str(run / "checkpoints") in str(err.value)
    steps = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("step ")]
    assert max(steps) < 15 if async_save else max(steps) == 10   # not on to the next checkpoint
    assert sorted(os.listdir(run / "checkpoints")) == ["5"]
    assert not list(run.rglob("*orbax-checkpoint-tmp*"))
    import json

    if (run / "best.json").exists():
        assert json.loads((run / "best.json").read_text())["step"] == 5
    assert not [r for r in caplog.records if r.exc_info and "orbax" in r.pathname]   # no traceback floods
