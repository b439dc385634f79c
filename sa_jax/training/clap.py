"""CLAP training: (audio crop, prompt) batches, the symmetric contrastive loss with a learned
temperature, sharded over data on the training engine (sa_jax.training.engine: mesh, Orbax checkpoints with
the grain iterator, exact resume, SIGTERM), then an export that is both a whole CLAP and the
Stable Audio 1.0 frozen text conditioner.

    from sa_jax.config import load
    from sa_jax.training.clap import ClapTrainConfig, train_clap
    result = train_clap(load(ClapTrainConfig, "configs/train_clap_tiny.yaml", ["data.path=data/synth"]))
    # or: sa-jax train --config configs/train_clap_tiny.yaml data.path=data/synth

What one step does:
- Data: the audio pipeline (`sa_jax.data`) crops `data.window` samples at the CLAP's sample rate;
  each example is mixed to mono and turned into log-mel features **on the host, in the grain
  map** (`sa_jax.models.clap.audio_features`, NumPy; in worker processes when
  data.num_workers > 0): clips shorter than the model's `max_length_s` are repeat-padded, longer
  ones cropped (fusion models: the whole-clip view plus three crops). Random crops come from
  grain's per-example RNG, so a resumed run sees the same features. Prompts (from the metadata,
  as the pipeline builds them) are tokenized per batch.
- Model: `ClapModel` in training mode: HTSAT's BatchNorm statistics (`batch_stats`) are updated
  from each global batch (apply with mutable batch_stats; they are part of the train state and of
  the checkpoint), dropout / stochastic depth as configured (a 'dropout' rng from the step's key).
- Loss: `contrastive_loss(audio_emb, text_emb, logit_scale_a)`: LAION-CLAP's ClipLoss, the mean
  of the audio->text and text->audio cross entropies over the **global** batch (the logits matrix
  spans all devices), temperature exp(logit_scale_a) learned and clamped to [1, 100] after each
  update as LAION does. `logit_scale_t` is kept (transformers' layout) but, as in LAION's
  training without the MLP loss, unused.
- Optimiser: AdamW (`optim`, the diffusion trainer's schedules) with weight decay on matrices only
  (LAION excludes biases, norms, gains and the logit scales). A non-finite loss or gradient leaves
  the state as it was and is counted, as in the diffusion trainer.

Run directory (`checkpoint.dir`):
    config.yaml       the ClapTrainConfig
    tokenizer/        the tokenizer of the run (built once from the corpus, or copied from text.tokenizer)
    checkpoints/<n>/  Orbax: state (params, batch_stats, optimiser, step, key, counters), the grain
                      iterator, the config
    export/           a transformers ClapModel folder: config.json, model.safetensors,
                      preprocessor_config.json and the tokenizer. Loads with
                      `sa_jax.Clap.load(export)`, `transformers.ClapModel.from_pretrained`,
                      and as the SA1 conditioner: `clap_text_conditioner(export)` (=
                      `load_clap_text_encoder(export, export)`; `sa1.load_sat(..., clap=export)`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sa_jax.data.config import DataConfig
from sa_jax.errors import ConfigError
from sa_jax.models.bert import BertConfig
from sa_jax.models.clap import ClapAudioFeatures, ClapConfig, ClapModel, HTSATConfig, audio_features, contrastive_loss
from sa_jax.training import engine
from sa_jax.training.config import CheckpointConfig, LogConfig, MeshConfig, OptimConfig
from sa_jax.training.engine import RunResult, Task, TrainStateBase, guarded_update, mean_finite
from sa_jax.training.optim import make_optimizer

log = logging.getLogger("sa_jax.training.clap")

TOKENIZER_DIR = "tokenizer"
MAX_LOGIT_SCALE = math.log(100.0)


# --------------------------------------------------------------------------------------------
# Config

@dataclass
class ClapTextConfig:
    """Prompts -> token ids. `tokenizer`: a local tokenizer folder (e.g. roberta-base's, for the
    paper's RoBERTa text tower); null: a word-level tokenizer built from the training corpus'
    metadata (`sa_jax.text_tokenizer`), its vocabulary capped at the text tower's vocab_size."""

    tokenizer: Optional[str] = None
    max_length: int = 77           # tokens per prompt in training (with <s> and </s>), padded
    min_count: int = 1             # corpus tokenizer: words seen fewer times become <unk>

    def validate(self) -> None:
        if self.max_length < 3:
            raise ConfigError(f"text: max_length must be at least 3 (<s>, a word, </s>), got {self.max_length}")
        if self.min_count < 1:
            raise ConfigError(f"text: min_count must be >= 1, got {self.min_count}")


def _default_model() -> ClapConfig:
    """The paper's CLAP: RoBERTa-base text tower + HTSAT-tiny with feature fusion (LAION's
    630k-audioset-fusion-best, the model stable-audio-tools' CLAP conditioner loads)."""
    return ClapConfig(text=BertConfig(dropout=0.1), audio=HTSATConfig(enable_fusion=True))


def _default_data() -> DataConfig:
    return DataConfig(kind="folder", sample_rate=48000, channels=1, window=480000, phase_flip=False, batch_size=8)


@dataclass
class ClapTrainConfig:
    trainer: Literal["clap"] = "clap"        # picks this schema in `sa-jax train`
    model: ClapConfig = field(default_factory=_default_model)
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    data: DataConfig = field(default_factory=_default_data)
    text: ClapTextConfig = field(default_factory=ClapTextConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=1e-4, b1=0.9, b2=0.99, eps=1e-9, weight_decay=0.0, schedule="cosine", warmup_steps=3200))
    mesh: MeshConfig = field(default_factory=lambda: MeshConfig(shape=(-1, 1)))
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(dir="runs/clap"))
    log: LogConfig = field(default_factory=LogConfig)
    steps: Optional[int] = 1000    # updates; give this or `epochs`
    epochs: Optional[int] = None   # passes over the data (steps = epochs x batches per epoch)
    seed: int = 0
    max_bad_steps: int = 10        # stop after this many non-finite steps in a row
    # XLA options for compiling the init and train step, e.g. {xla_backend_optimization_level: 0,
    # xla_llvm_disable_expensive_passes: true} halves the CPU compile of the tiny model (tests)
    xla_options: dict = field(default_factory=dict)

    def validate(self) -> None:
        m, d = self.model, self.data
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError(f"give exactly one of steps and epochs (got steps={self.steps}, epochs={self.epochs})")
        if self.steps is not None and self.steps <= 0:
            raise ConfigError(f"steps must be positive, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"epochs must be positive, got {self.epochs}")
        if self.max_bad_steps <= 0:
            raise ConfigError("max_bad_steps must be positive")
        if d.kind not in ("folder", "tfds"):
            raise ConfigError(f"data.kind must be 'folder' or 'tfds' (CLAP trains on audio), got {d.kind!r}")
        if d.sample_rate != m.features.sample_rate:
            raise ConfigError(f"data.sample_rate {d.sample_rate} must equal model.features.sample_rate "
                              f"{m.features.sample_rate} (the rate the log-mel features are computed at)")
        if m.text.positions != "roberta" or m.text.type_vocab_size != 1 or not m.text.pooler:
            raise ConfigError("model.text must be a RoBERTa-layout tower (positions: roberta, type_vocab_size: 1, "
                              "pooler: true), as CLAP's text tower, so the export loads as a ClapModel")
        if self.text.max_length > m.text.max_tokens:
            raise ConfigError(f"text.max_length {self.text.max_length} exceeds the text tower's "
                              f"{m.text.max_tokens} positions (model.text.max_position_embeddings - 2)")
        if self.text.tokenizer is None and m.text.pad_token_id != 1:
            raise ConfigError(f"model.text.pad_token_id must be 1 (the corpus tokenizer's <pad>), got "
                              f"{m.text.pad_token_id}")
        frames = m.features.max_length_s * m.features.sample_rate / m.features.hop_length
        if frames < 2:
            raise ConfigError(f"model.features: max_length_s {m.features.max_length_s} gives {frames:.1f} "
                              "spectrogram frames; need at least 2")
        if m.features.n_fft // 2 + 1 < m.audio.num_mel_bins:
            raise ConfigError(f"model.features.n_fft {m.features.n_fft} has fewer frequency bins than the "
                              f"{m.audio.num_mel_bins} mel bins")


# --------------------------------------------------------------------------------------------
# Tokenizer and data

def run_tokenizer(cfg: ClapTrainConfig, run_dir: Path, print_fn=print):
    """The run's tokenizer: `run_dir/tokenizer` when it exists (a resumed run keeps its ids), else
    built from the corpus (or copied from text.tokenizer) and saved there."""
    from sa_jax.checkpoints.tokenizer import load_tokenizer

    folder = run_dir / TOKENIZER_DIR
    if not (folder / "tokenizer_config.json").is_file():
        if cfg.text.tokenizer is not None:
            tok = load_tokenizer(cfg.text.tokenizer)
            what = f"from {cfg.text.tokenizer}"
        else:
            if cfg.data.kind != "folder":
                raise ConfigError("a corpus tokenizer is built from an audio folder's manifest; for data.kind "
                                  f"{cfg.data.kind!r} give text.tokenizer (a local tokenizer folder)")
            from sa_jax.text_tokenizer import build_word_tokenizer, corpus_texts

            texts = corpus_texts(cfg.data.path, cfg.data.prompt_keys, cfg.data.prompt_exclude, cfg.data.manifest)
            tok = build_word_tokenizer(texts, max_vocab=cfg.model.text.vocab_size, min_count=cfg.text.min_count,
                                       model_max_length=cfg.text.max_length)
            what = f"built from the metadata of {cfg.data.path}"
        if jax.process_index() == 0:
            tmp = run_dir / (TOKENIZER_DIR + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            tok.save_pretrained(str(tmp))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        print_fn(f"tokenizer ({len(tok)} tokens) {what}, saved to {folder}")
    if jax.process_count() > 1:   # every process reads the one process 0 wrote (a shared run directory)
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("sa_jax clap tokenizer")
    tok = load_tokenizer(folder)
    if len(tok) > cfg.model.text.vocab_size:
        raise ConfigError(f"the tokenizer in {folder} has {len(tok)} tokens but model.text.vocab_size is "
                          f"{cfg.model.text.vocab_size}")
    if tok.pad_token_id != cfg.model.text.pad_token_id:
        raise ConfigError(f"the tokenizer's pad id {tok.pad_token_id} differs from model.text.pad_token_id "
                          f"{cfg.model.text.pad_token_id}")
    return tok


class ClapExample:
    """grain random map: a pipeline example -> {features, is_longer, prompt} (log-mel on the host)."""

    def __init__(self, model: ClapConfig):
        self.model = model

    def __call__(self, ex: dict, rng: np.random.Generator) -> dict:
        audio = np.asarray(ex["audio"], np.float32)
        n = max(1, int(np.sum(ex["padding_mask"])))       # real samples; the rest is the pipeline's padding
        mono = audio[:, :n].mean(axis=0)
        feats, longer = audio_features([mono], self.model, seed=int(rng.integers(2 ** 31)))
        return {"features": feats[0], "is_longer": np.bool_(longer[0]), "prompt": str(ex["prompt"])}


def _stack(examples):
    out = {}
    for k in examples[0]:
        vals = [e[k] for e in examples]
        out[k] = np.array(vals) if isinstance(vals[0], str) else np.stack(vals)
    return out


def clap_dataset(pipe, model: ClapConfig, seed: int):
    """The pipeline's examples mapped to CLAP features and batched (grain IterDataset)."""
    import grain

    from sa_jax.data.pipeline import absl_flags_parsed

    c = pipe.config
    ds = pipe.map_dataset().random_map(ClapExample(model), seed=seed + 1)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=c.num_threads, prefetch_buffer_size=c.prefetch_buffer_size))
    if c.num_workers > 0:
        absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=c.num_workers,
                                                         per_worker_buffer_size=c.worker_buffer_size))
    return ds.batch(c.batch_size, drop_remainder=c.drop_remainder, batch_fn=_stack)


