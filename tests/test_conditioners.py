"""SAO conditioning: number conditioners and token/global assembly against stable-audio-tools
(a whole ConditionedDiffusionModelWrapper with its real state-dict layout) and diffusers'
StableAudioProjectionModel + pipeline assembly; CFG dropout; a diffusers pipeline folder on disk."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_jax.checkpoints import sao
from sa_jax.encoders import T5TextEncoder
from sa_jax.errors import CheckpointError
from sa_jax.models.conditioners import (
    ConditioningConfig,
    NumberConditionerConfig,
    init_params,
    make_conditioner,
)
from sa_jax.models.dit import DiT, make_denoiser
from sa_jax.testing.sat_ref import SAO_MODEL_CONFIG, randomize, rel_err, sat_module, state_dict

torch = pytest.importorskip("torch")

TOL = 1e-4
SECONDS_START = [-3.0, 0.0, 13.7, 700.0]   # clamped below and above [0, 512]
SECONDS_TOTAL = [1.0, 47.0, 512.0, 95.5]


def _conditioning(params_cfg: ConditioningConfig, params, text, mask, start, total):
    fn = jax.jit(make_conditioner(params_cfg))
    cross, glob = fn(params, jnp.asarray(text), jnp.asarray(mask), jnp.asarray(start, jnp.float32),
                     jnp.asarray(total, jnp.float32))
    return np.asarray(cross), np.asarray(glob)


def _text(batch, length, dim, seed=0):
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((batch, length, dim)).astype(np.float32)
    mask = np.ones((batch, length), bool)
    for b in range(batch):
        mask[b, 3 + 2 * b:] = False
    return text, mask


# ---------------------------------------------------------------- diffusers


@pytest.mark.parametrize("text_dim", [32, 24])   # equal widths: Identity; different: a Linear
def test_matches_diffusers_projection_and_pipeline_assembly(text_dim):
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel

    proj = randomize(StableAudioProjectionModel(text_encoder_dim=text_dim, conditioning_dim=32, min_value=0,
                                                max_value=512), seed=4)
    config, params = sao.conditioning_config_from_diffusers(dict(proj.config), max_length=10), None
    assert config.text_projection == (text_dim != 32)
    params = sao.import_projection_diffusers(state_dict(proj), config)
    text, mask = _text(4, 10, text_dim)
    with torch.no_grad():   # as StableAudioPipeline.encode_prompt / encode_duration / __call__
        t = torch.from_numpy(text)
        m = torch.from_numpy(mask)
        prompt = proj(text_hidden_states=t).text_hidden_states * m[..., None].float()
        out = proj(start_seconds=torch.tensor(SECONDS_START), end_seconds=torch.tensor(SECONDS_TOTAL))
        ref_cross = torch.cat([prompt, out.seconds_start_hidden_states, out.seconds_end_hidden_states], dim=1)
        ref_glob = torch.cat([out.seconds_start_hidden_states, out.seconds_end_hidden_states], dim=2)[:, 0]
    cross, glob = _conditioning(config, params, text, mask, SECONDS_START, SECONDS_TOTAL)
    e1, e2 = rel_err(cross, ref_cross.numpy()), rel_err(glob, ref_glob.numpy())
    print(f"conditioning vs diffusers (text_dim {text_dim}): cross {e1:.2e}, global {e2:.2e}")
    assert e1 < TOL and e2 < TOL
    assert cross.shape == (4, config.cross_attn_tokens, 32) and glob.shape == (4, config.global_dim)


# ---------------------------------------------------------------- stable-audio-tools


def _sat_model(cond_dim=128, text_dim=48, embed=256):
    """A tiny stable-audio-tools ConditionedDiffusionModelWrapper laid out as SAO: the DiT, two
    number conditioners and a prompt conditioner that stands in for T5 (it looks up given token
    embeddings, then projects and masks them exactly as T5Conditioner does)."""
    diffusion = sat_module("models.diffusion")
    conditioners = sat_module("models.conditioners")

    class PromptStandIn(conditioners.Conditioner):
        def __init__(self):
            super().__init__(text_dim, cond_dim, project_out=False)
            self.table = {}

        def forward(self, texts, device=None):
            emb = torch.stack([self.table[t][0] for t in texts])
            mask = torch.stack([self.table[t][1] for t in texts])
            return self.proj_out(emb) * mask[..., None].float(), mask

    multi = conditioners.MultiConditioner({
        "prompt": PromptStandIn(),
        "seconds_start": conditioners.NumberConditioner(cond_dim, min_val=0, max_val=512),
        "seconds_total": conditioners.NumberConditioner(cond_dim, min_val=0, max_val=512)})
    dit = diffusion.DiTWrapper(diffusion_objective="v", io_channels=8, embed_dim=embed, depth=2, num_heads=4,
                               cond_token_dim=cond_dim, global_cond_dim=2 * cond_dim, project_cond_tokens=False)
    wrapper = diffusion.ConditionedDiffusionModelWrapper(
        dit, multi, io_channels=8, sample_rate=44100, min_input_length=1,
        cross_attn_cond_ids=["prompt", "seconds_start", "seconds_total"],
        global_cond_ids=["seconds_start", "seconds_total"])
    return randomize(wrapper, seed=6)


def _sat_configs(cond_dim=128, text_dim=48, embed=256, max_length=10):
    model_config = json.loads(json.dumps(SAO_MODEL_CONFIG))
    model_config["model"]["diffusion"]["config"].update(
        io_channels=8, embed_dim=embed, depth=2, num_heads=4, cond_token_dim=cond_dim, global_cond_dim=2 * cond_dim)
    model_config["model"]["conditioning"]["cond_dim"] = cond_dim
    model_config["model"]["conditioning"]["configs"][0]["config"]["max_length"] = max_length
    dit, cond, _ = sao.sat_model_configs(model_config)
    return dit, cond.replace(text_dim=text_dim, text_projection=True)


@pytest.fixture(scope="module")
def sat_whole():
    wrapper = _sat_model()
    dit, cond = _sat_configs()
    text, mask = _text(4, 10, 48, seed=2)
    prompts = [f"prompt {i}" for i in range(4)]
    wrapper.conditioner.conditioners["prompt"].table = {
        p: (torch.from_numpy(text[i]), torch.from_numpy(mask[i])) for i, p in enumerate(prompts)}
    metadata = [{"prompt": p, "seconds_start": s, "seconds_total": t}
                for p, s, t in zip(prompts, SECONDS_START, SECONDS_TOTAL)]
    sd = state_dict(wrapper)
    assert any(k.startswith("model.model.transformer.layers.") for k in sd)
    assert "conditioner.conditioners.seconds_start.embedder.embedding.0.weights" in sd
    assert "conditioner.conditioners.prompt.proj_out.weight" in sd
    return wrapper, dit, cond, sd, text, mask, metadata


def test_whole_sat_model_matches(sat_whole):
    wrapper, dit_cfg, cond_cfg, sd, text, mask, metadata = sat_whole
    sd = {**sd, "pretransform.model.decoder.layers.0.weight_v": np.zeros((2, 2, 1), np.float32)}   # left alone
    imported = sao.import_sat_checkpoint(sd, dit_cfg, cond_cfg)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 8, 11, generator=g), torch.rand(4, generator=g)
    with torch.no_grad():
        cond = wrapper.conditioner(metadata, "cpu")
        inputs = wrapper.get_conditioning_inputs(cond)
        v_ref = wrapper(x, t, cond).numpy()
        v_cfg_ref = wrapper(x, t, cond, cfg_scale=7.0).numpy()
    cross, glob = _conditioning(cond_cfg, imported["conditioners"], text, mask, SECONDS_START, SECONDS_TOTAL)
    e_cross = rel_err(cross, inputs["cross_attn_cond"].numpy())
    e_glob = rel_err(glob, inputs["global_cond"].numpy())
    dit = jax.jit(lambda *a: DiT(dit_cfg).apply({"params": imported["dit"]}, *a))
    xj, tj = jnp.asarray(x.numpy()), jnp.asarray(t.numpy())
    v = np.asarray(dit(xj, tj, cross, glob))
    e_v = rel_err(v, v_ref)
    # classifier-free guidance as the reference batches it: [cond, cond tensor zeroed], same global cond
    both = dit(jnp.concatenate([xj, xj]), jnp.concatenate([tj, tj]),
               jnp.concatenate([cross, jnp.zeros_like(cross)]), jnp.concatenate([glob, glob]))
    v_c, v_u = np.split(np.asarray(both), 2)
    e_cfg = rel_err(v_u + 7.0 * (v_c - v_u), v_cfg_ref)
    print(f"whole SAO layout vs stable-audio-tools: cross {e_cross:.2e}, global {e_glob:.2e}, v {e_v:.2e}, "
          f"v with CFG 7 {e_cfg:.2e}")
    assert max(e_cross, e_glob, e_v, e_cfg) < TOL


def test_sat_checkpoint_problems_reported_together(sat_whole):
    _, dit_cfg, cond_cfg, sd, *_ = sat_whole
    sd = dict(sd)
    del sd["conditioner.conditioners.seconds_total.embedder.embedding.1.bias"]
    sd["model.model.to_cond_embed.0.weight"] = sd["model.model.to_cond_embed.0.weight"][:, :5]
    sd["conditioner.conditioners.genre.embedder.weight"] = np.zeros(3, np.float32)
    sd["ema.model.x"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError) as e:
        sao.import_sat_checkpoint(sd, dit_cfg, cond_cfg, source="model.safetensors")
    msg = str(e.value)
    for needle in ("model.safetensors", "seconds_total.embedder.embedding.1.bias", "to_cond_embed.0.weight",
                   "genre.embedder.weight", "ema.model.x"):
        assert needle in msg, (needle, msg)


def test_number_conditioner_matches_sat_alone():
    conditioners = sat_module("models.conditioners")
    ref = randomize(conditioners.NumberConditioner(16, min_val=-2, max_val=30), seed=8)
    config = ConditioningConfig(cond_dim=16, text_dim=16, max_length=2,
                                seconds_start=NumberConditionerConfig(-2.0, 30.0),
                                seconds_total=NumberConditionerConfig(-2.0, 30.0))
    sd = {f"conditioner.conditioners.{n}.{k}": v for n in ("seconds_start", "seconds_total")
          for k, v in state_dict(ref).items()}
    params = sao.import_conditioners_sat(sd, config)
    values = [-5.0, -2.0, 0.5, 29.9, 31.0]
    with torch.no_grad():
        expected = ref(values, "cpu")[0].numpy()
    _, glob = _conditioning(config, params, np.zeros((5, 2, 16), np.float32), np.ones((5, 2), bool), values, values)
    assert rel_err(glob[:, :16], expected[:, 0]) < TOL


def test_sao_default_shapes():
    config = ConditioningConfig()
    params = init_params(config, jax.random.key(0))
    assert set(params) == {"seconds_start", "seconds_total"}
    text = jnp.zeros((2, 128, 768))
    cross, glob = jax.jit(make_conditioner(config))(params, text, jnp.ones((2, 128), bool),
                                                    jnp.array([0.0, 3.0]), jnp.array([10.0, 47.0]))
    assert cross.shape == (2, 130, 768) and glob.shape == (2, 1536)
    np.testing.assert_allclose(np.asarray(cross[:, 128]), np.asarray(glob[:, :768]))
    np.testing.assert_allclose(np.asarray(cross[:, 129]), np.asarray(glob[:, 768:]))


# ---------------------------------------------------------------- a diffusers pipeline folder


def test_diffusers_pipeline_folder_loads(tmp_path):
    transformers = pytest.importorskip("transformers")
    from diffusers import StableAudioDiTModel
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel
    from test_dit import DIFFUSERS_SMALL, NORM_BIASES
    from test_t5 import _hf_config, _tokenizer

    tok = _tokenizer()
    tok.model_max_length = 12
    t5 = randomize(transformers.T5EncoderModel(_hf_config("relu", vocab=len(tok))), seed=1)
    proj = randomize(StableAudioProjectionModel(text_encoder_dim=32, conditioning_dim=40, min_value=0,
                                                max_value=512), seed=2)
    dit = randomize(StableAudioDiTModel(**{**DIFFUSERS_SMALL, "global_states_input_dim": 80}), skip=NORM_BIASES)
    assert dit.config.cross_attention_input_dim == 40
    t5.save_pretrained(tmp_path / "text_encoder")
    tok.save_pretrained(tmp_path / "tokenizer")
    proj.save_pretrained(tmp_path / "projection_model")
    dit.save_pretrained(tmp_path / "transformer")
    loaded = sao.load_diffusers_pipeline(tmp_path)
    dit_cfg, dit_params = loaded["dit"]
    cond_cfg, cond_params = loaded["conditioning"]
    encoder = T5TextEncoder(*loaded["t5"], loaded["tokenizer"], cond_cfg.max_length)
    assert encoder.max_length == 12 and cond_cfg.max_length == 12 and cond_cfg.text_projection

    prompts = ["128 bpm tech house drum loop", "rain"]
    emb, mask = encoder(prompts)
    cross, glob = _conditioning(cond_cfg, cond_params, emb, mask, [0.0, 5.0], [20.0, 30.0])
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 8, 6, generator=g), torch.rand(2, generator=g)
    v = np.asarray(jax.jit(make_denoiser(dit_cfg))(dit_params, jnp.asarray(x.numpy()), jnp.asarray(t.numpy()),
                                                    cross, glob))
    with torch.no_grad():   # StableAudioPipeline's encode_prompt, encode_duration and assembly
        enc = tok(prompts, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
        text = t5(enc.input_ids, attention_mask=enc.attention_mask)[0]
        text = proj(text_hidden_states=text).text_hidden_states * enc.attention_mask[..., None].float()
        secs = proj(start_seconds=torch.tensor([0.0, 5.0]), end_seconds=torch.tensor([20.0, 30.0]))
        ref_cross = torch.cat([text, secs.seconds_start_hidden_states, secs.seconds_end_hidden_states], 1)
        ref_glob = torch.cat([secs.seconds_start_hidden_states, secs.seconds_end_hidden_states], 2)
    from test_dit import _diffusers_forward
    v_ref = _diffusers_forward(dit, x, t, ref_cross, ref_glob[:, 0])
    e = (rel_err(cross, ref_cross.numpy()), rel_err(glob, ref_glob[:, 0].numpy()), rel_err(v, v_ref))
    print("diffusers pipeline folder: cross {:.2e}, global {:.2e}, v {:.2e}".format(*e))
    assert max(e) < TOL

    (tmp_path / "projection_model" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="projection_model/config.json does not exist"):
        sao.load_diffusers_pipeline(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing \['transformer/', 'projection_model/'"):
        sao.load_diffusers_pipeline(tmp_path / "text_encoder")


# ---------------------------------------------------------------- stable-audio-tools files on disk


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_load_sat_files(tmp_path, suffix):
    from safetensors.numpy import save_file

    wrapper = _sat_model(text_dim=512)     # the prompt projection of a t5-small model (512 -> 128)
    model_config = json.loads(json.dumps(SAO_MODEL_CONFIG))
    model_config["model"]["diffusion"]["config"].update(
        io_channels=8, embed_dim=256, depth=2, num_heads=4, cond_token_dim=128, global_cond_dim=256)
    model_config["model"]["conditioning"]["cond_dim"] = 128
    model_config["model"]["conditioning"]["configs"][0]["config"].update(t5_model_name="t5-small", max_length=10)
    (tmp_path / "model_config.json").write_text(json.dumps(model_config))
    sd = state_dict(wrapper)
    weights = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file(sd, str(weights))
    else:
        torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}}, weights)
    loaded = sao.load_sat(tmp_path / "model_config.json", weights)
    (_, dit_params), (cond_cfg, cond_params) = loaded["dit"], loaded["conditioning"]
    assert loaded["t5_name"] == "t5-small" and cond_cfg.text_dim == 512 and cond_cfg.text_projection
    np.testing.assert_allclose(dit_params["layers_1"]["cross_attn"]["kv"]["kernel"],
                               sd["model.model.transformer.layers.1.cross_attn.to_kv.weight"].T)
    np.testing.assert_allclose(cond_params["prompt_proj"]["kernel"],
                               sd["conditioner.conditioners.prompt.proj_out.weight"].T)
    del sd["model.model.transformer.project_out.weight"]
    if suffix == ".safetensors":
        save_file(sd, str(weights))
        with pytest.raises(CheckpointError, match="project_out.weight"):
            sao.load_sat(model_config, weights)


def test_training_checkpoint_unwraps_to_ema(sat_whole):
    wrapper, dit_cfg, cond_cfg, sd, *_ = sat_whole
    training = {"diffusion." + k: v for k, v in sd.items()}
    # the EMA denoiser differs from the online one; the import must take the EMA weights
    ema = {"diffusion_ema.ema_model." + k[len("model."):]: v if k.endswith((".beta", ".inv_freq")) else v + 1.0
           for k, v in sd.items() if k.startswith("model.")}
    training.update(ema, **{"diffusion_ema.initted": np.ones(1, np.float32), "diffusion_ema.step": np.ones(1)})
    state = sao.unwrap_training_state(training)
    assert set(state) == set(sd)
    out = sao.import_sat_checkpoint(state, dit_cfg, cond_cfg)
    np.testing.assert_allclose(out["dit"]["project_in"]["kernel"],
                               sd["model.model.transformer.project_in.weight"].T + 1)
    assert sao.unwrap_training_state(sd) is sd
