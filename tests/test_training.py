"""The training loop on a tiny DiT: the loss falls, SIGTERM saves, a kill -9 run resumes to the same
parameters as an uninterrupted one (data order included), and a non-finite step is skipped."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from training_util import leaves, tiny_overrides, write_latents

from sa_jax.config import load
from sa_jax.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 20, 10


def config(latents, run_dir, **extra):
    extra = {"steps": STEPS, "checkpoint.every": EVERY, "optim.lr": 3e-3, **extra}
    return load(TrainConfig, ROOT / "configs/train_dit_tiny.yaml", tiny_overrides(latents, run_dir, **extra))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: (latents dir, final state, printed lines)."""
    root = tmp_path_factory.mktemp("train")
    latents = write_latents(root / "latents", count=4)
    lines = []
    state = train(config(latents, root / "full"), print_fn=lines.append).state
    return latents, state, lines


def losses(lines):
    return [float(line.split("loss ")[1].split()[0]) for line in lines if line.startswith("step ")]


def test_loss_falls_and_ema_is_exported(reference):
    latents, state, lines = reference
    curve = losses(lines)
    assert curve[-1] < 0.97 * curve[0], curve   # 20 steps: a first drop; the overfit test is slow
    assert int(state.step) == STEPS and int(state.bad_steps) == 0
    assert any("memory per device" in line for line in lines)
    from sa_jax.checkpoints import store

    export = Path(latents).parent / "full" / "export"
    assert store.read_config(export)["family"] == "sao"
    for a, b in zip(leaves(store.load_params(export)), leaves(state.ema)):
        np.testing.assert_array_equal(a, b)
    # The EMA lags the parameters but is not a copy of them.
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(state.ema), leaves(state.params)))


def test_kill9_then_resume_matches_uninterrupted(reference, tmp_path):
    latents, full, _ = reference
    run = tmp_path / "run"
    # A child process trains and kills itself (SIGKILL) at step 15, after the step-10 checkpoint.
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from test_training import config
        from sa_jax.training import train
        def kill_at_15(line):
            print(line, flush=True)
            if line.startswith("step 15/"):
                os.kill(os.getpid(), signal.SIGKILL)
        train(config({str(latents)!r}, {str(run)!r}), print_fn=kill_at_15)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "step 15/" in proc.stdout
    assert sorted(os.listdir(run / "checkpoints")) == ["10"]
    lines = []
    resumed = train(config(latents, run), print_fn=lines.append).state
    assert any("resumed from" in line for line in lines)
    assert int(resumed.step) == STEPS
    for name in ("params", "ema", "opt_state"):
        for a, b in zip(leaves(getattr(resumed, name)), leaves(getattr(full, name))):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_sigterm_saves_and_stops(reference, tmp_path):
    latents, full, _ = reference
    run = tmp_path / "run"

    def term_at_5(line):
        if line.startswith("step 5/"):
            os.kill(os.getpid(), signal.SIGTERM)

    result = train(config(latents, run), print_fn=term_at_5)
    assert int(result.state.step) == result.step == 5
    assert sorted(os.listdir(run / "checkpoints")) == ["5"]
    assert not (run / "export").exists() and result.export_path is None
    assert result.preempted   # `sa-jax train` exits 143 on it
    result = train(config(latents, run), print_fn=lambda line: None)   # resumes and finishes
    assert int(result.state.step) == config(latents, run).steps and not result.preempted