def prepare_batch(tokenizer, max_length: int, raw: dict) -> dict:
    """A CLAP data batch -> the arrays the train step takes (prompts tokenized here)."""
    from sa_jax.encoders import tokenize

    ids, mask = tokenize(tokenizer, [str(p) for p in raw["prompt"]], max_length, what="CLAP text tower")
    return {"input_ids": ids, "attention_mask": mask, "features": np.asarray(raw["features"], np.float32),
            "is_longer": np.asarray(raw["is_longer"], bool)}


BATCH_KEYS = ("input_ids", "attention_mask", "features", "is_longer")


# --------------------------------------------------------------------------------------------
# State and step

@flax.struct.dataclass
class ClapState(TrainStateBase):
    params: Any              # float32
    batch_stats: Any         # HTSAT BatchNorm running statistics
    opt_state: Any


def _dtype(cfg):
    return jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32


def make_optimizer_clap(cfg, total_steps: int):
    """(AdamW with weight decay on >= 2-d parameters only, optional clipping; the lr schedule)."""
    c = cfg.optim
    _, schedule = make_optimizer(c, total_steps)
    decay = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    tx = optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay, mask=decay)
    if c.clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(c.clip_norm), tx)
    return tx, schedule


def _init_state(cfg, total_steps, key_data):
    k_init, k_train = jax.random.split(jax.random.wrap_key_data(key_data))
    c = cfg.model
    ids = jnp.zeros((1, 4), jnp.int32)
    feats = jnp.zeros((1, c.audio.input_channels, 8, c.audio.num_mel_bins), jnp.float32)
    variables = ClapModel(c, _dtype(cfg)).init(k_init, ids, jnp.ones((1, 4), bool), feats)
    params = variables["params"]
    tx, _ = make_optimizer_clap(cfg, total_steps)
    return ClapState(params=params, batch_stats=variables["batch_stats"], opt_state=tx.init(params),
                     **engine.counters(k_train))


