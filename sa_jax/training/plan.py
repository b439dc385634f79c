"""Plan before you rent: compile a run's program for the devices present, or for a real TPU slice on
this CPU (libtpu's own compiler, ahead of time), and report what XLA says about it: memory per device
(arguments, outputs, temporaries, against the chip's HBM), FLOPs per step, and on a TPU topology the
compiler's time estimate and the model FLOP utilisation (MFU) it implies. Nothing is loaded, read or
allocated: parameters, optimiser state, frozen encoders and batches are jax.ShapeDtypeStructs with
their shardings.

    report = plan_train(cfg, topology="v5e:4x4", slices=1)          # sa-jax train --plan --topology ...
    report = plan_sampling("train_dit_sao", batch=64, topology="v5p:2x4x4")   # sa-jax sample --plan ...
    print(format_report(report))    # the text lines, then one JSON line (report["json"])

Topology names: libtpu's (`v5e:4x4`, `v5p:2x4x4`, `v4:2x2x2`, `v6e:4x4`) or Cloud TPU accelerator types
(`v5litepod-16` = `v5e-16`, `v5p-64`, `v4-8`, `v6e-16`), which are translated to the former (`TPU_TYPES`).
`slices` > 1 plans a multi-slice run: the data axis spans the slices (data parallelism over DCN), the
other axes stay inside a slice.

libtpu is kept out of the default environment (with it importable every JAX process probes for a TPU):
`bash setup.sh tpu` installs it into `.tpu/` of the checkout, and only a plan with a topology loads it,
by path (TPU_LIBRARY_PATH), after the CPU backend is up. `SA_JAX_LIBTPU=/path/to/libtpu.so` points
elsewhere; on a TPU VM the installed `libtpu` package is used.

The time estimate is XLA's `optimal_seconds` (its cost model of the compiled program, communication
included); MFU = FLOPs per device / (estimate x the chip's peak bf16 FLOP/s). With rematerialisation
the FLOPs include the recomputed forward passes, so that MFU counts hardware FLOPs; bench/RESULTS.md
compares remat settings with the FLOPs of the run without remat.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.errors import ConfigError

GiB = 2 ** 30
LIBTPU = Path(__file__).resolve().parents[2] / ".tpu" / "libtpu" / "libtpu.so"   # `bash setup.sh tpu`

# Per chip (public specifications): HBM bytes and peak dense bfloat16 FLOP/s, by JAX's device_kind.
CHIPS = {
    "TPU v4": (32 * GiB, 275e12),
    "TPU v5 lite": (16 * GiB, 197e12),   # v5e
    "TPU v5": (95 * GiB, 459e12),        # v5p
    "TPU v6 lite": (32 * GiB, 918e12),   # v6e (Trillium)
}

# Cloud TPU accelerator types -> libtpu topology names. v5e / v6e count chips; v4 / v5p count TensorCores
# (two per chip), so v5p-64 is 32 chips.
_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8", 512: "8x8x8",
       1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
TPU_TYPES = {"v5litepod": ("v5e", _2D, 1), "v5e": ("v5e", _2D, 1), "v6e": ("v6e", _2D, 1),
             "v5p": ("v5p", _3D, 2), "v4": ("v4", _3D, 2)}


def topology_name(name: str) -> str:
    """A libtpu topology name for `name` (a libtpu name is returned as it is)."""
    m = re.fullmatch(r"(v5litepod|v5e|v6e|v5p|v4)-(\d+)", name.strip())
    if not m:
        return name.strip()
    gen, shapes, per_chip = TPU_TYPES[m.group(1)]
    count = int(m.group(2))
    chips = count // per_chip
    if count % per_chip or chips not in shapes:
        raise ConfigError(f"--topology {name}: no slice shape known for {count} "
                          f"{'TensorCores' if per_chip > 1 else 'chips'}; give libtpu's name instead, e.g. "
                          f"{gen}:{next(iter(shapes.values()))} (chips per axis)")
    return f"{gen}:{shapes[chips]}"


def libtpu_path() -> str:
    """The libtpu shared library a topology plan loads; ConfigError saying how to install it."""
    for candidate in (os.environ.get("SA_JAX_LIBTPU"), os.environ.get("TPU_LIBRARY_PATH"), str(LIBTPU)):
        if candidate and Path(candidate).is_file():
            return candidate
    try:
        import libtpu  # an installed package (a TPU VM)

        return libtpu.get_library_path()
    except ImportError:
        raise ConfigError(f"planning for a TPU topology needs libtpu, which is not installed: run `bash setup.sh "
                          f"tpu` (it goes into {LIBTPU.parents[1]}, off the default environment) or set "
                          "SA_JAX_LIBTPU=/path/to/libtpu.so") from None


def tpu_devices(topology: str, slices: int = 1) -> list:
    """The (compile-only) devices of `slices` slices of a TPU topology, from libtpu on this machine."""
    from jax.experimental import topologies

    if slices < 1:
        raise ConfigError(f"--slices must be >= 1, got {slices}")
    name = topology_name(topology)
    # TPU_LIBRARY_PATH is read when the TPU plugin loads; ALLOW_MULTIPLE_LIBTPU_LOAD lets several plans run
    # at once (libtpu otherwise holds /tmp/libtpu_lockfile for the chips, which a compile does not use); the
    # other two only quiet libtpu's start-up warnings on a machine that is not a TPU VM. They are set while
    # the topology is made, then restored (TPU_WORKER_HOSTNAMES would make a later trainer in this process
    # start jax.distributed).
    env = {"TPU_LIBRARY_PATH": libtpu_path(), "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
           "TPU_ACCELERATOR_TYPE": "v5litepod-16", "TPU_WORKER_HOSTNAMES": "localhost"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items() if k == "TPU_LIBRARY_PATH" or saved[k] is None})
    try:
        topo = topologies.get_topology_desc(topology_name=name, platform="tpu",
                                            **({"num_slices": slices} if slices > 1 else {}))
    except Exception as e:   # libtpu's INVALID_ARGUMENT and friends
        raise ConfigError(f"--topology {topology}: libtpu cannot make this topology ({str(e).splitlines()[0]}); "
                          "names: libtpu's (v5e:4x4, v5p:2x4x4, v4:2x2x2, v6e:4x4) or Cloud TPU types "
                          "(v5litepod-16, v5e-16, v5p-64, v4-8, v6e-16)") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return list(topo.devices)


def plan_mesh(mesh_cfg, devices, slices: int = 1):
    """The run's mesh over `devices`; with several slices the data axis is split across them (DCN)."""
    from sa_jax.parallel import make_mesh, mesh_shape

    if slices == 1:
        return make_mesh(mesh_cfg, devices)
    from jax.experimental import mesh_utils

    shape = list(mesh_shape(mesh_cfg.shape, len(devices)))
    dcn_axes = [a for a in mesh_cfg.batch_axes if a != mesh_cfg.fsdp_axis]
    i = mesh_cfg.axes.index(dcn_axes[0]) if dcn_axes else None
    if i is None or shape[i] % slices:
        axis = dcn_axes[0] if dcn_axes else "a batch axis that is not the FSDP axis"
        raise ConfigError(f"--slices {slices}: the mesh {dict(zip(mesh_cfg.axes, shape))} must put a multiple of "
                          f"{slices} devices on {axis} (data parallelism across slices), e.g. "
                          f"mesh.shape=[{slices},-1]")
    ici, dcn = list(shape), [1] * len(shape)
    ici[i], dcn[i] = shape[i] // slices, slices
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    return jax.sharding.Mesh(grid, tuple(mesh_cfg.axes),
                             axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def _target(topology: str | None, slices: int):
    """(devices, their description, topology name or None, HBM and peak FLOP/s per device or None)."""
    if topology is None:
        if slices != 1:
            raise ConfigError("--slices needs --topology (a plan for the devices present has no slices)")
        devices = jax.devices()
    else:
        devices = tpu_devices(topology, slices)
    kind = devices[0].device_kind
    hbm = peak = None
    if kind in CHIPS:
        cores = len({getattr(d, "core_on_chip", 0) for d in devices})   # devices per chip
        hbm, peak = CHIPS[kind][0] / cores, CHIPS[kind][1] / cores
    elif devices[0].platform == "gpu":
        stats = devices[0].memory_stats() or {}
        hbm = stats.get("bytes_limit")
    where = f"{len(devices)} x {kind}"
    if topology is not None:
        where += f" (topology {topology_name(topology)}" + (f", {slices} slices" if slices > 1 else "") + ")"
    return devices, where, (topology_name(topology) if topology else None), hbm, peak


def program_stats(compiled) -> dict:
    """Memory per device and FLOPs of a compiled program, as XLA reports them."""
    from sa_jax.training.engine import step_flops

    m = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    out = {"flops_per_device": step_flops(compiled)}
    seconds = cost.get("optimal_seconds")
    out["optimal_seconds"] = float(seconds) if seconds is not None and seconds > 0 else None
    if m is None:
        return {**out, "bytes_per_device": None}
    out.update(argument_bytes=int(m.argument_size_in_bytes), output_bytes=int(m.output_size_in_bytes),
               alias_bytes=int(m.alias_size_in_bytes), temp_bytes=int(m.temp_size_in_bytes),
               host_bytes=int(getattr(m, "host_argument_size_in_bytes", 0) + getattr(m, "host_temp_size_in_bytes", 0)))
    # peak: inputs live, outputs not written over a donated input, and the scratch space
    out["bytes_per_device"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    return out


def _gib_in(text: str, label: str):
    """Bytes of `label (12.3G)` / `label 12.3G` in a compiler message, or None."""
    m = re.search(re.escape(label) + r"\D{0,3}([0-9.]+)([KMGT])", text)
    return None if m is None else int(float(m.group(1)) * 2 ** (10 * "KMGT".index(m.group(2)) + 10))


def compile_stats(fn, *args) -> tuple[dict, float]:
    """(program_stats of `fn` compiled for these abstract arguments, compile seconds). A program the TPU
    compiler refuses for want of HBM is a result, not an error: {"out_of_memory": its message,
    "bytes_per_device": what it says it needed, when it says}."""
    t = time.perf_counter()
    try:
        compiled = fn.lower(*args).compile()
    except Exception as e:   # jax.errors.JaxRuntimeError
        msg = str(e)
        if "RESOURCE_EXHAUSTED" not in msg:
            raise
        msg = msg.split("RESOURCE_EXHAUSTED:", 1)[-1].strip().splitlines()[0]
        need = _gib_in(msg, "memory required for HLO temporaries") or _gib_in(msg, "Used")
        return {"out_of_memory": msg, "bytes_per_device": need, "flops_per_device": None,
                "optimal_seconds": None}, time.perf_counter() - t
    return program_stats(compiled), time.perf_counter() - t


def _finish(report: dict, devices: int, hbm, peak, seconds, flops_per_device) -> dict:
    """Fill the fit, the estimate and MFU, and the JSON line's fields."""
    b = report["bytes_per_device"]
    fits = None if (b is None or hbm is None) else b <= hbm
    report.update(devices=devices, hbm_per_device=hbm, peak_flops_per_device=peak,
                  fits=False if report.get("out_of_memory") else fits, estimated_seconds=seconds,
                  flops_per_step=None if flops_per_device is None else flops_per_device * devices,
                  flops_per_device=flops_per_device,
                  mfu=(flops_per_device / (seconds * peak)) if (seconds and peak and flops_per_device) else None)
    return report


# ---------------------------------------------------------------------------------------------
# Training


def plan_train(cfg, topology: str | None = None, slices: int = 1) -> dict:
    """Compile the run's train step (diffusion trainer) for the devices present or a TPU topology."""
    trainer = getattr(cfg, "trainer", "diffusion")
    if trainer != "diffusion":
        raise ConfigError(f"--plan is not supported for trainer {trainer!r} yet (only diffusion runs); the VAE "
                          "and CLAP trainers print their compiled step's memory analysis when they start")
    from sa_jax.parallel import batch_divisor
    from sa_jax.training.diffusion import plan_inputs

    cfg, init_notes = follow_init(cfg)
    devices, where, topo, hbm, peak = _target(topology, slices)
    mesh = plan_mesh(cfg.mesh, devices, slices)
    processes = len({d.process_index for d in devices})   # hosts of the slice(s): one trainer process each
    global_bs = cfg.data.batch_size * processes
    if global_bs % batch_divisor(mesh, cfg.mesh):
        raise ConfigError(f"the global batch {global_bs} (data.batch_size {cfg.data.batch_size} x {processes} "
                          f"processes) is not divisible by the {batch_divisor(mesh, cfg.mesh)} devices of the batch "
                          f"axes {list(cfg.mesh.batch_axes)}")
    step, state, frozen_params, batch, notes = plan_inputs(cfg, mesh, global_bs)
    notes = init_notes + notes
    stats, compile_s = compile_stats(step, state, frozen_params, batch)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
    x = batch.get("latents", batch.get("audio"))
    report = {"what": "train", "config": cfg.model.family, "params": n_params, "mesh": dict(mesh.shape),
              "where": where, "topology": topo, "slices": slices, "global_batch": global_bs,
              "processes": processes, "per_process_batch": cfg.data.batch_size,
              "input": f"{'latents' if 'latents' in batch else 'audio'} {tuple(x.shape)}",
              "remat": getattr(cfg.model, "remat", None), "dtype": cfg.model.compute_dtype,
              "compile_seconds": compile_s, "notes": notes, **stats}
    return _finish(report, len(devices), hbm, peak, stats["optimal_seconds"], stats["flops_per_device"])


# ---------------------------------------------------------------------------------------------
# Sampling


def _checkpoint_model(path: Path, what: str):
    """(training ModelConfig, autoencoder config, window frames, SamplingDefaults) of an sa-jax text-to-audio
    checkpoint, from its config.yaml alone (the weights are not read)."""
    from sa_jax.checkpoints import store
    from sa_jax.config import from_dict, naming
    from sa_jax.families import SamplingDefaults, family_class
    from sa_jax.models.autoencoder import config_from_dict as ae_from_dict
    from sa_jax.training.config import ModelConfig

    config = store.read_config(path)
    with naming(path / store.CONFIG_FILE):
        family = family_class(config.get("family", "sao"), path)
        if config.get("model_type") != "diffusion_cond":
            raise ConfigError(f"{what} {path} is an sa-jax {config.get('model_type')!r} checkpoint, not a "
                              "text-to-audio model")
        family.check_sections(config, path)
        if family.name == "sao":
            m = from_dict(ModelConfig, {"family": "sao", "dit": config["dit"], "conditioning": config["conditioning"]})
        else:
            unet = config["unet"]
            m = from_dict(ModelConfig, {"family": "sa1", "unet": unet, "timing": config["timing"][1],
                                        "text_tokens": config.get("text_tokens", 77),
                                        "text_dim": unet["context_embedding_features"]})
        ae = ae_from_dict(config["autoencoder"])
        defaults = from_dict(SamplingDefaults, config.get("sampling", {}), "sampling")
    return m, ae, int(config["sample_size"]) // ae.downsampling_ratio, defaults


def follow_init(cfg) -> tuple:
    """(cfg as a run from `init.from` resolves it, notes), for `train --plan`, from the starting model's config
    alone: an sa-jax checkpoint's config.yaml gives the model (a setting of the config that contradicts it is
    the run's own ConfigError), its text encoder and its autoencoder (the latent frames). A model in another
    format, or not on this machine, is planned with the config's model section, and a note says so."""
    import dataclasses

    from sa_jax.checkpoints import store
    from sa_jax.training.finetune import resolve_model

    if not getattr(cfg, "init_from", None):
        return cfg, []
    path = Path(cfg.init_from)
    if not (path.is_dir() and store.is_checkpoint(path)):
        where = "is not on this machine" if not path.exists() else "is not an sa-jax checkpoint (--plan reads those)"
        return cfg, [f"init.from {path} {where}: planned with the config's model section, which the run checks "
                     "against that model"]
    m, *_ = _checkpoint_model(path, "init.from")
    fields = ("dit", "conditioning") if m.family == "sao" else ("unet", "timing", "text_tokens", "text_dim")
    model = resolve_model(cfg, {k: getattr(m, k) for k in ("family", *fields)})   # the run's own check
    layer = cfg.text.layer if m.family == "sao" else store.read_config(path).get("text_layer", -2)
    text = dataclasses.replace(cfg.text, source="t5" if m.family == "sao" else "clap", layer=layer, path=str(path))
    cfg = dataclasses.replace(cfg, model=model, text=text, autoencoder=dataclasses.replace(cfg.autoencoder,
                                                                                           path=str(path)))
    return cfg, [f"model, text encoder and autoencoder: init.from {path}'s (its config.yaml)"]


def _sampling_model(model, dtype: str | None):
    """(training ModelConfig, autoencoder config or None, window frames, SamplingDefaults, dtype, notes)
    from an sa-jax checkpoint folder (its config.yaml; the weights are not read) or a training config."""
    from sa_jax.checkpoints import store
    from sa_jax.config import load
    from sa_jax.families import family_class
    from sa_jax.pipeline import shipped_model
    from sa_jax.training.config import TrainConfig

    path = Path(model) if model is not None else shipped_model()
    if path.is_dir():
        if not store.is_checkpoint(path):
            raise ConfigError(f"--model {path}: a plan reads an sa-jax checkpoint's config.yaml or a training config; "
                              "convert this folder first (`sa-jax convert`) or give the training config of its model")
        m, ae, frames, defaults = _checkpoint_model(path, "--model")
        return m, ae, frames, defaults, dtype or "float32", []
    cfg = load(TrainConfig, model)
    from sa_jax.training.frozen import plan_frozen

    frozen, notes = plan_frozen(cfg)
    ae = frozen.autoencoder.config if frozen.autoencoder is not None else None
    if ae is None:   # the family's own VAE when it fits the denoiser, as plan_frozen does for a missing one
        from sa_jax.config import load_yaml
        from sa_jax.models.autoencoder import config_from_dict

        reference = {"sao": "vae_sao", "sa1": "vae_sa1"}[cfg.model.family]
        ae = config_from_dict(load_yaml(reference)["autoencoder"])
        if ae.latent_dim == cfg.model.latent_dim:
            notes.append(f"the training config names no autoencoder (autoencoder.path): decoding with {reference}'s "
                         "shapes")
        else:
            notes.append("the training config names no autoencoder (autoencoder.path): the VAE decode is not planned")
            ae = None
    ratio = ae.downsampling_ratio if ae is not None else {"sao": 2048, "sa1": 1024}[cfg.model.family]
    frames = cfg.data.latent_window or cfg.data.window // ratio
    defaults = family_class(cfg.model.family).defaults
    return cfg.model, ae, frames, defaults, dtype or cfg.model.compute_dtype, notes


def _decode_calls(frames: int, chunk: int | None = None, overlap: int = 32) -> tuple[int, int]:
    """(chunk length, number of decoder calls) of `Autoencoder.decode`'s chunking for `frames` frames (chunks of
    DEFAULT_CHUNK_FRAMES unless `chunk` says)."""
    from sa_jax.autoencoder import DEFAULT_CHUNK_FRAMES

    chunk = DEFAULT_CHUNK_FRAMES if chunk is None else chunk
    if frames <= chunk:
        return frames, 1
    return chunk, len(range(0, frames - chunk, chunk - overlap)) + 1


def plan_sampling(model=None, batch: int = 1, steps: int | None = None, sampler: str | None = None,
                  cfg_scale: float | None = None, dtype: str | None = None, topology: str | None = None,
                  slices: int = 1) -> dict:
    """Compile the whole jitted sampling loop (CFG, `steps` steps of `sampler`) and the VAE decode for
    `batch` clips sharded over the devices (parameters replicated, as `StableAudio` runs)."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P
    from jax.tree_util import Partial

    from sa_jax.autoencoder import fits_one_shot, free_memory_bytes, scale_chunk_bytes
    from sa_jax.diffusion import cfg_model, get_sigmas, sample, v_denoiser
    from sa_jax.families import family_class
    from sa_jax.families.sa1 import sa1_network
    from sa_jax.families.sao import sao_network
    from sa_jax.models.autoencoder import AudioAutoencoder
    from sa_jax.nn import compute_dtype
    from sa_jax.training import model as tm

    if batch < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch}")
    m, ae, frames, defaults, dtype, notes = _sampling_model(model, dtype)
    steps = defaults.steps if steps is None else steps
    sampler = defaults.sampler if sampler is None else sampler
    cfg_scale = defaults.cfg_scale if cfg_scale is None else cfg_scale
    devices, where, topo, hbm, peak = _target(topology, slices)
    if batch % len(devices):
        raise ConfigError(f"--batch-size {batch} does not divide over the {len(devices)} devices; give a multiple "
                          f"of {len(devices)}")
    mesh = Mesh(np.array(devices), ("batch",))
    shard, rep = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
    spec = lambda shape, dt, s=shard: jax.ShapeDtypeStruct(shape, dt, sharding=s)

    params = jax.eval_shape(lambda: tm.init_params(m, jax.random.key(0)))["denoiser"]
    n, d = tm.text_shape(m)
    family = family_class(m.family)
    if m.family == "sao":
        network = sao_network(m.dit, dtype)
        cond = {"cross_attn": spec((batch, n, m.conditioning.cond_dim), jnp.float32),
                "global": spec((batch, m.conditioning.global_dim), jnp.float32)}
    else:
        network = sa1_network(m.unet, dtype)
        cond = {"embedding": spec((batch, n + 2, d), jnp.float32), "mask": spec((batch, n + 2), jnp.bool_)}
    guided = cfg_model(Partial(network, params), cond, cond, cfg_scale, rescale=family.cfg_rescale,
                       rescale_axis=1, objective=family.objective)
    # every leaf abstract: parameters and the CFG scale replicated, conditioning split over the batch
    denoiser = jax.tree.map(lambda a: a if isinstance(a, jax.ShapeDtypeStruct) and a.sharding is not None
                            else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), v_denoiser(guided))
    sigmas = np.asarray(get_sigmas("polyexponential", steps, defaults.sigma_min, defaults.sigma_max, defaults.rho))
    key = jax.eval_shape(lambda: jax.random.key(0))
    loop = jax.jit(lambda den, x, sig, k: sample(den, x, sig, sampler, key=k))
    x = spec((batch, m.latent_dim, frames), jnp.float32)
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)
    loop_stats, compile_s = compile_stats(loop, denoiser, x, spec(sigmas.shape, jnp.float32, rep), key)
    param_bytes = lambda tree: sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree))
    report = {"what": "sample", "config": m.family, "params": sum(int(np.prod(a.shape))
                                                                  for a in jax.tree_util.tree_leaves(params)),
              "where": where, "topology": topo, "slices": slices, "batch": batch, "frames": frames, "steps": steps,
              "sampler": sampler, "dtype": dtype, "mesh": dict(mesh.shape), "notes": notes, "loop": loop_stats}
    if loop_stats.get("out_of_memory"):
        report.update(compile_seconds=compile_s, bytes_per_device=loop_stats["bytes_per_device"],
                      out_of_memory=loop_stats["out_of_memory"], seconds_per_clip=None)
        return _finish(report, len(devices), hbm, peak, None, None)
    # XLA's cost analysis counts a while loop's body once whatever its trip count, so the cost of the
    # loop is that of a one-step program (no loop left in it) times the steps; the loop gives the memory
    step_stats, dt = compile_stats(loop, denoiser, x, spec((2,), jnp.float32, rep), key)
    compile_s += dt
    loop_stats.update(flops_per_device=steps * step_stats["flops_per_device"],
                      optimal_seconds=steps * step_stats["optimal_seconds"] if step_stats["optimal_seconds"] else None)
    total_flops, seconds, peak_bytes = (loop_stats["flops_per_device"], loop_stats["optimal_seconds"],
                                        loop_stats["bytes_per_device"])
    if ae is not None:
        module = AudioAutoencoder(ae, dtype=compute_dtype(dtype))
        ae_params = jax.eval_shape(lambda: module.init(
            jax.random.key(0), jnp.zeros((1, ae.downsampling_ratio, ae.io_channels)), jax.random.key(0))["params"])
        ae_params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), ae_params)
        chunk, calls = _decode_calls(frames)
        decode = jax.jit(lambda p, z: module.apply({"params": p}, z, method=module.decode))
        dec, dt = compile_stats(decode, ae_params, spec((batch, chunk, ae.latent_dim), jnp.float32))
        compile_s += dt
        # decode(chunk_frames="auto") as the run makes it: one shot when the chunk's allocations scaled to the
        # whole length and batch (the run decodes the batch on one device) fit in what the device has free
        # beside both models' parameters
        one_shot = False
        if calls > 1 and dec.get("temp_bytes") is not None:
            need = scale_chunk_bytes(dec["temp_bytes"] + dec["output_bytes"], batch // len(devices), chunk,
                                     batch, frames)
            free = hbm if hbm is not None else (free_memory_bytes(devices[0]) if topology is None else None)
            free = None if free is None else free - param_bytes(params) - param_bytes(ae_params)
            one_shot = fits_one_shot(need, free)
        if one_shot:
            chunk, calls = frames, 1
            dec, dt = compile_stats(decode, ae_params, spec((batch, frames, ae.latent_dim), jnp.float32))
            compile_s += dt
        report["decode"] = dict(dec, calls=calls, chunk_frames=chunk, one_shot=one_shot)
        if dec.get("out_of_memory"):
            report["out_of_memory"] = "VAE decode: " + dec["out_of_memory"]
            total_flops = seconds = None
        else:
            total_flops += calls * dec["flops_per_device"]
            seconds = (seconds + calls * dec["optimal_seconds"]) if (seconds and dec["optimal_seconds"]) else None
        if peak_bytes is not None and dec["bytes_per_device"] is not None:
            # both models stay loaded: each program runs beside the other one's parameters
            peak_bytes = max(peak_bytes + param_bytes(ae_params), dec["bytes_per_device"] + param_bytes(params))
    report.update(bytes_per_device=peak_bytes, compile_seconds=compile_s,
                  seconds_per_clip=(seconds / batch) if seconds else None)
    return _finish(report, len(devices), hbm, peak, seconds, total_flops)


# ---------------------------------------------------------------------------------------------
# The report


def _size(n) -> str:
    if n is None:
        return "?"
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:.1f} MiB"


def json_line(report: dict) -> str:
    """The plan's last line: one JSON object (the fields the issues name, then the rest)."""
    out = {"bytes_per_device": report["bytes_per_device"], "flops_per_step": report["flops_per_step"],
           "devices": report["devices"]}
    if report["topology"] is not None:
        out.update(topology=report["topology"], slices=report["slices"],
                   estimated_step_seconds=report["estimated_seconds"], mfu=report["mfu"])
    out.update(flops_per_device=report["flops_per_device"], mesh=report["mesh"],
               hbm_per_device=report["hbm_per_device"], fits=report["fits"],
               compile_seconds=round(report["compile_seconds"], 1))
    if report.get("out_of_memory"):
        out["out_of_memory"] = report["out_of_memory"]
    if report["what"] == "train":
        out.update(global_batch=report["global_batch"], params=report["params"])
    else:
        out.update(batch=report["batch"], steps=report["steps"], seconds_per_clip=report["seconds_per_clip"])
    return json.dumps(out)


def format_report(report: dict) -> str:
    """The human-readable plan, ending with `json_line`."""
    r = report
    lines = [f"plan: {r['what']} ({r['config']}, {r['params'] / 1e6:.1f}M parameters, {r['dtype']})"]
    lines += [f"note: {n}" for n in r["notes"]]
    lines.append(f"devices: {r['where']}, mesh {r['mesh']}")
    if r["what"] == "train":
        lines.append(f"batch: {r['global_batch']} global (data.batch_size {r['per_process_batch']} x "
                     f"{r['processes']} processes), {r['input']}; remat {r['remat']}")
        parts = [r]
    else:
        lines.append(f"batch: {r['batch']} clips of {r['frames']} latent frames, {r['steps']} steps of {r['sampler']} "
                     "with CFG (one program), then the VAE decode")
        parts = [r["loop"]] + ([r["decode"]] if "decode" in r else [])
    for p, name in zip(parts, ("sampling loop", "VAE decode") if r["what"] == "sample" else ("train step",)):
        if p.get("argument_bytes") is not None:
            host = f", host {_size(p['host_bytes'])}" if p.get("host_bytes") else ""
            calls = "" if "calls" not in p else (f" (one shot of {p['chunk_frames']} frames)" if p.get("one_shot")
                                                 else f" (x{p['calls']} chunks of {p['chunk_frames']} frames)")
            lines.append(f"memory per device, {name}{calls}: arguments {_size(p['argument_bytes'])}, outputs "
                         f"{_size(p['output_bytes'])} ({_size(p['alias_bytes'])} reusing donated inputs), "
                         f"temporaries {_size(p['temp_bytes'])}{host}")
    fit = "" if r["hbm_per_device"] is None else (
        f" of {_size(r['hbm_per_device'])} per device: " + ("fits" if r["fits"] else "DOES NOT FIT"))
    if r.get("out_of_memory"):
        lines.append(f"DOES NOT FIT: the compiler ran out of memory: {r['out_of_memory']}")
    lines.append(f"total per device: {_size(r['bytes_per_device'])}{fit}")
    unit = "step" if r["what"] == "train" else "batch"
    if r["flops_per_step"] is not None:
        lines.append(f"FLOPs per {unit}: {r['flops_per_step']:.3e} ({r['flops_per_device']:.3e} per device)")
    if r["estimated_seconds"]:
        line = f"compiler's estimate: {r['estimated_seconds']:.4g} s per {unit}"
        if r["what"] == "sample":
            line += f", {r['seconds_per_clip']:.4g} s per clip"
        if r["mfu"] is not None:
            line += f"; MFU {100 * r['mfu']:.1f}% of {r['peak_flops_per_device'] / 1e12:.0f} TFLOP/s per device"
        lines.append(line)
    elif r["topology"] is None:
        lines.append("time: no compiler estimate for these devices (plan with --topology for a TPU's)")
    elif not r.get("out_of_memory"):
        lines.append("time: the compiler gave no estimate for this program")
    lines.append(f"compiled in {r['compile_seconds']:.1f} s")
    lines.append(json_line(r))
    return "\n".join(lines)
