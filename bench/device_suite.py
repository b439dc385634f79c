"""The accelerator suite: one command for a short GPU lease, sa-jax against the PyTorch reference on the same card.

    python bench/device_suite.py                 # on a GPU: full sizes, one table + device_suite.json
    python bench/device_suite.py --smoke         # the same code at tiny sizes on the CPU (tested in CI)
    python bench/device_suite.py --only sao,train_dit --out $OUT/suite.json

Cases (random weights at the released shapes; nothing is downloaded):
  sao        Stable Audio Open generation of its 47.55 s window (T5-base, DiT 24 x 1536, Oobleck VAE decode),
             100 steps, CFG 7: sa-jax (`StableAudio.load(folder, dtype="bfloat16")`, dpmpp-3m-sde) against
             diffusers' StableAudioPipeline in float16 (its own DPM-Solver++ 2M SDE scheduler), both from
             one saved diffusers folder.
  sa1        The paper's model at 95 s (U-Net ~907M + DAC-style VAE, a 2-layer 768-wide CLAP text tower,
             which costs nothing beside the U-Net), 100 steps dpmpp-3m-sde, CFG 7: sa-jax in bfloat16
             against stable-audio-tools' UNetCFG1d + VAE driven by k-diffusion in float16; and the VAE
             decode of 95 s alone on both sides.
  train_dit  SAO's DiT training step (bfloat16 compute, float32 master weights, AdamW, EMA), remat off/on.
  train_unet The paper's U-Net training step, likewise.
Training rows give TFLOP/s from an analytic count (DiT: 6 x matmul parameters x tokens + attention;
U-Net: XLA's count of the forward and backward, stated as such) and MFU against the card's bfloat16
peak (a table of known cards, or `--peak-tflops`).

Each (case, side) runs in its own subprocess, so peak memory is its own and JAX and torch never share a
card (JAX's preallocation is off). The first sa-jax call of each case compiles and is reported apart;
the timed number is the median of `--repeats` calls after it. The machine must have what the reference
needs (diffusers, stable-audio-tools, k-diffusion and their pure-Python dependencies): on a machine
without network, bring them as wheels (bench/wheels.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = ("sao", "sa1", "train_dit", "train_unet")

# Sizes. "full" is the released models; "smoke" keeps every code path at toy sizes for the CPU.
SIZES = {
    "full": dict(
        steps=100, repeats=3, train_steps=5,
        sao=dict(width=1536, depth=24, heads=24, kv_heads=12, frames=1024, t5_dim=768, t5_ff=3072, t5_layers=12,
                 t5_heads=12, t5_vocab=32128, vae_channels=128, vae_decoder=128),
        sa1=dict(unet="unet_sa1", vae="vae_sa1", frames=4096, text_dim=768),
        train_dit=dict(config="train_dit_sao", batch=8, frames=1024),
        train_unet=dict(config="train_unet_sa1", batch=4, frames=4096),
    ),
    "smoke": dict(
        steps=3, repeats=1, train_steps=2,
        sao=dict(width=128, depth=2, heads=2, kv_heads=1, frames=32, t5_dim=64, t5_ff=128, t5_layers=2, t5_heads=1,
                 t5_vocab=64, vae_channels=128, vae_decoder=8),
        sa1=dict(unet="tiny", vae="tiny", frames=32, text_dim=64),
        train_dit=dict(config="train_dit_tiny", batch=2, frames=32),
        train_unet=dict(config="train_unet_tiny", batch=2, frames=32),
    ),
}
CFG_SCALE = 7.0
PROMPT = "128 bpm tech house drum loop"
# Dense bfloat16 peak TFLOP/s by device kind (vendor figures, without sparsity).
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0, "L4": 121.0}

# The tiny U-Net / VAE of the smoke run (the paper's shapes come from configs/unet_sa1.yaml, vae_sa1.yaml).
TINY_UNET = dict(in_channels=8, channels=32, multipliers=[1, 1], factors=[2], num_blocks=[1], attentions=[1, 1],
                 context_embedding_features=64, context_embedding_max_length=79, attention_heads=2,
                 attention_multiplier=2, resnet_groups=4, use_context_time=True)
TINY_VAE = {"encoder": {"type": "dac", "config": {"in_channels": 2, "latent_dim": 16, "d_model": 4,
                                                  "strides": [2, 4, 2]}},
            "decoder": {"type": "dac", "config": {"out_channels": 2, "latent_dim": 8, "channels": 16,
                                                  "rates": [2, 4, 2]}},
            "bottleneck": {"type": "vae"}, "latent_dim": 8, "downsampling_ratio": 16, "io_channels": 2}


# ---------------------------------------------------------------------------------------------
# Shared helpers


def peak_memory_gib(side: str) -> float | None:
    """The process's peak accelerator memory (None on the CPU)."""
    if side == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None


