"""Parity of the paper's U-Net with stable-audio-tools' UNetCFG1d (random weights, float32,
max |ours - ref| / max |ref| < 1e-4), the CFG path included, and the paper-size build."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sa_jax.checkpoints.unet import expected_shapes, from_sat
from sa_jax.config import load_yaml
from sa_jax.diffusion import cfg_model
from sa_jax.errors import CheckpointError
from sa_jax.models.unet import UNet1d, config_from_dict, null_embedding
from sa_jax.testing.reference import import_reference

TOL = 1e-4

SMALL = dict(in_channels=4, channels=32, multipliers=[1, 2, 2, 3], factors=[1, 2, 2], num_blocks=[1, 2, 1],
             attentions=[1, 0, 2, 1], context_embedding_features=8, context_embedding_max_length=6,
             attention_heads=2, attention_multiplier=2, resnet_groups=4, use_context_time=True)


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def reference(kwargs, seed):
    adp = import_reference("stable_audio_tools.models.adp")
    torch.manual_seed(seed)
    ref = adp.UNetCFG1d(**kwargs).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # norms start at 1/0: move them so a mix-up of scale and bias shows
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return ref, {k: v.numpy().copy() for k, v in ref.state_dict().items()}


def inputs(kwargs, frames, batch=2, seed=0, tokens=None):
    rng = np.random.default_rng(seed)
    tokens = tokens or kwargs["context_embedding_max_length"]
    x = rng.normal(size=(batch, kwargs["in_channels"], frames)).astype(np.float32)
    t = rng.uniform(0, 1, size=(batch,)).astype(np.float32)
    emb = rng.normal(size=(batch, tokens, kwargs["context_embedding_features"])).astype(np.float32)
    mask = np.ones((batch, tokens), bool)
    mask[0, tokens // 2:] = False  # padding tokens in the first item
    return x, t, emb, mask


def ours(params, config, x, t, emb, mask=None):
    model = UNet1d(config)
    y = jax.jit(model.apply)({"params": params}, jnp.asarray(x.transpose(0, 2, 1)), t, emb, mask)
    return np.asarray(y).transpose(0, 2, 1)


@pytest.mark.parametrize("variant", ["plain", "xattn_time_patch2_nearest"])
def test_unet_matches_reference_small(variant):
    kwargs = dict(SMALL)
    if variant != "plain":
        kwargs.update(use_xattn_time=True, patch_size=2, use_nearest_upsample=True, use_skip_scale=False)
    ref, state = reference(kwargs, seed=1)
    config = config_from_dict(kwargs)
    params = from_sat(state, config, "reference UNetCFG1d")
    x, t, emb, mask = inputs(kwargs, frames=16)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(t), embedding=torch.from_numpy(emb),
                   embedding_mask=torch.from_numpy(mask)).numpy()
    err = rel_err(ours(params, config, x, t, emb, mask), want)
    print(f"UNet {variant}: relative error {err:.1e}")
    assert err < TOL


def test_cfg_with_rescale_matches_reference():
    """UNetCFG1d's guided output (learned null embedding, scale 6, rescale phi 0.4) through
    sa_jax.diffusion's batched [cond, uncond] guidance."""
    ref, state = reference(SMALL, seed=2)
    config = config_from_dict(SMALL)
    params = from_sat(state, config, "reference UNetCFG1d")
    x, t, emb, _ = inputs(SMALL, frames=8, seed=2)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(t), embedding=torch.from_numpy(emb),
                   embedding_scale=6.0, batch_cfg=True, rescale_cfg=True, scale_phi=0.4).numpy()
    model = UNet1d(config)
    unet = lambda x, t, emb: model.apply({"params": params}, x, t, emb)
    guided = cfg_model(unet, jnp.asarray(emb), null_embedding(params, x.shape[0], emb.shape[1]), 6.0, rescale=0.4)
    got = np.asarray(jax.jit(guided)(jnp.asarray(x.transpose(0, 2, 1)), jnp.asarray(t))).transpose(0, 2, 1)
    err = rel_err(got, want)
    print(f"UNet CFG + rescale: relative error {err:.1e}")
    assert err < TOL