def state_shardings(cfg, total_steps, mesh):
    return engine.abstract_state(lambda k: _init_state(cfg, total_steps, k), cfg.seed, mesh, cfg.mesh)


def _fingerprint(cfg, total_steps, mesh, *extra):
    return ("clap", repr((cfg.model, cfg.compute_dtype, cfg.optim, cfg.mesh, total_steps,
                          sorted(cfg.xla_options.items()))), mesh, *extra)


def create_state(cfg, total_steps, mesh) -> ClapState:
    """A fresh state from cfg.seed, initialised directly into its shardings."""
    return engine.init_state(lambda k: _init_state(cfg, total_steps, k), cfg.seed,
                             state_shardings(cfg, total_steps, mesh)[1], _fingerprint(cfg, total_steps, mesh, "init"),
                             dict(cfg.xla_options))


def clap_loss(cfg, params, batch_stats, batch, key):
    """(loss, (new batch_stats, metrics)) of one global batch in training mode."""
    model = ClapModel(cfg.model, _dtype(cfg))
    (text, audio, scale_a, _), new = model.apply(
        {"params": params, "batch_stats": batch_stats}, batch["input_ids"], batch["attention_mask"],
        batch["features"], batch["is_longer"], train=True, rngs={"dropout": key}, mutable=["batch_stats"])
    loss = contrastive_loss(audio, text, scale_a)
    sim = audio @ text.T
    labels = jnp.arange(sim.shape[0])
    acc = (jnp.mean(jnp.argmax(sim, axis=1) == labels) + jnp.mean(jnp.argmax(sim, axis=0) == labels)) / 2
    return loss, (new["batch_stats"], {"batch_acc": acc})


