"""Two processes on localhost train together through `jax.distributed` (CPU, gloo collectives):
2 devices each, a (data=2, fsdp=2) mesh over the 4, each process reading its own data shard. Both
must finish at the same step with identical (all-gathered) parameters, and a checkpoint both wrote."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from training_util import write_latents

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import hashlib, sys
    sys.path.insert(0, "tests")
    from sa_jax.parallel import maybe_initialize_distributed
    assert maybe_initialize_distributed()
    import jax, numpy as np
    from jax.experimental import multihost_utils
    from training_util import tiny_overrides
    from sa_jax.config import load
    from sa_jax.training import TrainConfig, train
    latents, run = sys.argv[1], sys.argv[2]
    cfg = load(TrainConfig, "configs/train_dit_tiny.yaml", tiny_overrides(latents, run, **{
        "mesh.shape": "[2,2]", "data.shard_index": "null", "data.shard_count": "null", "data.batch_size": 4,
        "steps": 6, "checkpoint.every": 3}))
    state = train(cfg, print_fn=lambda s: print(jax.process_index(), s, flush=True)).state
    full = multihost_utils.process_allgather(state.params, tiled=True)
    h = hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in jax.tree_util.tree_leaves(full))).hexdigest()
    print(f"RESULT {jax.process_index()} {int(state.step)} {h}", flush=True)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow   # ~70 s on a shared 2-core CPU
def test_two_processes_end_with_identical_parameters(tmp_path):
    latents = write_latents(tmp_path / "latents", count=6)
    port = free_port()
    procs = []
    for i in range(2):
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
                   JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, "-c", SCRIPT, str(latents), str(tmp_path / "run")],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=600)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    results = [out.split("RESULT ")[1].split() for out in outs]
    assert results[0][0] == "0" and results[1][0] == "1"
    assert results[0][1] == results[1][1] == "6"
    assert results[0][2] == results[1][2]
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["3", "6"]
    data = sorted(f for f in os.listdir(tmp_path / "run" / "checkpoints" / "6" / "data") if f.startswith("process"))
    assert data == ["process_0-of-2.json", "process_1-of-2.json"], data