def test_one_level_at_paper_widths():
    """The paper's widths (base 256, x4 = 1024 channels, 16 heads, 768-d context, 79 tokens) on one level."""
    kwargs = dict(in_channels=64, channels=256, multipliers=[4, 4], factors=[2], num_blocks=[2], attentions=[1, 1],
                  context_embedding_features=768, context_embedding_max_length=79, attention_heads=16,
                  attention_multiplier=4, resnet_groups=16, use_context_time=True)
    ref, state = reference(kwargs, seed=3)
    config = config_from_dict(kwargs)
    params = from_sat(state, config, "reference UNetCFG1d")
    x, t, emb, mask = inputs(kwargs, frames=8, batch=1, seed=3)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(t), embedding=torch.from_numpy(emb),
                   embedding_mask=torch.from_numpy(mask)).numpy()
    err = rel_err(ours(params, config, x, t, emb, mask), want)
    print(f"UNet one level at paper widths: relative error {err:.1e}")
    assert err < TOL


def test_paper_config_builds_abstractly_with_its_parameter_count():
    config = config_from_dict(load_yaml("configs/unet_sa1.yaml")["unet"])
    shapes = expected_shapes(config)
    count = sum(int(np.prod(s)) for s in shapes.values())
    # stable-audio-tools builds the same module tree; its count, from the same config, is 907,272,000-ish:
    # checked exactly against the reference below when the reference is importable.
    adp = import_reference("stable_audio_tools.models.adp")
    with torch.device("meta"):
        ref = adp.UNetCFG1d(**load_yaml("configs/unet_sa1.yaml")["unet"])
    assert count == sum(p.numel() for p in ref.parameters())
    assert 880e6 < count < 940e6, count  # the paper reports 907M


@pytest.mark.slow  # about 2 minutes of XLA compilation on 2 cores
def test_one_jitted_call_at_paper_size_runs():
    config = config_from_dict(load_yaml("configs/unet_sa1.yaml")["unet"])
    model = UNet1d(config)
    frames = config.downsampling * 2
    x = jnp.zeros((1, frames, config.in_channels))
    emb = jnp.zeros((1, config.context_embedding_max_length, config.context_embedding_features))
    params = jax.jit(model.init)(jax.random.key(0), x, jnp.zeros((1,)), emb)["params"]
    y = jax.jit(model.apply)({"params": params}, x, jnp.full((1,), 0.5), emb)
    assert y.shape == x.shape and bool(jnp.isfinite(y).all())


def test_importer_lists_problems():
    _, state = reference(SMALL, seed=4)
    other = config_from_dict({**SMALL, "channels": 64})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        from_sat(state, other, "reference UNetCFG1d")
    state["extra.weight"] = np.zeros(3, np.float32)
    del state["to_mapping.0.bias"]
    with pytest.raises(CheckpointError) as err:
        from_sat(state, config_from_dict(SMALL), "reference UNetCFG1d")
    assert "extra.weight" in str(err.value) and "mapping_0/bias" in str(err.value)


def test_params_command_prints_the_paper_count(capsys):
    from sa_jax.cli import main

    assert main(["params", "configs/unet_sa1.yaml"]) == 0
    assert "906,679,744 (906.7M)" in capsys.readouterr().out


@pytest.mark.slow   # moved out of the default run for its time (~100s on 2 AVX2 cores); run with -m slow
def test_the_small_unet_can_place_an_end_anywhere_in_its_window():
    """The timing conditioning can end a clip at frame f only if the U-Net knows where frame f is. Without
    positional encodings only the edges' receptive field tells it (#22's study): with factors [2, 2, 2] the
    shipped small U-Net could not tell frames 117-272 of its 384 apart (the requests of 3-6 s), with
    [2, 4, 4] every frame is told apart. Widths do not change the receptive field, so a narrow copy of the
    packaged config is checked (fast)."""
    from sa_jax.models.unet import position_blind_frames

    unet = {**load_yaml("configs/unet_small.yaml")["unet"], "channels": 16, "resnet_groups": 4}
    window = load_yaml("configs/train_unet_small.yaml")["data"]["latent_window"]
    assert position_blind_frames(config_from_dict(unet), window) == []
    blind = position_blind_frames(config_from_dict({**unet, "factors": [2, 2, 2]}), window)
    assert blind and blind[0] > 64 and blind[-1] < window - 64, blind       # the middle, not the edges
    with pytest.raises(ValueError, match="multiple of the U-Net's downsampling"):
        position_blind_frames(config_from_dict(unet), window + 8)