def train_step(cfg, total_steps, state: ClapState, batch: dict):
    tx, schedule = make_optimizer_clap(cfg, total_steps)
    key = engine.step_key(state)
    (loss, (stats, aux)), grads = jax.value_and_grad(
        lambda p: clap_loss(cfg, p, state.batch_stats, batch, key), has_aux=True)(state.params)
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    new_params = {**new_params, **{name: jnp.clip(new_params[name], 0.0, MAX_LOGIT_SCALE)   # LAION: 1/T in [1, 100]
                                   for name in ("logit_scale_a", "logit_scale_t")}}
    new_state = guarded_update(state, ok, params=new_params, batch_stats=stats, opt_state=new_opt)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step), "finite": ok,
               "temperature": 1.0 / jnp.exp(state.params["logit_scale_a"]), **aux}
    return new_state, metrics


def compiled_train_step(cfg, total_steps, mesh, state, batch):
    """The train step jitted with the state's shardings (donated) and the batch split over the
    batch axes, compiled ahead of time for these shapes; cached per config, mesh and shapes."""
    def build():
        fn = engine.jit_step(lambda s, b: train_step(cfg, total_steps, s, b), mesh, cfg.mesh,
                             state_shardings(cfg, total_steps, mesh)[1], BATCH_KEYS)
        return fn.lower(state, batch).compile(compiler_options=dict(cfg.xla_options) or None)
    return engine.cached(_fingerprint(cfg, total_steps, mesh, "compiled", engine.batch_shapes(batch)), build)