def timed_calls(fn, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, median seconds of `repeats` calls after it). `fn` must wait for its result."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def torch_device():
    import torch

    return ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32)


# ---------------------------------------------------------------------------------------------
# Stable Audio Open generation


def build_sao(folder: Path, s: dict) -> None:
    import torch
    import transformers
    from bench_generate import tokenizer  # bench/ is on the path: this script's folder
    from diffusers import (
        AutoencoderOobleck,
        CosineDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioPipeline,
    )
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel

    torch.manual_seed(0)
    tok = tokenizer(s["t5_vocab"])
    tok.model_max_length = 128
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=s["t5_vocab"], d_model=s["t5_dim"], d_kv=64, d_ff=s["t5_ff"], num_layers=s["t5_layers"],
        num_heads=s["t5_heads"], feed_forward_proj="relu", dropout_rate=0.0))
    d = s["t5_dim"]
    proj = StableAudioProjectionModel(text_encoder_dim=d, conditioning_dim=d, min_value=0, max_value=512)
    dit = StableAudioDiTModel(sample_size=s["frames"], in_channels=64, out_channels=64, num_layers=s["depth"],
                              attention_head_dim=s["width"] // s["heads"], num_attention_heads=s["heads"],
                              num_key_value_attention_heads=s["kv_heads"], cross_attention_dim=d,
                              cross_attention_input_dim=d, global_states_input_dim=2 * d, time_proj_dim=256)
    vae = AutoencoderOobleck(encoder_hidden_size=s["vae_channels"], downsampling_ratios=[2, 4, 4, 8, 8],
                             channel_multiples=[1, 2, 4, 8, 16], decoder_channels=s["vae_decoder"],
                             decoder_input_channels=64, audio_channels=2, sampling_rate=44100)
    pipe = StableAudioPipeline(vae=vae.eval(), text_encoder=t5.eval(), projection_model=proj.eval(), tokenizer=tok,
                               transformer=dit.eval(), scheduler=CosineDPMSolverMultistepScheduler())
    pipe.save_pretrained(folder)


