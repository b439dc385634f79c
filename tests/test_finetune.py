"""Fine-tuning (issue 19) on tiny random models of both families: `init.from` (the model section, weights,
frozen encoders come from the model; a contradicting setting is named), LoRA runs (only adapters train, the
base stays bitwise; the loss on the fine-tuning clips falls below the base's; a kill -9 of `sa-jax train`
resumes bitwise; a checkpoint of another base is refused), exact gradient accumulation, remat policies and
bfloat16 first moments."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from finetune_util import tiny_sa1_model, tiny_sao_model
from training_util import leaves, tiny_overrides, write_latents

from sa_jax.config import load
from sa_jax.errors import ConfigError, LoraError
from sa_jax.parallel import make_mesh
from sa_jax.training import TrainConfig, train
from sa_jax.training import diffusion as td
from sa_jax.training import finetune as ft
from sa_jax.training import model as tm
from sa_jax.training.frozen import load_frozen

ROOT = Path(__file__).resolve().parents[1]
SA_JAX = Path(sys.executable).parent / "sa-jax"
STEPS, EVERY, KILL_AT = 30, 15, 20   # log lines every 5 steps
CONFIGS = {"sao": "train_dit_tiny.yaml", "sa1": "train_unet_tiny.yaml"}


def overrides(latents, run_dir, base, **extra):
    items = {"init.from": base, "lora.rank": 4, "lora.alpha": 8, "steps": STEPS, "checkpoint.every": EVERY,
             "data.batch_size": 4, "optim.lr": 1e-2, "optim.clip_norm": "null", "ema.decay": 0.9,
             "diffusion.cfg_dropout": 0.0, **extra}
    return tiny_overrides(latents, run_dir, **items)


def config(latents, run_dir, base, family="sao", **extra):
    return load(TrainConfig, ROOT / "configs" / CONFIGS[family], overrides(latents, run_dir, base, **extra))


@pytest.fixture(scope="module")
def sao(tmp_path_factory):
    """(root, latents, base model, another base model)."""
    root = tmp_path_factory.mktemp("finetune")
    latents = write_latents(root / "latents", count=4)
    return root, latents, tiny_sao_model(root / "base", seed=0), tiny_sao_model(root / "other", seed=1)


def raw_batch(b=4, frames=32, seed=0):
    rng = np.random.default_rng(seed)
    return {"prompt": [f"clip number {i}" for i in range(b)],
            "latents": rng.normal(size=(b, 8, frames)).astype(np.float32),
            "seconds_start": np.zeros(b, np.int32), "seconds_total": np.full(b, 3, np.int32)}


def setup_step(cfg):
    """(resolved cfg, frozen models, frozen params on the mesh, fresh state, jitted step) of a run."""
    task = td.DiffusionTask(cfg)
    mesh = make_mesh(task.cfg.mesh)
    frozen = load_frozen(task.cfg, task.init)
    fp = td.place_frozen(task.cfg, mesh, frozen)
    state = td.create_state(task.cfg, mesh, None if task.init is None else task.init.params)
    return task.cfg, frozen, fp, state, td.make_train_step(task.cfg, mesh, frozen)


def flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(
        jax.device_get(tree))}


# ---------------------------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("family", ["sao", pytest.param("sa1", marks=pytest.mark.slow)])   # sa1: 40 s
def test_a_lora_step_changes_only_the_adapters(sao, family, tmp_path):
    root, latents, base, _ = sao
    if family == "sa1":
        from test_clap_api import clap_folder

        base = tiny_sa1_model(tmp_path / "sa1", clap_folder(str(tmp_path))[2])
    cfg, frozen, fp, state, step = setup_step(config(latents, tmp_path / "run", base, family))
    base_before = flat(fp["base"])
    adapters_before = flat(state.params)
    batch = td.prepare_batch(cfg, raw_batch(), frozen)
    new, metrics = step(state, fp, batch)
    assert bool(metrics["finite"])
    for k, v in flat(fp["base"]).items():          # the frozen base: bitwise the same
        np.testing.assert_array_equal(v, base_before[k], err_msg=k)
    after = flat(new.params)
    assert set(after) == set(adapters_before)      # the state holds adapters only
    assert all(not np.array_equal(after[k], adapters_before[k]) for k in after if k.endswith("['up']"))
    # as a whole model: exactly the adapted kernels differ from the base
    merged = flat(ft.merged_params(cfg, new.params, fp["base"]))
    adapted = {"".join(f"['{p}']" for p in path.split("/")) for path in td.lora_target_paths(cfg)}
    assert adapted and adapted <= set(merged)
    for k, v in merged.items():
        assert np.array_equal(v, base_before[k]) == (k not in adapted), k


def mean_loss(cfg, params, batch, keys=8):
    f = jax.jit(lambda p, k: td.loss_and_aux(cfg, p, batch, k))
    return float(np.mean([f(params, jax.random.key(i)) for i in range(keys)]))


@pytest.fixture(scope="module")
def lora_run(sao):
    """An uninterrupted LoRA run on the 4 clips: (config, final state, printed lines)."""
    root, latents, base, _ = sao
    lines = []
    cfg = config(latents, root / "full", base)
    return cfg, train(cfg, print_fn=lines.append).state, lines


def test_lora_fine_tuning_lowers_the_loss_on_its_clips(sao, lora_run):
    from sa_jax.checkpoints.lora import load_adapter
    from sa_jax.nn.lora import apply_adapters, content_hash

    root, latents, base, _ = sao
    cfg, state, lines = lora_run
    adapters, meta = load_adapter(root / "full" / "export")
    assert meta["rank"] == 4 and meta["alpha"] == 8 and meta["step"] == STEPS and meta["family"] == "sao"
    init = td.DiffusionTask(cfg).init
    assert meta["base_hash"] == content_hash(init.params) and meta["base_path"] == str(base)
    # the clips as the run sees them (whole clips, zero-padded to the window), prompts through the frozen T5
    from sa_jax.data import DataPipeline

    resolved = ft.load_init(cfg)[0]
    frozen = load_frozen(resolved, init)
    raw = next(DataPipeline(load(TrainConfig, ROOT / "configs/train_dit_tiny.yaml", tiny_overrides(
        latents, root / "x", **{"data.batch_size": 4, "data.random_crop": False})).data).iterator())
    batch = td.prepare_batch(resolved, raw, frozen)
    text = frozen.encode_text(frozen.text_encoder.params, batch.pop("text_ids"), batch["text_mask"])
    batch["text"] = text
    before = mean_loss(resolved, init.params, batch)
    after = mean_loss(resolved, apply_adapters(init.params, adapters, meta["alpha"] / meta["rank"]), batch)
    assert after < 0.8 * before, (before, after)


@pytest.mark.slow   # moved out of the default run for its time (~30s on 2 AVX2 cores); run with -m slow
def test_kill9_of_sa_jax_train_resumes_a_lora_run_bitwise(sao, lora_run, tmp_path):
    """`sa-jax train` killed (SIGKILL) after the step-15 checkpoint; a rerun resumes to the
    uninterrupted run's adapters, optimiser state and EMA."""
    root, latents, base, _ = sao
    _, full, _ = lora_run
    run = tmp_path / "run"
    cmd = [str(SA_JAX), "train", "--config", str(ROOT / "configs" / CONFIGS["sao"]), *overrides(latents, run, base)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"step {KILL_AT}/") or "Traceback" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    assert sorted(os.listdir(run / "checkpoints")) == [str(EVERY)]
    lines = []
    resumed = train(config(latents, run, base), print_fn=lines.append).state
    assert any("resumed from" in line for line in lines)
    for name in ("params", "ema", "opt_state"):
        for a, b in zip(leaves(getattr(resumed, name)), leaves(getattr(full, name))):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_a_checkpoint_of_another_base_is_refused(sao, lora_run):
    root, latents, base, other = sao
    before = sorted(os.listdir(root / "full" / "checkpoints"))
    with pytest.raises(ConfigError, match="resumes only on the model it started from") as e:
        train(config(latents, root / "full", other, steps=STEPS + 5), print_fn=lambda line: None)
    init = td.DiffusionTask(config(latents, root / "full", other)).init
    assert str(base) in str(e.value) and str(other) in str(e.value) and init.hash in str(e.value)
    assert sorted(os.listdir(root / "full" / "checkpoints")) == before


