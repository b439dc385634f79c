"""Bad input that used to end in a traceback (issue 17, items 7-9): each is one line on stderr that
says what and where, exit code 2, before any model is loaded.

- a config that is not YAML, has a `!!python/...` tag, is not UTF-8, or has a value of the wrong type,
  as `--config` or as a checkpoint's config.yaml, or a model_config.json that is not JSON;
- a seed outside 0 <= seed < 2**32 (the CLI's --seed, a config's seed, `StableAudio.generate(seed=)`);
- `sa-jax sample --out` where nothing can be written.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sa_jax.config import check_seed, load, load_yaml
from sa_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SA_JAX = [sys.executable, "-m", "sa_jax.cli"]

BAD_YAML = {
    "syntax": (b"model:\n  family: sao\nsteps: [1, 2\nseed: 0\n", "line 4", "not valid YAML"),
    "python_tag": (b"steps: 3\nseed: !!python/object/apply:os.system ['echo pwned']\n", "line 2",
                   "python/object/apply:os.system"),
    "not_utf8": (b"# a comment\nsteps: \xff\xfe\n", "line 2", "not UTF-8"),
    "too_deep": (b"steps: 3\nseed: " + b"[" * 5000 + b"]" * 5000 + b"\n", "", "nested too deeply"),
}


def sa_jax(*args, cwd=None, timeout=300):
    proc = subprocess.run([*SA_JAX, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or ROOT)
    return proc


def one_line_error(proc, *needles):
    """Exit code 2, no traceback, and the error is the one last line of stderr (after any progress
    lines), `sa-jax CMD: error: ...`, naming every needle."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and lines and " error: " in lines[-1], proc.stderr
    assert sum("error" in line for line in lines) == 1, proc.stderr
    err = lines[-1]
    for needle in needles:
        assert str(needle) in err, (needle, err)
    return proc


# --- item 7: configs --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(BAD_YAML))
def test_bad_config_file_is_one_line_naming_file_and_line(tmp_path, kind):
    text, line, what = BAD_YAML[kind]
    path = tmp_path / "run.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=what) as e:
        load_yaml(path)
    assert str(path) in str(e.value) and line in str(e.value) and "\n" not in str(e.value)
    one_line_error(sa_jax("train", "--config", path), path, line, what)
    one_line_error(sa_jax("params", path), path, line)
    assert not (tmp_path / "pwned").exists()


def test_a_type_error_names_the_file_and_the_key(tmp_path):
    from sa_jax.training import TrainConfig

    path = tmp_path / "run.yaml"
    path.write_text("base: train_dit_tiny\nsteps: lots\n")
    with pytest.raises(ConfigError, match="steps: expected an integer, got 'lots'") as e:
        load(TrainConfig, path)
    assert str(e.value).startswith(f"{path}: ")
    # an override is named as the override, not as the file
    with pytest.raises(ConfigError, match=r"override 'optim.lr=fast': optim.lr: expected a number"):
        load(TrainConfig, "train_dit_tiny", ["optim.lr=fast"])
    one_line_error(sa_jax("train", "--config", path), path, "steps", "lots")
    path.write_text("trainer: [vae]\n")
    one_line_error(sa_jax("train", "--config", path), path, "trainer ['vae'] is not known")
    path.write_text("base: train_dit_tiny\n1: one\nnull: none\n")   # keys YAML reads as a number and None
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \[1, None\]"):
        load(TrainConfig, path)
    one_line_error(sa_jax("train", "--config", "train_dit_tiny", "steps=[1"), "override 'steps=[1'", "not valid YAML")


def checkpoint(folder: Path, config: bytes) -> Path:
    """A folder that looks like an sa-jax checkpoint (config.yaml + params/), its config as given."""
    (folder / "params").mkdir(parents=True)
    (folder / "config.yaml").write_bytes(config)
    return folder


@pytest.mark.parametrize("kind", sorted(BAD_YAML))
def test_bad_checkpoint_config_is_one_line(tmp_path, kind):
    text, line, what = BAD_YAML[kind]
    ckpt = checkpoint(tmp_path / "model", text)
    one_line_error(sa_jax("sample", "hello", "--model", ckpt, "--out", tmp_path / "out" / "new"),
                   ckpt / "config.yaml", line, what)
    assert not (tmp_path / "out").exists()   # the output folders it made for the run are gone again


