"""The SAO DiT against diffusers' StableAudioDiTModel and stable-audio-tools' DiffusionTransformer,
with random weights converted through sa-jax's importers; plus the importers' error reports."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_jax.checkpoints import sao
from sa_jax.config import from_dict
from sa_jax.errors import CheckpointError, ConfigError
from sa_jax.models.dit import DiTConfig, init_params, make_denoiser
from sa_jax.testing.sat_ref import SAO_MODEL_CONFIG, randomize, rel_err, sat_module, state_dict

torch = pytest.importorskip("torch")

TOL = 1e-4
# A small diffusers DiT: 4 heads of 64 (so the rotary width, head_dim / 2 = 32, equals
# stable-audio-tools' max(head_dim / 2, 32)) grouped over 2 key/value heads as in SAO, unequal
# widths everywhere.
DIFFUSERS_SMALL = dict(sample_size=16, in_channels=8, num_layers=2, attention_head_dim=64, num_attention_heads=4,
                       num_key_value_attention_heads=2, out_channels=8, cross_attention_dim=128, time_proj_dim=32,
                       global_states_input_dim=48, cross_attention_input_dim=40)
NORM_BIASES = ("norm1.bias", "norm2.bias", "norm3.bias")


def _inputs(batch, io, frames, tokens, cond_dim, global_dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, io, frames, generator=g), torch.rand(batch, generator=g),
            torch.randn(batch, tokens, cond_dim, generator=g), torch.randn(batch, global_dim, generator=g))


def _ours(config, params, x, t, ctx, glob, dtype=jnp.float32):
    fn = jax.jit(make_denoiser(config, dtype))
    return np.asarray(fn(params, *(jnp.asarray(a.numpy()) for a in (x, t, ctx, glob))))


def _diffusers_dit(**overrides):
    from diffusers import StableAudioDiTModel

    model = StableAudioDiTModel(**{**DIFFUSERS_SMALL, **overrides})
    return randomize(model, skip=NORM_BIASES)   # Stable Audio's LayerNorms are bias-free


def _diffusers_forward(model, x, t, ctx, glob):
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    rot = get_1d_rotary_pos_embed(model.config.attention_head_dim // 2, x.shape[2] + 1, use_real=True,
                                  repeat_interleave_real=False)
    with torch.no_grad():
        return model(x, t, encoder_hidden_states=ctx, global_hidden_states=glob[:, None], rotary_embedding=rot,
                     return_dict=False)[0].numpy()


@pytest.fixture(scope="module")
def diffusers_small():
    model = _diffusers_dit()
    config = sao.dit_config_from_diffusers(dict(model.config))
    params = sao.import_dit_diffusers(state_dict(model), config)
    return model, config, params


def test_matches_diffusers(diffusers_small):
    model, config, params = diffusers_small
    x, t, ctx, glob = _inputs(2, 8, 12, 7, 40, 48)
    ref = _diffusers_forward(model, x, t, ctx, glob)
    ours = _ours(config, params, x, t, ctx, glob)
    err = rel_err(ours, ref)
    print(f"DiT vs diffusers (small, float32): relative error {err:.2e}")
    assert err < TOL


def test_matches_diffusers_at_a_long_window(diffusers_small):
    """1023 frames: 1024 tokens, where the CPU's self-attention runs one head at a time
    (sa_jax.nn.attention.by_head_applies); same tolerance as the short window."""
    from sa_jax.nn.attention import by_head_applies

    model, config, params = diffusers_small
    x, t, ctx, glob = _inputs(2, 8, 1023, 7, 40, 48, seed=4)
    assert by_head_applies(jnp.zeros((2, 1024, 4, 64)), jnp.zeros((2, 1024, 4, 64)))
    err = rel_err(_ours(config, params, x, t, ctx, glob), _diffusers_forward(model, x, t, ctx, glob))
    print(f"DiT vs diffusers (small, 1023 frames, float32): relative error {err:.2e}")
    assert err < TOL


def test_bfloat16_compute_stays_close(diffusers_small):
    model, config, params = diffusers_small
    x, t, ctx, glob = _inputs(2, 8, 12, 7, 40, 48)
    ref = _diffusers_forward(model, x, t, ctx, glob)
    ours = _ours(config, params, x, t, ctx, glob, dtype=jnp.bfloat16)
    assert ours.dtype == np.float32
    err = rel_err(ours, ref)
    print(f"DiT bfloat16 compute vs float32 diffusers: relative error {err:.2e}")
    assert err < 5e-2
    # parameters stay float32 whatever the compute dtype
    fresh = jax.eval_shape(lambda k: init_params(config, k), jax.random.key(0))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(fresh)} == {jnp.dtype(jnp.float32)}


def test_remat_changes_nothing_but_memory(diffusers_small):
    _, config, params = diffusers_small
    x, t, ctx, glob = (jnp.asarray(a.numpy()) for a in _inputs(2, 8, 6, 3, 40, 48, seed=2))

    def loss(remat):
        apply = make_denoiser(config, remat=remat)
        return jax.jit(jax.value_and_grad(lambda p: jnp.mean(apply(p, x, t, ctx, glob) ** 2)))(params)

    (l0, g0), (l1, g1) = loss(False), loss(True)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("project_cond_tokens", [False, True])
def test_matches_stable_audio_tools(project_cond_tokens):
    dit = sat_module("models.dit")
    # 4 query heads over 2 key/value heads (context 128 = 2 x 64) or 4 (projected to 256)
    kwargs = dict(io_channels=8, embed_dim=256, depth=2, num_heads=4, cond_token_dim=128, global_cond_dim=256,
                  project_cond_tokens=project_cond_tokens)
    model = randomize(dit.DiffusionTransformer(**kwargs), seed=3)
    # the model config as stable-audio-tools would read it: T5 projected to 128, two 128-wide numbers
    model_config = copy.deepcopy(SAO_MODEL_CONFIG)
    model_config["model"]["diffusion"]["config"] = {**kwargs, "transformer_type": "continuous_transformer"}
    model_config["model"]["conditioning"]["cond_dim"] = 128
    model_config["model"]["conditioning"]["configs"][0]["config"]["project_out"] = True
    config, cond, _ = sao.sat_model_configs(model_config)
    assert cond.text_projection and cond.global_dim == 256
    assert (config.context_dim, config.kv_heads) == ((256, 4) if project_cond_tokens else (128, 2))
    params = sao.import_dit_sat(state_dict(model, "model.model."), config)
    x, t, ctx, glob = _inputs(2, 8, 9, 5, 128, 256, seed=1)
    with torch.no_grad():
        ref = model(x, t, cross_attn_cond=ctx, global_embed=glob).numpy()
    err = rel_err(_ours(config, params, x, t, ctx, glob), ref)
    print(f"DiT vs stable-audio-tools (project_cond_tokens={project_cond_tokens}): relative error {err:.2e}")
    assert err < TOL


def test_sao_model_config_gives_sao_shapes():
    dit, cond, t5_name = sao.sat_model_configs(SAO_MODEL_CONFIG)
    assert dit == DiTConfig()
    assert (dit.head_dim, dit.kv_heads, dit.rotary_features, dit.context_dim) == (64, 12, 32, 768)
    assert t5_name == "t5-base"
    assert cond.cross_attn_tokens == 130 and cond.global_dim == 1536


def test_sat_config_mismatch_is_an_error():
    bad = copy.deepcopy(SAO_MODEL_CONFIG)
    bad["model"]["diffusion"]["config"]["global_cond_dim"] = 1000
    with pytest.raises(ConfigError, match="global_cond_dim 1000"):
        sao.sat_model_configs(bad)


def test_unsupported_sat_options_are_named():
    bad = copy.deepcopy(SAO_MODEL_CONFIG)
    bad["model"]["diffusion"]["config"].update(patch_size=2, global_cond_type="adaLN", mystery=1)
    with pytest.raises(ConfigError) as e:
        sao.sat_model_configs(bad)
    for word in ("patch_size", "adaLN", "mystery"):
        assert word in str(e.value)


def test_importer_lists_every_problem_at_once(diffusers_small):
    model, config, _ = diffusers_small
    sd = state_dict(model)
    del sd["transformer_blocks.1.attn1.to_v.weight"]
    sd["transformer_blocks.0.attn2.to_q.weight"] = np.zeros((5, 5), np.float32)
    sd["transformer_blocks.0.norm2.bias"] = np.ones_like(sd["transformer_blocks.0.norm2.bias"])
    sd["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError) as e:
        sao.import_dit_diffusers(sd, config, source="tiny.safetensors")
    msg = str(e.value)
    for needle in ("tiny.safetensors", "transformer_blocks.1.attn1.to_v.weight", "attn2.to_q.weight",
                   "(5, 5)", "norm2.bias", "extra.weight"):
        assert needle in msg, (needle, msg)
    # a checkpoint of another shape: every block of the file is reported against the config
    with pytest.raises(CheckpointError, match="model weights the file does not provide"):
        sao.import_dit_diffusers(state_dict(model), config.replace(depth=3))


def test_sat_buffers_are_checked():
    dit = sat_module("models.dit")
    model = dit.DiffusionTransformer(io_channels=8, embed_dim=128, depth=1, num_heads=2, cond_token_dim=64,
                                     global_cond_dim=48, project_cond_tokens=False)
    config = DiTConfig(io_channels=8, embed_dim=128, depth=1, num_heads=2, cond_token_dim=64, global_cond_dim=48)
    sd = state_dict(model, "model.model.")
    sao.import_dit_sat(sd, config)   # LayerNorm betas (zeros) and rotary frequencies are accepted
    sd["model.model.transformer.rotary_pos_emb.inv_freq"] *= 2
    with pytest.raises(CheckpointError, match="rotary frequencies"):
        sao.import_dit_sat(sd, config)


def test_config_and_input_errors():
    with pytest.raises(ConfigError, match="num_heads"):
        DiTConfig(embed_dim=100, num_heads=3)
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(DiTConfig, {"embed_dim": 128, "heads": 2})
    config = DiTConfig(io_channels=4, embed_dim=64, depth=1, num_heads=1, cond_token_dim=64, global_cond_dim=8)
    params = jax.eval_shape(lambda k: init_params(config, k), jax.random.key(0))
    apply = make_denoiser(config)
    with pytest.raises(ValueError, match=r"x must be \(batch, 4, frames\)"):
        jax.eval_shape(apply, params, jnp.zeros((1, 3, 8)), jnp.zeros(1), jnp.zeros((1, 2, 64)), jnp.zeros((1, 8)))
    with pytest.raises(ValueError, match="global_cond"):
        jax.eval_shape(apply, params, jnp.zeros((1, 4, 8)), jnp.zeros(1), jnp.zeros((1, 2, 64)), jnp.zeros((1, 9)))


@pytest.mark.slow
def test_full_sao_widths_match_diffusers():
    """The released SAO DiT shape (24 layers, 1536 wide, 24 heads, 12 kv heads) at 8 frames."""
    from diffusers import StableAudioDiTModel

    model = randomize(StableAudioDiTModel(), skip=NORM_BIASES)
    config = sao.dit_config_from_diffusers(dict(model.config))
    sao_shape = DiTConfig()
    for name in ("embed_dim", "depth", "num_heads", "kv_heads", "context_dim", "rotary_features", "head_dim"):
        assert getattr(config, name) == getattr(sao_shape, name), name
    params = sao.import_dit_diffusers(state_dict(model), config)
    x, t, ctx, glob = _inputs(1, 64, 8, 130, 768, 1536, seed=5)
    ref = _diffusers_forward(model, x, t, ctx, glob)
    del model
    err = rel_err(_ours(config, params, x, t, ctx, glob), ref)
    print(f"DiT vs diffusers (full SAO widths, float32): relative error {err:.2e}")
    assert err < TOL
