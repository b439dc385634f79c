"""The paper-size U-Net train step (907M parameters, 95 s windows, bfloat16) lowers and compiles for
an 8-device FSDP mesh on the CPU without running; its per-device memory fits the sharding.
About 6 minutes of compile on a shared 2-core CPU, hence slow."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_paper_unet_train_step_compiles_for_8_device_fsdp():
    proc = subprocess.run([sys.executable, "bench/bench_train.py", "--config", "configs/train_unet_sa1.yaml",
                           "--devices", "8", "--batch", "8"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ")[1])
    assert 900e6 < out["params"] < 915e6
    assert out["mesh"] == {"data": 1, "fsdp": 8}
    # params + AdamW mu/nu + EMA in float32 = 16 bytes/parameter, split 8 ways: ~1.7 GiB per device.
    args_mib = float(out["memory"].split("arguments ")[1].split(" MiB")[0])
    assert args_mib < 1.1 * 16 * out["params"] / 8 / 2 ** 20, out["memory"]