def sao_torch(folder: Path, size: dict) -> list[dict]:
    import torch
    from diffusers import StableAudioPipeline

    build_sao(folder, size["sao"])
    device, dtype = torch_device()
    pipe = StableAudioPipeline.from_pretrained(folder, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    seconds = size["sao"]["frames"] * 2048 / 44100

    def call():
        with torch.no_grad():
            out = pipe(PROMPT, num_inference_steps=size["steps"], guidance_scale=CFG_SCALE, audio_end_in_s=seconds,
                       generator=torch.Generator(device).manual_seed(0)).audios
        out.float().cpu()

    first, median = timed_calls(call, size["repeats"])
    return [dict(case="sao generate", side="diffusers", dtype=str(dtype).removeprefix("torch."), seconds=median,
                 first=first, audio_seconds=seconds, peak_gib=peak_memory_gib("torch"))]


def sao_jax(folder: Path, size: dict) -> list[dict]:
    import numpy as np

    from sa_jax import StableAudio

    rows = []
    for dtype in ("bfloat16", "float32"):
        sa = StableAudio.load(folder, dtype=dtype, vae_dtype=dtype)   # diffusers runs its VAE in float16 too

        def call():
            audio = sa.generate([PROMPT], seconds_total=sa.window_seconds, steps=size["steps"], cfg_scale=CFG_SCALE,
                                sampler="dpmpp-3m-sde", seed=0)
            assert np.all(np.isfinite(audio))

        first, median = timed_calls(call, size["repeats"])
        rows.append(dict(case="sao generate", side="sa-jax", dtype=dtype, seconds=median, first=first,
                         audio_seconds=sa.window_seconds, peak_gib=peak_memory_gib("jax")))
    return rows


# ---------------------------------------------------------------------------------------------
# The paper's model (Stable Audio 1.0) generation and its VAE decode


def sa1_parts(size: dict):
    """(U-Net kwargs, VAE config) at the suite's size."""
    import yaml

    s = size["sa1"]
    if s["unet"] == "tiny":
        return TINY_UNET, TINY_VAE
    unet = yaml.safe_load((ROOT / "configs" / f"{s['unet']}.yaml").read_text())["unet"]
    vae = yaml.safe_load((ROOT / "configs" / f"{s['vae']}.yaml").read_text())["autoencoder"]
    vae = {k: v for k, v in vae.items() if k != "sample_rate"}
    return unet, vae


def build_sa1(folder: Path, size: dict):
    """A stable-audio-tools release of the paper's layout with random weights, a small transformers CLAP
    folder for its text, and the torch modules (U-Net, timing conditioners, VAE)."""
    import torch
    import transformers
    from safetensors.torch import save_file

    from sa_jax.testing.reference import import_reference

    unet_kw, vae_cfg = sa1_parts(size)
    width = size["sa1"]["text_dim"]
    adp = import_reference("stable_audio_tools.models.adp")
    sat_ae = import_reference("stable_audio_tools.models.autoencoders")
    cond = import_reference("stable_audio_tools.models.conditioners")
    torch.manual_seed(0)
    unet = adp.UNetCFG1d(**unet_kw).eval()
    start, total = cond.IntConditioner(width, 0, 512), cond.IntConditioner(width, 0, 512)
    vae = sat_ae.create_autoencoder_from_config({"sample_rate": 44100, "model": vae_cfg}).eval()
    state = {f"model.model.{k}": v for k, v in unet.state_dict().items()}
    state |= {f"conditioner.conditioners.seconds_start.{k}": v for k, v in start.state_dict().items()}
    state |= {f"conditioner.conditioners.seconds_total.{k}": v for k, v in total.state_dict().items()}
    state |= {f"pretransform.model.{k}": v for k, v in vae.state_dict().items()}
    (folder / "sa1").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "sa1" / "model.safetensors"))
    clap_dir = folder / "clap"
    clap_dir.mkdir()
    tok = _roberta_tokenizer(clap_dir)
    hf = transformers.ClapConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=width, num_hidden_layers=2,
                         num_attention_heads=max(1, width // 64), intermediate_size=2 * width,
                         max_position_embeddings=80),
        audio_config=dict(window_size=4, num_mel_bins=16, spec_size=32, patch_embeds_hidden_size=8, depths=[2, 2],
                          num_attention_heads=[2, 4], hidden_size=16),
        projection_dim=16)
    clap = transformers.ClapModel(hf).eval()
    clap.save_pretrained(clap_dir)
    transformers.ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=128, fft_window_size=256,
                                      frequency_min=0, frequency_max=8000, truncation="rand_trunc",
                                      max_length_s=0.5).save_pretrained(clap_dir)
    frames = size["sa1"]["frames"]
    config = {"model_type": "diffusion_cond", "sample_size": frames * vae_cfg["downsampling_ratio"],
              "sample_rate": 44100, "audio_channels": 2,
              "model": {"pretransform": {"type": "autoencoder", "iterate_batch": True, "config": vae_cfg},
                        "conditioning": {"configs": [
                            {"id": "prompt", "type": "clap_text",
                             "config": {"clap_ckpt_path": str(clap_dir), "use_text_features": True,
                                        "feature_layer_ix": -2, "audio_model_type": "HTSAT-base",
                                        "enable_fusion": True}},
                            {"id": "seconds_start", "type": "int", "config": {"min_val": 0, "max_val": 512}},
                            {"id": "seconds_total", "type": "int", "config": {"min_val": 0, "max_val": 512}}],
                            "cond_dim": width},
                        "diffusion": {"type": "adp_cfg_1d", "cross_attention_cond_ids":
                                      ["prompt", "seconds_start", "seconds_total"], "config": unet_kw},
                        "io_channels": vae_cfg["latent_dim"]}}
    (folder / "sa1" / "model_config.json").write_text(json.dumps(config))
    return dict(clap=clap, tokenizer=tok, unet=unet, start=start, total=total, vae=vae)