def total_steps(cfg: ClapTrainConfig, examples_per_host: int) -> int:
    """cfg.steps, or epochs x full batches per epoch (each host reads its shard of the data)."""
    if cfg.steps is not None:
        return cfg.steps
    per_epoch = examples_per_host // cfg.data.batch_size
    if per_epoch == 0:
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} is larger than this host's "
                          f"{examples_per_host} examples: an epoch has no full batch")
    return cfg.epochs * per_epoch


# --------------------------------------------------------------------------------------------
# The task

class ClapTask(Task):

    def setup(self, run_dir, mesh, global_bs, print_fn):
        from sa_jax.data import DataPipeline

        cfg = self.cfg
        if global_bs < 2:
            raise ConfigError("a contrastive loss needs at least 2 pairs per batch; raise data.batch_size")
        self.run_dir = run_dir
        self.tokenizer = run_tokenizer(cfg, run_dir, print_fn)
        pipe = DataPipeline(cfg.data)
        self.total_steps = total_steps(cfg, len(pipe))
        self.iterator = iter(clap_dataset(pipe, cfg.model, cfg.data.seed))

    def state_shardings(self, mesh):
        return state_shardings(self.cfg, self.total_steps, mesh)

    def create_state(self, mesh):
        return create_state(self.cfg, self.total_steps, mesh)

    def describe(self, state, mesh, global_bs):
        return f"CLAP: {super().describe(state, mesh, global_bs)}; {self.total_steps} steps"

    def prepare(self, raw):
        return prepare_batch(self.tokenizer, self.cfg.text.max_length, raw)

    def compile(self, mesh, state, batch):
        self.compiled = compiled_train_step(self.cfg, self.total_steps, mesh, state, batch)
        return self.compiled

    def step(self, step, state, batch):
        return self.compiled(state, batch)

    def report(self, window):
        values = {"loss": mean_finite(window, "loss"), "batch_acc": mean_finite(window, "batch_acc"),
                  "temperature": float(window[-1]["temperature"]), "grad_norm": float(window[-1]["grad_norm"]),
                  "lr": float(window[-1]["lr"])}
        return values, (f"loss {values['loss']:.4f}  batch_acc {values['batch_acc']:.3f}  "
                        f"temperature {values['temperature']:.4f}  grad_norm {values['grad_norm']:.3f}  "
                        f"lr {values['lr']:.3e}")

    def export_weights(self, state):
        return {"params": state.params, "batch_stats": state.batch_stats}

    def export(self, weights, step, path):
        return export_clap(self.cfg.model, weights, path, tokenizer_folder=self.run_dir / TOKENIZER_DIR,
                           max_length=min(77, self.cfg.model.text.max_tokens))

    def exported(self, path):
        return f"exported the CLAP (transformers ClapModel layout, with its tokenizer) to {path}"


def train_clap(cfg: ClapTrainConfig, *, stop_at: int | None = None, print_fn=print) -> RunResult:
    """Train until the configured steps/epochs (or `stop_at`, for tests), checkpointing into
    cfg.checkpoint.dir and resuming from it (`sa_jax.training.engine.run`); at the end export to
    `checkpoint.dir/export`."""
    return engine.run(ClapTask(cfg), stop_at=stop_at, print_fn=print_fn)


# --------------------------------------------------------------------------------------------
# Export: a transformers ClapModel folder

_INVERSE = {"T": lambda w: w.T, "CONV": lambda w: w.transpose(3, 2, 0, 1)}