def test_checkpoint_config_type_error_names_file_and_key(tmp_path):
    from sa_jax.config import save_yaml, to_dict
    from sa_jax.models.autoencoder import config_from_dict

    ae = to_dict(config_from_dict(load_yaml("vae_small")["autoencoder"]))
    ckpt = tmp_path / "model"
    checkpoint(ckpt, b"")
    save_yaml({"model_type": "diffusion_cond", "family": "sa1", "sample_size": "lots", "autoencoder": ae},
              ckpt / "config.yaml")
    one_line_error(sa_jax("sample", "hello", "--model", ckpt, "--out", tmp_path / "out"),
                   ckpt / "config.yaml", "sample_size", "lots")
    save_yaml({"model_type": "autoencoder", "autoencoder": {**ae, "latent_dim": "many"}}, ckpt / "config.yaml")
    wav = tmp_path / "in.wav"
    wav.write_bytes(b"")
    one_line_error(sa_jax("encode", wav, tmp_path / "z.npy", "--model", ckpt),
                   ckpt / "config.yaml", "latent_dim", "many")


def test_bad_model_config_json_is_one_line(tmp_path):
    folder = tmp_path / "sat"
    folder.mkdir()
    (folder / "model_config.json").write_text('{"model_type": "diffusion_cond",\n "model": {,}}\n')
    (folder / "model.safetensors").write_bytes(b"")
    one_line_error(sa_jax("sample", "hello", "--model", folder, "--out", tmp_path / "out"),
                   folder / "model_config.json", "line 2", "not valid JSON")
    (folder / "model_config.json").write_bytes(b'{"model_type": "\xff"}')
    one_line_error(sa_jax("sample", "hello", "--model", folder, "--out", tmp_path / "out"),
                   folder / "model_config.json", "not UTF-8")


def test_a_prompts_file_that_is_not_utf8_is_one_line(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"a kick drum\nrain on a tin roof \xff\n")
    one_line_error(sa_jax("sample", "--prompts-file", prompts, "--out", tmp_path / "out"),
                   prompts, "line 2", "not UTF-8")


# --- item 8: seeds ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [-1, 2 ** 32, 2 ** 64, 10 ** 40])
def test_check_seed_states_the_range(seed):
    with pytest.raises(ConfigError, match=r"0 <= seed < 2\*\*32"):
        check_seed(seed)


def test_check_seed_accepts_the_range():
    assert check_seed(0) == 0 and check_seed(2 ** 32 - 1) == 2 ** 32 - 1
    with pytest.raises(ConfigError, match="integer"):
        check_seed(1.5)
    with pytest.raises(ConfigError, match="seeds 4294967295..4294967296"):
        check_seed(2 ** 32 - 1, count=2)


def test_seeds_out_of_range_are_one_line(tmp_path):
    big = str(2 ** 64)
    one_line_error(sa_jax("sample", "hi", "--seed", big, "--out", tmp_path / "out"), "--seed", big, "2**32")
    assert not (tmp_path / "out").exists()
    # (`sample` no longer adds the batch number to the seed; item n draws from (seed, n): test_batch_invariance)
    one_line_error(sa_jax("synth", "--out", tmp_path / "c", "--count", 1, "--seed", -1), "--seed", "-1", "2**32")
    one_line_error(sa_jax("encode", tmp_path / "in.wav", tmp_path / "z.npy", "--model", "vae_small.yaml",
                          "--sample", "--seed", big), "--seed", big)
    one_line_error(sa_jax("train", "--config", "train_dit_tiny", f"seed={big}"), f"override 'seed={big}'", "2**32")
    one_line_error(sa_jax("train", "--config", "train_dit_tiny", f"data.seed={big}"), "data.seed", "2**32")


def test_generate_checks_the_seed():
    from sa_jax import StableAudio

    sa = StableAudio.load()
    for seed in (2 ** 64, -1):
        with pytest.raises(ValueError, match=r"0 <= seed < 2\*\*32"):
            sa.generate("a kick drum", seed=seed, steps=1)


# --- item 9: sample --out ---------------------------------------------------------------------

def test_sample_out_onto_a_plain_file_fails_before_loading(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    proc = one_line_error(sa_jax("sample", "hi", "--out", notes), notes, "not a folder")
    one_line_error(sa_jax("sample", "hi", "--out", notes / "a.wav"), notes, "not a folder")
    assert notes.read_text() == "mine" and "loading" not in proc.stderr
    (tmp_path / "taken.wav").mkdir()
    one_line_error(sa_jax("sample", "hi", "--out", tmp_path / "taken.wav"), "taken.wav", "is a folder")


def test_sample_out_in_a_read_only_place_fails_before_loading(tmp_path):
    if os.geteuid() == 0:   # root writes through permissions: a read-only filesystem instead
        target = Path("/sys/sa-jax-out")
        if not Path("/sys/kernel").is_dir():
            pytest.skip("no read-only place to try as root")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "out"
    proc = one_line_error(sa_jax("sample", "hi", "--out", target), "cannot write in", target.parent)
    assert "loading" not in proc.stderr and not target.exists()