# ---------------------------------------------------------------------------------------------- init.from


def test_init_from_takes_the_model_and_names_a_contradicting_setting(sao, tmp_path):
    root, latents, base, _ = sao
    cfg = config(latents, tmp_path / "run", base, **{"lora.rank": 0, "model.remat": "attention"})
    resolved, init = ft.load_init(cfg)
    assert resolved.text.source == "t5" and resolved.init["hash"] == init.hash
    assert resolved.model.remat == "attention"    # the run's own choice
    state = td.create_state(resolved, make_mesh(resolved.mesh), init.params)
    for name in ("params", "ema"):                 # the run starts at the model, the EMA too
        for a, b in zip(leaves(getattr(state, name)), leaves(init.params)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match=r"model.dit.depth: the config says 3, the model has 2"):
        ft.load_init(config(latents, tmp_path / "run", base, **{"model.dit.depth": 3}))
    with pytest.raises(FileNotFoundError, match="init.from: .*nowhere does not exist"):
        ft.load_init(config(latents, tmp_path / "run", tmp_path / "nowhere"))
    with pytest.raises(LoraError, match=r"match no kernel of this model; kernels it has: .*denoiser/layers_0"):
        train(config(latents, tmp_path / "bad-targets", base, **{"lora.targets": '["nothing"]'}))
    assert not (tmp_path / "bad-targets").exists()   # refused before the run directory is made
    with pytest.raises(ConfigError, match="lora.rank > 0 trains adapters of a model: set init.from"):
        load(TrainConfig, ROOT / "configs" / CONFIGS["sao"], ["lora.rank=4"])