def test_nonfinite_step_is_skipped(reference, tmp_path):
    """A batch with NaN latents: the update is skipped and counted; params stay finite."""
    from sa_jax.parallel import batch_sharding, global_batch, make_mesh
    from sa_jax.training.diffusion import compiled_train_step, create_state

    latents, _, _ = reference
    cfg = config(latents, tmp_path / "run")
    mesh = make_mesh(cfg.mesh)
    state = create_state(cfg, mesh)
    before = leaves(state.params)
    n, d = 8, 32
    batch = {"latents": np.full((8, 8, 32), np.nan, np.float32), "text": np.zeros((8, n, d), np.float32),
             "text_mask": np.ones((8, n), bool), "seconds_start": np.zeros(8, np.int32),
             "seconds_total": np.ones(8, np.int32)}
    batch = global_batch(batch, batch_sharding(mesh, cfg.mesh))
    state, metrics = compiled_train_step(cfg, mesh, state, {}, batch)(state, {}, batch)   # compiled by the fixture
    assert not bool(metrics["finite"]) and int(state.bad_steps) == 1 and int(state.bad_in_a_row) == 1
    assert int(state.step) == 1
    for a, b in zip(leaves(state.params), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow   # moved out of the default run for its time (~20s on 2 AVX2 cores); run with -m slow
def test_repeated_nonfinite_steps_stop_the_run(reference, tmp_path):
    """An absurd learning rate blows the parameters up after one update; every later step is
    non-finite, skipped and counted, and the run stops with a clear error before any checkpoint."""
    from sa_jax.errors import TrainingError

    latents, _, _ = reference
    cfg = config(latents, tmp_path / "run", **{"optim.lr": "1.0e+30", "optim.clip_norm": "null", "max_bad_steps": 3})
    with pytest.raises(TrainingError, match="non-finite steps in a row"):
        train(cfg, print_fn=lambda line: None)
    assert not os.listdir(tmp_path / "run" / "checkpoints")


def test_async_checkpoints_hold_the_saved_step(reference, tmp_path):
    """Async saves while the next steps run on donated buffers: the checkpoint of step 20 equals the
    uninterrupted run's final state, and the manager keeps the last `keep` steps."""
    import orbax.checkpoint as ocp

    latents, full, _ = reference
    run = tmp_path / "run"
    train(config(latents, run, **{"checkpoint.async_save": "true", "checkpoint.every": 2, "checkpoint.keep": 3}),
          print_fn=lambda line: None)
    assert sorted(os.listdir(run / "checkpoints"), key=int) == ["16", "18", "20"]
    with ocp.CheckpointManager((run / "checkpoints").absolute()) as manager:
        saved = manager.restore(20, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    for a, b in zip(leaves(saved["params"]), leaves(full.params)):
        np.testing.assert_array_equal(a, b)


def test_sa_jax_train_exits_143_when_preempted(reference, tmp_path, monkeypatch):
    """`sa-jax train` reads the trainer's RunResult: exit code 143 when SIGTERM stopped the run before its
    last step (a driver script then knows it is unfinished), 0 when it finished."""
    import sa_jax.training
    from sa_jax.cli import main
    from sa_jax.training import RunResult

    latents, _, _ = reference
    for preempted, code in ((True, 143), (False, 0)):
        monkeypatch.setattr(sa_jax.training, "train", lambda cfg, p=preempted: RunResult(None, 5, p, None))
        args = ["train", "--config", str(ROOT / "configs/train_dit_tiny.yaml"), *tiny_overrides(latents, tmp_path)]
        assert main(args) == code


def test_a_run_saved_with_the_old_family_name_resumes(reference, tmp_path):
    """Checkpoints written before the families were renamed say `family: dit` in their saved config; they
    resume (the saved model section is read through today's schema) and end where an uninterrupted run does."""
    import json

    latents, full, _ = reference
    run = tmp_path / "old"
    train(config(latents, run), stop_at=EVERY)
    saved = run / "checkpoints" / str(EVERY) / "config" / "metadata"
    data = json.loads(saved.read_text())
    assert data["model"]["family"] == "sao"
    data["model"]["family"] = "dit"
    saved.write_text(json.dumps(data))
    resumed = train(config(latents, run)).state
    for a, b in zip(leaves(resumed.params), leaves(full.params)):
        np.testing.assert_array_equal(a, b)