def _roberta_tokenizer(folder: Path):
    """A small byte-level BPE RoBERTa tokenizer trained offline on a few phrases, saved in `folder`."""
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([PROMPT, "soft ambient piano", "rain on a roof"] * 10, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    tok = transformers.RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tok.save_pretrained(str(folder))
    return tok


def sa1_torch(folder: Path, size: dict) -> list[dict]:
    import torch

    from sa_jax.testing.kdiffusion_ref import kdiffusion

    parts = build_sa1(folder, size)
    device, dtype = torch_device()
    K = kdiffusion()
    unet = parts["unet"].to(device, dtype)
    vae = parts["vae"].to(device, dtype)
    frames = size["sa1"]["frames"]
    latent_dim = sa1_parts(size)[1]["latent_dim"]
    seconds = frames * sa1_parts(size)[1]["downsampling_ratio"] / 44100
    enc = parts["tokenizer"]([PROMPT], padding="max_length", truncation=True, max_length=77, return_tensors="pt")

    def generate():
        with torch.no_grad():
            text = parts["clap"].text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                            output_hidden_states=True).hidden_states[-2]
            s_emb, s_mask = parts["start"]([0], device="cpu")
            t_emb, t_mask = parts["total"]([max(1, int(seconds))], device="cpu")
            context = torch.cat([text, s_emb, t_emb], dim=1).to(device, dtype)
            mask = torch.cat([enc["attention_mask"], s_mask, t_mask], dim=1).bool().to(device)

            class Inner(torch.nn.Module):
                def forward(self, x, t):
                    return unet(x.to(dtype), t.to(dtype), embedding=context, embedding_mask=mask,
                                embedding_scale=CFG_SCALE, batch_cfg=True, rescale_cfg=True).float()

            denoiser = K.external.VDenoiser(Inner())
            sigmas = K.sampling.get_sigmas_polyexponential(size["steps"], 0.3, 500.0, rho=1.0, device=device)
            noise = torch.randn(1, latent_dim, frames, device=device, generator=torch.Generator(device).manual_seed(0))
            latents = K.sampling.sample_dpmpp_3m_sde(denoiser, noise * sigmas[0], sigmas, disable=True)
            vae.decode(latents.to(dtype)).float().cpu()

    latents = torch.randn(1, latent_dim, frames, device=device, dtype=dtype)

    def decode():
        with torch.no_grad():
            vae.decode(latents).float().cpu()

    rows = []
    for case, fn in (("sa1 generate", generate), ("sa1 VAE decode", decode)):
        first, median = timed_calls(fn, size["repeats"])
        rows.append(dict(case=case, side="stable-audio-tools", dtype=str(dtype).removeprefix("torch."),
                         seconds=median, first=first, audio_seconds=seconds, peak_gib=peak_memory_gib("torch")))
    return rows


def sa1_jax(folder: Path, size: dict) -> list[dict]:
    import numpy as np

    from sa_jax import StableAudio

    rows = []
    sa = StableAudio.load(folder / "sa1", clap=folder / "clap", dtype="bfloat16", vae_dtype="bfloat16")
    seconds = sa.window_seconds

    def generate():
        audio = sa.generate([PROMPT], seconds_total=seconds, steps=size["steps"], cfg_scale=CFG_SCALE,
                            sampler="dpmpp-3m-sde", seed=0)
        assert np.all(np.isfinite(audio))

    latents = np.random.default_rng(0).standard_normal(
        (1, sa.autoencoder.latent_dim, size["sa1"]["frames"])).astype(np.float32)

    def decode(chunk):
        return lambda: np.asarray(sa.autoencoder.decode(latents, chunk_frames=chunk))

    for case, fn in (("sa1 generate", generate), ("sa1 VAE decode", decode(None)),
                     ("sa1 VAE decode, chunked 128", decode(128))):
        first, median = timed_calls(fn, size["repeats"])
        rows.append(dict(case=case, side="sa-jax", dtype="bfloat16", seconds=median, first=first,
                         audio_seconds=seconds, peak_gib=peak_memory_gib("jax")))
    return rows