def hf_config_dict(config: ClapConfig) -> dict:
    """`config.json` of a transformers ClapModel for our ClapConfig (read back by ClapConfig.from_hf)."""
    t, a = config.text, config.audio
    text = {"model_type": "clap_text_model", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
            "num_hidden_layers": t.num_layers, "num_attention_heads": t.num_heads,
            "intermediate_size": t.intermediate_size, "max_position_embeddings": t.max_position_embeddings,
            "type_vocab_size": t.type_vocab_size, "layer_norm_eps": t.layer_norm_eps, "hidden_act": t.hidden_act,
            "pad_token_id": t.pad_token_id, "hidden_dropout_prob": t.dropout, "attention_probs_dropout_prob": 0.0,
            "position_embedding_type": "absolute", "projection_dim": config.projection_dim,
            "projection_hidden_act": config.projection_act}
    audio = {"model_type": "clap_audio_model", "window_size": a.window_size, "num_mel_bins": a.num_mel_bins,
             "spec_size": a.spec_size, "patch_size": a.patch_size, "patch_stride": list(a.patch_stride),
             "patch_embeds_hidden_size": a.embed_dim, "depths": list(a.depths),
             "num_attention_heads": list(a.num_heads), "hidden_size": a.num_features, "mlp_ratio": a.mlp_ratio,
             "qkv_bias": a.qkv_bias, "enable_patch_layer_norm": a.patch_norm, "layer_norm_eps": a.layer_norm_eps,
             "hidden_act": a.hidden_act, "enable_fusion": a.enable_fusion,
             "fusion_type": "aff_2d" if a.enable_fusion else None, "aff_block_r": a.aff_block_r,
             "drop_path_rate": a.drop_path_rate, "patch_embed_input_channels": 1, "flatten_patch_embeds": True,
             "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
             "projection_dim": config.projection_dim, "projection_hidden_act": config.projection_act}
    return {"model_type": "clap", "architectures": ["ClapModel"], "text_config": text, "audio_config": audio,
            "projection_dim": config.projection_dim, "projection_hidden_act": config.projection_act,
            "logit_scale_init_value": config.logit_scale_init, "initializer_factor": 1.0}


