"""bench/device_suite.py --smoke: the accelerator suite's own code, at tiny sizes on the CPU, so it is known to
work before a GPU lease starts. Every case runs on both sides (sa-jax and the PyTorch reference) and lands in
the table and the JSON file."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("diffusers")
pytest.importorskip("torch")


@pytest.mark.slow   # moved out of the default run for its time (~340s on 2 AVX2 cores); run with -m slow
def test_smoke_run_fills_every_row(tmp_path):
    out = tmp_path / "suite.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "device_suite.py"), "--smoke", "--out", str(out)],
                         capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["smoke"] and not result["failures"]
    rows = {(r["case"], r["side"], r["dtype"]): r for r in result["rows"]}
    want = {("sao generate", "diffusers", "float32"), ("sao generate", "sa-jax", "bfloat16"),
            ("sao generate", "sa-jax", "float32"), ("sa1 generate", "stable-audio-tools", "float32"),
            ("sa1 generate", "sa-jax", "bfloat16"), ("sa1 VAE decode", "stable-audio-tools", "float32"),
            ("sa1 VAE decode", "sa-jax", "bfloat16"), ("sa1 VAE decode, chunked 128", "sa-jax", "bfloat16")}
    want |= {(f"{k} remat {r}", "sa-jax", "bfloat16") for k in ("train_dit", "train_unet") for r in ("false", "true")}
    assert want <= set(rows), sorted(want - set(rows))
    for key, r in rows.items():
        assert r["seconds"] > 0 and r["first"] > 0, key
        if r["side"] == "sa-jax" and "generate" in r["case"] or "decode" in r["case"] and r["side"] == "sa-jax":
            assert r["speedup"] > 0, key   # the reference's time / sa-jax's, same case, same run
        if "remat" in r["case"]:
            assert r["tflops"] > 0 and r["params_m"] > 0, key
    assert "| case | side | dtype |" in res.stdout   # the table


def test_unknown_case_is_refused(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "device_suite.py"), "--smoke", "--only", "sao,gpu"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and "unknown case(s) gpu; known: sao, sa1, train_dit, train_unet" in res.stderr
