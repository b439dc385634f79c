"""Two processes on localhost train together through `jax.distributed` (CPU, gloo collectives):
2 devices each, a (data=2, fsdp=2) mesh over the 4, each process reading its own data shard. Both
must finish at the same step with identical (all-gathered) parameters, and a checkpoint both wrote.
The engine's export rule holds on several processes: a CLAP run (parameters split by FSDP across both
processes) writes its export once, and it holds the run's final weights."""

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


def run_two(script: str, *args) -> list[str]:
    """Run `script` as processes 0 and 1 of a 2-process JAX run (2 CPU devices each); their outputs."""
    port = free_port()
    procs = []
    for i in range(2):
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
                   JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
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
    return outs


@pytest.mark.slow   # ~70 s on a shared 2-core CPU
def test_two_processes_end_with_identical_parameters(tmp_path):
    latents = write_latents(tmp_path / "latents", count=6)
    outs = run_two(SCRIPT, latents, tmp_path / "run")
    results = [out.split("RESULT ")[1].split() for out in outs]
    assert results[0][0] == "0" and results[1][0] == "1"
    assert results[0][1] == results[1][1] == "6"
    assert results[0][2] == results[1][2]
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["3", "6"]
    data = sorted(f for f in os.listdir(tmp_path / "run" / "checkpoints" / "6" / "data") if f.startswith("process"))
    assert data == ["process_0-of-2.json", "process_1-of-2.json"], data


CLAP = textwrap.dedent("""
    import sys
    sys.path.insert(0, "tests")
    from sa_jax.parallel import maybe_initialize_distributed
    assert maybe_initialize_distributed()
    import jax, numpy as np
    from jax.experimental import multihost_utils
    from test_training_clap import MICRO, config, flat
    from sa_jax.training.clap import train_clap
    data, run = sys.argv[1], sys.argv[2]
    cfg = config(data, run, "steps=4", "checkpoint.every=2", "log.every=2", "data.batch_size=4",
                 "mesh.shape=[1,4]", "mesh.fsdp_min_size=16", *MICRO)   # parameters split over both processes
    result = train_clap(cfg, print_fn=lambda s: print(jax.process_index(), s, flush=True))
    weights = multihost_utils.process_allgather({"params": result.state.params,
                                                 "batch_stats": result.state.batch_stats}, tiled=True)
    np.savez(f"{run}/final_{jax.process_index()}.npz", **flat(weights))
    print(f"RESULT {jax.process_index()} {result.step} {result.preempted} {result.export_path}", flush=True)
""")


@pytest.mark.slow   # ~30 s on a shared 2-core CPU
def test_clap_on_two_processes_exports_once_with_the_final_weights(tmp_path):
    """CLAP's export used to fetch the weights on process 0 alone, which fails when FSDP splits them over
    both processes (process 0 holds half of each array). With the engine's rule every process gathers,
    process 0 writes, once."""
    import numpy as np
    from test_training_clap import flat

    from sa_jax.checkpoints.clap import load_hf_clap
    from sa_jax.data.synth import write_corpus
    from sa_jax.encoders import Clap

    data = write_corpus(tmp_path / "data", 16, seed=1, min_seconds=1.0, max_seconds=2.0)
    run = tmp_path / "run"
    outs = run_two(CLAP, data, run)
    results = [out.split("RESULT ")[1].split() for out in outs]
    assert [r[:3] for r in results] == [["0", "4", "False"], ["1", "4", "False"]], outs[0][-3000:]
    assert results[0][3] == results[1][3] == str(run / "export")
    assert sum("exported the CLAP" in out for out in outs) == 1   # process 0 reports (and writes) it
    assert sorted(p for p in os.listdir(run) if p.startswith("export")) == ["export"]   # no .partial left
    assert (run / "checkpoints" / "4").is_dir()
    final = [np.load(run / f"final_{i}.npz") for i in range(2)]
    _, variables = load_hf_clap(run / "export")
    exported = flat(variables)
    assert sorted(exported) == sorted(final[0].files)
    for k in final[0].files:
        np.testing.assert_array_equal(final[0][k], final[1][k], err_msg=k)
        np.testing.assert_array_equal(exported[k], final[0][k], err_msg=k)
    assert np.asarray(Clap.load(run / "export").text_embedding(["a piano"])).shape == (1, 32)   # a whole CLAP