def preprocessor_dict(config: ClapConfig) -> dict:
    """`preprocessor_config.json` of a transformers ClapFeatureExtractor for our feature settings."""
    f: ClapAudioFeatures = config.features
    return {"feature_extractor_type": "ClapFeatureExtractor", "feature_size": config.audio.num_mel_bins,
            "sampling_rate": f.sample_rate, "fft_window_size": f.n_fft, "hop_length": f.hop_length,
            "frequency_min": f.f_min, "frequency_max": f.f_max, "max_length_s": f.max_length_s,
            "padding": "repeatpad", "truncation": "fusion" if config.audio.enable_fusion else "rand_trunc",
            "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False}


def hf_state_dict(config: ClapConfig, variables: dict) -> dict[str, np.ndarray]:
    """Our `{"params", "batch_stats"}` -> a transformers ClapModel state dict (the import table
    `sa_jax.checkpoints.clap.hf_clap_rows` run backwards)."""
    from sa_jax.checkpoints import clap as ck
    from sa_jax.checkpoints.table import conv2d, linear

    flat = {}

    def walk(tree, prefix):
        for k, v in tree.items():
            path = f"{prefix}/{k}" if prefix else k
            if isinstance(v, dict):
                walk(v, path)
            else:
                flat[path] = np.asarray(v, np.float32)

    walk({"params": variables["params"], "batch_stats": variables["batch_stats"]}, "")
    state, used = {}, set()
    for key, path, fn in ck.hf_clap_rows(config):
        if isinstance(key, tuple) or isinstance(path, tuple):
            raise ValueError(f"{key}: the transformers layout maps one tensor to one variable")
        if path not in flat:
            raise KeyError(f"the model has no variable {path} for {key}")
        inverse = _INVERSE["T"] if fn is linear else _INVERSE["CONV"] if fn is conv2d else None
        if fn is not None and inverse is None:
            raise ValueError(f"{key}: no inverse for its import transform")
        state[key] = np.array(inverse(flat[path]) if inverse else flat[path], np.float32, order="C")   # keeps 0-d
        used.add(path)
    left = sorted(set(flat) - used)
    if left:
        raise ValueError(f"variables not in the transformers layout: {left[:5]}")
    # Buffers transformers keeps in the state dict, with the values it computes for them (no learned state).
    from sa_jax.models.clap import relative_position_index

    for k in list(state):
        if k.endswith("running_mean"):
            state[k[: -len("running_mean")] + "num_batches_tracked"] = np.zeros((), np.int64)
        elif k.endswith("attention.self.relative_position_bias_table"):
            index = relative_position_index(config.audio.window_size)
            state[k[: -len("bias_table")] + "index"] = index.astype(np.int64)
    positions = config.text.max_position_embeddings
    state["text_model.embeddings.position_ids"] = np.arange(positions, dtype=np.int64)[None]
    state["text_model.embeddings.token_type_ids"] = np.zeros((1, positions), np.int64)
    return state


def export_clap(config: ClapConfig, variables: dict, folder, tokenizer_folder=None, max_length: int = 77) -> Path:
    """Write a transformers ClapModel folder (config.json, model.safetensors,
    preprocessor_config.json, the tokenizer). Written beside and swapped in whole."""
    from safetensors.numpy import save_file

    from sa_jax.checkpoints.store import check_replaceable

    folder = Path(folder)
    check_replaceable(folder, lambda p: (p / "config.json").is_file() and (p / "model.safetensors").is_file(),
                      "a CLAP export (config.json and model.safetensors)")   # replaces only what sa-jax wrote
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(hf_state_dict(config, variables), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(hf_config_dict(config), indent=2))
    (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor_dict(config), indent=2))
    if tokenizer_folder is not None:
        from sa_jax.checkpoints.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer_folder)
        tok.model_max_length = max_length
        tok.save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def clap_text_conditioner(folder, max_length: int = 77, dtype=jnp.float32):
    """The exported text tower as Stable Audio 1.0's frozen CLAP conditioner: a
    `sa_jax.encoders.TextEncoder`; `hidden, mask = enc(prompts)`, `hidden[-2]` is the
    penultimate layer (batch, max_length, hidden). The same call `sa1.load_sat(..., clap=folder)` makes."""
    from sa_jax.encoders import load_clap_text_encoder

    return load_clap_text_encoder(folder, folder, max_length=max_length, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Evaluation: text -> audio retrieval

def embed_dataset(config: ClapConfig, variables: dict, tokenizer, data: DataConfig, max_length: int = 77,
                  labels_key: str | None = None, dtype=jnp.float32, batch_size: int = 32):
    """(text_emb (n, d), audio_emb (n, d), labels) of every example of `data` read once in order
    (no shuffle, first crop); `labels` are the metadata values under `labels_key` (or None)."""
    from sa_jax.data import DataPipeline
    from sa_jax.encoders import tokenize

    data = replace(data, shuffle=False, random_crop=False, num_epochs=1, drop_remainder=False, phase_flip=False)
    pipe = DataPipeline(data)
    model = ClapModel(config, dtype)
    text_fn = jax.jit(lambda v, i, m: model.apply(v, i, m, method=ClapModel.get_text_embedding))
    audio_fn = jax.jit(lambda v, f, l: model.apply(v, f, l, method=ClapModel.get_audio_embedding))
    example = ClapExample(config)
    rng = np.random.default_rng(0)
    items, labels = [], []
    for ex in pipe.map_dataset():
        if ex is None:
            continue
        items.append(example(ex, rng))
        labels.append(json.loads(ex["metadata"]).get(labels_key) if labels_key is not None else None)
    if not items:
        raise ValueError(f"no usable examples in {data.path}")
    texts, audios = [], []
    for i in range(0, len(items), batch_size):
        b = _stack(items[i:i + batch_size])
        ids, mask = tokenize(tokenizer, [str(p) for p in b["prompt"]], max_length, what="CLAP text tower")
        texts.append(np.asarray(text_fn(variables, ids, mask)))
        audios.append(np.asarray(audio_fn(variables, b["features"], b["is_longer"])))
    return np.concatenate(texts), np.concatenate(audios), labels if labels_key is not None else None


def text_to_audio_top1(text_emb: np.ndarray, audio_emb: np.ndarray, labels) -> tuple[float, float]:
    """(accuracy, chance): each prompt retrieves its most similar clip among all n; a hit when that
    clip's label equals the prompt's clip's label. Chance: the mean fraction of clips sharing the label."""
    sim = np.asarray(text_emb) @ np.asarray(audio_emb).T
    labels = np.asarray(labels)
    top = np.argmax(sim, axis=1)
    acc = float(np.mean(labels[top] == labels))
    chance = float(np.mean([np.mean(labels == lab) for lab in labels]))
    return acc, chance