# ---------------------------------------------------------------------------------------------
# Training steps


def dit_flops_per_step(dit, batch: int, frames: int, text_tokens: int) -> float:
    """Analytic FLOPs of one DiT training step (forward + backward = 3 x forward, no remat recompute):
    2 FLOPs per multiply-add of every projection applied to every token, plus the attention products."""
    d, layers = dit.embed_dim, dit.depth
    tokens = frames + 1                                  # the prepended global token
    ff = dit.embed_dim * 4                               # SwiGLU inner width (x2 for the gate)
    per_token = layers * (4 * d * d + 2 * d * d + d * 2 * ff + ff * d)   # self q,k,v,o; cross q,o; SwiGLU in/out
    per_token += 2 * dit.io_channels * d
    cross_kv = layers * 2 * d * dit.cond_token_dim * text_tokens          # cross-attention keys/values, per item
    attention = layers * 2 * (tokens * tokens * d + tokens * text_tokens * d)   # QK^T and AV, self + cross
    forward = 2 * batch * (per_token * tokens + cross_kv + attention)
    return 3.0 * forward


def train_jax(kind: str, size: dict, peak_tflops: float | None) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sa_jax.config import load
    from sa_jax.parallel import make_mesh
    from sa_jax.training import TrainConfig
    from sa_jax.training import model as tm
    from sa_jax.training.diffusion import create_state, make_train_step
    from sa_jax.training.engine import step_flops

    s = size[kind]
    rows = []
    for remat in ("false", "true"):
        cfg = load(TrainConfig, s["config"], [f"model.remat={remat}", "model.compute_dtype=bfloat16",
                                              "mesh.shape=[1,-1]", "text.source=hash"])
        mesh = make_mesh(cfg.mesh)
        state = create_state(cfg, mesh)
        n, d = tm.text_shape(cfg.model)
        b, frames = s["batch"], s["frames"]
        text, mask = tm.hash_text_features([f"prompt {i}" for i in range(b)], n, d, n // 2)
        rng = np.random.default_rng(0)
        batch = {"latents": jnp.asarray(rng.standard_normal((b, cfg.model.latent_dim, frames)), jnp.float32),
                 "text": jnp.asarray(text), "text_mask": jnp.asarray(mask),
                 "seconds_start": jnp.zeros((b,), jnp.int32), "seconds_total": jnp.full((b,), 10, jnp.int32)}
        step = make_train_step(cfg, mesh)
        compiled = step.lower(state, {}, batch).compile()
        holder = [state]

        def one():
            holder[0], metrics = compiled(holder[0], {}, batch)
            float(metrics["loss"])

        first, median = timed_calls(one, size["train_steps"])
        if kind == "train_dit":
            flops, counted = dit_flops_per_step(cfg.model.dit, b, frames, n), "analytic"
        else:
            flops, counted = step_flops(compiled) * jax.device_count(), "XLA"
        params = sum(x.size for x in jax.tree.leaves(holder[0].params["denoiser"]))
        tflops = flops / median / 1e12
        rows.append(dict(case=f"{kind} remat {remat}", side="sa-jax", dtype="bfloat16", seconds=median, first=first,
                         batch=b, frames=frames, params_m=params / 1e6, tflops=tflops, flops_counted=counted,
                         mfu=tflops / peak_tflops if peak_tflops else None, peak_gib=peak_memory_gib("jax")))
    return rows


# ---------------------------------------------------------------------------------------------
# Orchestration


WORKERS = {("sao", "torch"): sao_torch, ("sao", "jax"): sao_jax, ("sa1", "torch"): sa1_torch,
           ("sa1", "jax"): sa1_jax}


def worker(args) -> int:
    size = SIZES["smoke" if args.smoke else "full"]
    if args.worker_case.startswith("train_"):
        rows = train_jax(args.worker_case, size, args.peak_tflops)
    else:
        rows = WORKERS[(args.worker_case, args.worker_side)](Path(args.folder), size)
    print("ROWS " + json.dumps(rows))
    return 0


def machine() -> dict:
    info = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count()}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode == 0:
            info["gpu"] = out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    probe = ("import jax, json; d = jax.devices()[0]; v = {'jax': jax.__version__, 'platform': d.platform, "
             "'device_kind': d.device_kind}\ntry:\n import torch; v['torch'] = torch.__version__\nexcept ImportError:"
             " pass\ntry:\n import diffusers; v['diffusers'] = diffusers.__version__\nexcept ImportError: pass\n"
             "print(json.dumps(v))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_env(), timeout=300)
    if out.returncode == 0:
        info |= json.loads(out.stdout.strip().splitlines()[-1])
    return info


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # torch and JAX each see the whole card
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_worker(case: str, side: str, folder: Path, args) -> tuple[list[dict], str]:
    cmd = [sys.executable, __file__, "--worker-case", case, "--worker-side", side, "--folder", str(folder)]
    cmd += ["--smoke"] if args.smoke else []
    cmd += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=args.case_timeout)
    except subprocess.TimeoutExpired:
        return [], f"{case}/{side}: timed out after {args.case_timeout} s"
    for line in out.stdout.splitlines():
        if line.startswith("ROWS "):
            return json.loads(line[5:]), ""
    return [], f"{case}/{side}: failed (exit {out.returncode}):\n{out.stderr[-3000:]}"