def test_init_from_a_run_export_is_that_runs_weights(sao, tmp_path):
    """A whole-model run's export (what `export_inference` writes at the end of a run) is a model that
    `init.from` starts from exactly, with the same model section."""
    root, latents, base, _ = sao
    cfg, init = ft.load_init(config(latents, tmp_path / "run", base, **{"lora.rank": 0}))
    weights = jax.tree.map(lambda x: x + np.float32(0.25), init.params)   # "trained"
    path = td.export_inference(cfg, weights, 7, tmp_path / "export", load_frozen(cfg, init), init.defaults)
    resolved, again = ft.load_init(config(latents, tmp_path / "next", str(path), **{"lora.rank": 0}))
    assert resolved.model == cfg.model and again.hash != init.hash
    for a, b in zip(leaves(again.params), leaves(weights)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------- memory


@pytest.mark.slow   # moved out of the default run for its time (~40s on 2 AVX2 cores); run with -m slow
@pytest.mark.parametrize("lora", [0, 4])   # 0: the whole model
def test_gradient_accumulation_equals_one_big_batch(sao, tmp_path, lora):
    """optim.accumulate 4: the step's loss and gradient norm are those of the batch taken at once (the
    draws are made for the whole batch; float32 sums in another order)."""
    root, latents, base, _ = sao
    metrics = {}
    for n in (1, 4):
        cfg, frozen, fp, state, step = setup_step(config(latents, tmp_path / "run", base, **{
            "lora.rank": lora, "diffusion.cfg_dropout": 0.5, "lora.dropout": 0.1 if lora else 0.0,
            "data.batch_size": 8, "optim.accumulate": n}))
        metrics[n] = jax.device_get(step(state, fp, td.prepare_batch(cfg, raw_batch(8), frozen))[1])
    for name in ("loss", "grad_norm"):
        np.testing.assert_allclose(metrics[4][name], metrics[1][name], rtol=1e-5, err_msg=name)


def test_accumulate_must_divide_the_batch(sao, tmp_path):
    root, latents, base, _ = sao
    cfg = config(latents, tmp_path / "run", base, **{"optim.accumulate": 3})
    with pytest.raises(ConfigError, match="optim.accumulate 3"):
        train(cfg, print_fn=lambda line: None)


@pytest.mark.slow   # moved out of the default run for its time (~25s on 2 AVX2 cores); run with -m slow
@pytest.mark.parametrize("family", ["sao", "sa1"])
def test_the_attention_remat_policy_changes_nothing_but_memory(family):
    """model.remat attention (recompute each block, keep its attention outputs): the loss and gradients of
    none (block is tested in test_dit / test_unet_remat); the old true / false read as block / none."""
    cfg = load(TrainConfig, ROOT / "configs" / CONFIGS[family])
    params = jax.jit(lambda k: tm.init_params(cfg.model, k))(jax.random.key(0))
    batch = td.prepare_batch(cfg, raw_batch(2))
    out = {}
    for mode in ("none", "attention"):
        c = load(TrainConfig, ROOT / "configs" / CONFIGS[family], [f"model.remat={mode}"])
        out[mode] = jax.jit(jax.value_and_grad(lambda p: td.loss_and_aux(c, p, batch, jax.random.key(1))))(params)
    np.testing.assert_allclose(float(out["attention"][0]), float(out["none"][0]), rtol=1e-6)
    for a, b in zip(leaves(out["attention"][1]), leaves(out["none"][1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for old, new in (("true", "block"), ("false", "none")):
        assert load(TrainConfig, ROOT / "configs" / CONFIGS[family], [f"model.remat={old}"]).model.remat == new
    with pytest.raises(ConfigError, match=r"model.remat.*choose one of \['none', 'block', 'attention'\]"):
        load(TrainConfig, ROOT / "configs" / CONFIGS[family], ["model.remat=some"])


def test_bfloat16_first_moments(sao, tmp_path):
    root, latents, base, _ = sao
    cfg = ft.load_init(config(latents, tmp_path / "run", base, **{"optim.mu_dtype": "bfloat16"}))[0]
    state = td.create_state(cfg, make_mesh(cfg.mesh))
    mu = [x for x in jax.tree.leaves(state.opt_state) if x.dtype == jnp.bfloat16]
    assert len(mu) == len(jax.tree.leaves(state.params))   # the first moments; the second stay float32


@pytest.mark.slow   # builds a diffusers pipeline and a stable-audio-tools release with torch: ~1 minute
def test_init_from_each_format_gives_the_same_starting_weights(tmp_path):
    """A diffusers folder and a stable-audio-tools release (its T5 in t5/) start a run from exactly the
    weights, model section and content hash of their conversion to an sa-jax checkpoint."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from test_pipeline import _build_pipeline, tiny_sat_config, tiny_sat_release

    from sa_jax import StableAudio

    _build_pipeline(tmp_path / "diffusers")
    tiny_sat_release(tmp_path / "sat", tiny_sat_config(), seed=11)   # as test_pipeline's sat_folder
    for name in ("diffusers", "sat"):
        folder = tmp_path / name
        converted = StableAudio.load(folder).save(tmp_path / f"{name}-converted")
        runs = [ft.load_init(load(TrainConfig, None, [f"init.from={path}", f"checkpoint.dir={tmp_path / 'run'}"]))
                for path in (folder, converted)]
        (cfg_a, a), (cfg_b, b) = runs
        assert cfg_a.model == cfg_b.model and a.hash == b.hash, name
        for x, y in zip(leaves(a.params), leaves(b.params)):
            np.testing.assert_array_equal(x, y, err_msg=name)
        for x, y in zip(leaves(a.autoencoder.params), leaves(b.autoencoder.params)):
            np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.mark.slow   # two tiny runs: ~60 s on a busy 2-core VM
def test_optimiser_state_and_ema_in_host_memory(tmp_path):
    """optim.offload: the optimiser state and EMA live in host memory (pinned_host) between steps, a run
    stopped and resumed is bitwise the run without offloading."""
    latents = write_latents(tmp_path / "latents", count=4)
    cfg = lambda run, offload: load(TrainConfig, ROOT / "configs" / CONFIGS["sao"], tiny_overrides(
        latents, tmp_path / run, **{"steps": 4, "checkpoint.every": 2, "optim.offload": offload}))
    plain = train(cfg("plain", False), print_fn=lambda line: None).state
    stopped = train(cfg("offload", True), stop_at=2, print_fn=lambda line: None).state
    kinds = {x.sharding.memory_kind for x in jax.tree.leaves((stopped.opt_state, stopped.ema))}
    assert kinds == {"pinned_host"} and jax.tree.leaves(stopped.params)[0].sharding.memory_kind == "device"
    resumed = train(cfg("offload", True), print_fn=lambda line: None).state
    for name in ("params", "ema", "opt_state"):
        for a, b in zip(leaves(getattr(resumed, name)), leaves(getattr(plain, name))):
            np.testing.assert_array_equal(a, b, err_msg=name)
