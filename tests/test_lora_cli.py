"""LoRA on the command line: `sa-jax sample --lora DIR[:STRENGTH]` and `sa-jax merge-lora BASE ADAPTER... OUT`
as a user runs them (subprocesses), and their errors (missing adapter, bad strength text, an adapter of the
other family, an OUT that exists)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf
from test_lora_pipeline import PROMPTS, SAMPLING, make_adapter, tiny_model

from sa_jax import StableAudio
from sa_jax.cli import main


def sa_jax(*args, cwd):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "sa_jax.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{family: (base folder, adapter A, adapter B)} for tiny saved models of both families."""
    root = tmp_path_factory.mktemp("lora-cli")
    out = {}
    for family in ("sao", "sa1"):
        model = tiny_model(family)
        base = model.save(root / family / "base")
        a, _ = make_adapter(model, root / family / "a", seed=3)
        b, _ = make_adapter(model, root / family / "b", seed=4, rank=1, alpha=2.0)
        out[family] = base, a, b
    return out


@pytest.mark.slow   # moved out of the default run for its time (~55s on 2 AVX2 cores); run with -m slow
def test_sample_with_lora_writes_what_the_api_generates(models, tmp_path):
    base, a, b = models["sao"]
    r = sa_jax("sample", *PROMPTS, "--model", base, "--lora", f"{a}:0.5", "--lora", b, "--steps", 3, "--seed", 7,
               "--cfg-scale", 3, "--out", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "LoRA adapter" in r.stderr and "strength 0.5" in r.stderr
    wavs = sorted((tmp_path / "out").glob("*.wav"))
    got = np.stack([sf.read(str(w), dtype="float32", always_2d=True)[0].T for w in wavs])
    want = StableAudio.load(base, lora=[(a, 0.5), (b, 1.0)]).generate(PROMPTS, **SAMPLING)
    assert len(wavs) == 2 and got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    plain = StableAudio.load(base).generate(PROMPTS, **SAMPLING)
    assert np.abs(plain - want).max() > 1e-3 * np.abs(want).max()


@pytest.mark.slow   # moved out of the default run for its time (~35s on 2 AVX2 cores); run with -m slow
def test_merge_lora_writes_a_model_equal_to_the_unmerged_one(models, tmp_path, capsys):
    base, a, b = models["sa1"]
    out = tmp_path / "merged"
    r = sa_jax("merge-lora", base, f"{a}:0.8", f"{b}:-0.5", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    want = StableAudio.load(base, lora=[(a, 0.8), (b, -0.5)]).generate_latents(PROMPTS, **SAMPLING)
    got = StableAudio.load(out).generate_latents(PROMPTS, **SAMPLING)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    stamp = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*"))

    # an existing OUT is kept unless --overwrite; OUT may not be the base
    assert main(["merge-lora", str(base), str(a), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) == stamp
    assert main(["merge-lora", str(base), str(a), str(base), "--overwrite"]) == 2
    assert "is the base model or an adapter" in capsys.readouterr().err
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    assert main(["merge-lora", str(base), str(a), str(notes), "--overwrite"]) == 2
    assert "not an sa-jax checkpoint" in capsys.readouterr().err and (notes / "keep.txt").exists()
    assert main(["merge-lora", str(base), f"{a}:0", str(out), "--overwrite"]) == 0   # strength 0: the base itself
    merged, plain = StableAudio.load(out).family.trainable(), StableAudio.load(base).family.trainable()
    assert all(np.asarray(x).tobytes() == np.asarray(y).tobytes()
               for x, y in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(plain)))


def test_bad_lora_arguments_are_one_clear_line(models, tmp_path, capsys):
    base, a, _ = models["sao"]
    other = models["sa1"][1]
    r = sa_jax("sample", "x", "--model", base, "--lora", f"{a}:abc", "--out", tmp_path / "o.wav", cwd=tmp_path)
    assert r.returncode == 2 and "strength 'abc' is not a number" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.wav").exists()
    cases = [
        ([f"{a}:nan"], "the strength must be a finite number"),
        ([f"{a}:inf"], "the strength must be a finite number"),
        ([str(tmp_path / "missing")], "LoRA adapter folder .*missing does not exist"),
        ([str(other)], "trained on a 'sa1' model, but .* is a 'sao' model"),
        ([str(base)], "is not an sa-jax LoRA adapter"),
    ]
    for lora, message in cases:
        args = ["sample", "x", "--model", str(base), "--steps", "2", "--out", str(tmp_path / "o.wav")]
        assert main(args + [x for item in lora for x in ("--lora", item)]) == 2, lora
        assert re.search(message, capsys.readouterr().err), message
        assert main(["merge-lora", str(base), *lora, str(tmp_path / "m")]) == 2
        assert re.search(message, capsys.readouterr().err), message
    assert not (tmp_path / "o.wav").exists() and not (tmp_path / "m").exists()
    # inpaint / continue take --lora the same way
    sf.write(str(tmp_path / "in.wav"), np.zeros((2048, 2), np.float32), 44100)
    assert main(["inpaint", str(tmp_path / "in.wav"), str(tmp_path / "o.wav"), "--start", "0", "--end", "0.01",
                 "--prompt", "x", "--model", str(base), "--lora", str(other)]) == 2
    assert "trained on a 'sa1' model" in capsys.readouterr().err and not (tmp_path / "o.wav").exists()