def ratios(rows: list[dict]) -> None:
    """Each sa-jax generation/decode row gets `ratio` = the reference's seconds / sa-jax's (same case)."""
    ref = {r["case"]: r["seconds"] for r in rows if r["side"] != "sa-jax"}
    for r in rows:
        base = r["case"].split(",")[0]
        if r["side"] == "sa-jax" and base in ref:
            r["speedup"] = ref[base] / r["seconds"]


def table(rows: list[dict]) -> str:
    fmt = lambda v, f: "" if v is None else format(v, f)
    lines = ["| case | side | dtype | first call s | seconds | x reference | peak GiB | TFLOP/s | MFU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['side']} | {r['dtype']} | {r['first']:.2f} | {r['seconds']:.3f} | "
                     f"{fmt(r.get('speedup'), '.2f')} | {fmt(r.get('peak_gib'), '.1f')} | "
                     f"{fmt(r.get('tflops'), '.1f')} | {fmt(r.get('mfu'), '.1%')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps: checks the code on a CPU")
    ap.add_argument("--only", default=",".join(CASES), help="comma-separated cases: " + ", ".join(CASES))
    ap.add_argument("--out", default="device_suite.json", help="where the JSON results go")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the card's dense bfloat16 peak (default: from its name, " + ", ".join(PEAK_TFLOPS) + ")")
    ap.add_argument("--case-timeout", type=int, default=900, help="seconds one case's subprocess may take")
    ap.add_argument("--worker-case", help=argparse.SUPPRESS)
    ap.add_argument("--worker-side", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker_case:
        return worker(args)
    cases = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    start = time.perf_counter()
    info = machine()
    if args.peak_tflops is None:
        kind = info.get("gpu", "") + " " + info.get("device_kind", "")
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in kind), None)
    print("machine: " + json.dumps(info), flush=True)
    rows, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            sides = ("jax",) if case.startswith("train_") else ("torch", "jax")   # torch writes the weights first
            folder = Path(tmp) / case
            folder.mkdir()
            for side in sides:
                began = time.perf_counter()
                got, error = run_worker(case, side, folder, args)
                print(f"{case}/{side}: {time.perf_counter() - began:.0f} s", flush=True)
                rows += got
                if error:
                    failures.append(error)
                    print(error, file=sys.stderr, flush=True)
                for r in got:
                    print(f"  {r['case']} / {r['side']}: {r['seconds']:.3f} s (first call {r['first']:.1f} s)",
                          flush=True)
    ratios(rows)
    print()
    print(table(rows))
    total = time.perf_counter() - start
    print(f"\nsuite: {total:.0f} s, {len(failures)} failed case(s)")
    Path(args.out).write_text(json.dumps({"machine": info, "smoke": args.smoke, "rows": rows, "failures": failures,
                                          "seconds": total}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
