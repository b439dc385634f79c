"""The multi-scale STFT discriminator against stable-audio-tools' EncodecDiscriminator, with the same
random weights (moved off their init) converted through our importer; float32, bound 1e-4 relative
(max |ours - ref| / max |ref| per output).

The reference's spectrogram is torchaudio's `Spectrogram(power=None, center=False, normalized=True)`;
torchaudio does not load beside CPU torch here, so the test gives the reference a stand-in with
torchaudio's documented arithmetic (torch.stft, then division by sqrt(sum(window^2)))."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_jax.checkpoints.discriminator import from_torch
from sa_jax.errors import CheckpointError
from sa_jax.models.discriminator import DiscriminatorConfig, MultiScaleSTFTDiscriminator
from sa_jax.training.losses import discriminator_losses

torch = pytest.importorskip("torch")
TOL = 1e-4


@pytest.fixture
def ref_disc(monkeypatch):
    from sa_jax.testing.reference import import_reference
    from sa_jax.testing.spectrogram import Spectrogram

    mod = import_reference("stable_audio_tools.models.discriminators")
    enc = import_reference("stable_audio_tools.models.encodec")
    monkeypatch.setattr(enc.torchaudio.transforms, "Spectrogram", Spectrogram, raising=False)
    return mod


def _perturbed(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight_g"):
                p.mul_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def _rel(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


CASES = {
    # the SA 1.0 recipe: 32 filters, FFTs 2048..128, hop 1/4
    "sa1": dict(filters=32, n_ffts=[2048, 1024, 512, 256, 128], hop_lengths=[512, 256, 128, 64, 32],
                win_lengths=[2048, 1024, 512, 256, 128]),
    # a window shorter than the FFT, odd hop, strided convs
    "variant": dict(filters=4, n_ffts=[256, 64], hop_lengths=[50, 16],
                    win_lengths=[200, 64], stride=(1, 2)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_losses_match_reference(ref_disc, case):
    kw = CASES[case]
    ref = _perturbed(ref_disc.EncodecDiscriminator(in_channels=2, **kw), seed=1)
    cfg = DiscriminatorConfig(in_channels=2, **{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})
    params = from_torch(ref.state_dict(), cfg, "EncodecDiscriminator")
    rng = np.random.default_rng(0)
    reals = rng.uniform(-0.8, 0.8, (2, 2, 4096)).astype(np.float32)
    fakes = (0.7 * reals + 0.1 * rng.standard_normal(reals.shape)).astype(np.float32)

    with torch.no_grad():
        ref_logits, ref_feats = ref(torch.from_numpy(reals))
    disc = MultiScaleSTFTDiscriminator(cfg)
    fwd = jax.jit(lambda p, x: disc.apply({"params": p}, x))
    to_nhwc = lambda a: jnp.asarray(np.swapaxes(a, 1, 2))
    logits, feats = fwd(params, to_nhwc(reals))
    worst = 0.0
    for i, (lg, rl) in enumerate(zip(logits, ref_logits)):
        # ours (batch, frames, freq, C) <-> torch (batch, C, frames, freq)
        worst = max(worst, _rel(jnp.transpose(lg, (0, 3, 1, 2)), rl.numpy()))
        assert len(feats[i]) == len(ref_feats[i])
        for f, rf in zip(feats[i], ref_feats[i]):
            worst = max(worst, _rel(jnp.transpose(f, (0, 3, 1, 2)), rf.numpy()))
    print(f"\n{case}: discriminator logits/features max rel err {worst:.2e}")
    assert worst < TOL

    if case != "variant":   # the loss arithmetic once is enough (the full recipe's forward is the slow part)
        return
    with torch.no_grad():
        ref_losses = [v.item() for v in ref.loss(torch.from_numpy(reals), torch.from_numpy(fakes))]
    ours = jax.jit(discriminator_losses)((logits, feats), fwd(params, to_nhwc(fakes)))
    for o, r in zip(ours, ref_losses):
        assert abs(float(o) - r) <= TOL * max(abs(r), 1e-3), (float(o), r)


def test_importer_reports_every_problem(ref_disc):
    kw = CASES["variant"]
    ref = ref_disc.EncodecDiscriminator(in_channels=2, **kw)
    cfg = DiscriminatorConfig(in_channels=2, **{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    del state["discriminators.discriminators.0.conv_post.conv.bias"]
    state["discriminators.discriminators.1.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError) as e:
        from_torch(state, cfg, "bad.ckpt")
    msg = str(e.value)
    assert "conv_post.conv.bias" in msg and "extra.weight" in msg
    wider = DiscriminatorConfig(**{**cfg.__dict__, "filters": 8})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        from_torch({k: v.numpy() for k, v in ref.state_dict().items()}, wider, "wider.ckpt")


def test_bad_config_and_input():
    from sa_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="equal length"):
        DiscriminatorConfig(n_ffts=(64,), hop_lengths=(16, 8), win_lengths=(64,)).validate()
    cfg = DiscriminatorConfig(filters=2, n_ffts=(64,), hop_lengths=(16,), win_lengths=(64,))
    with pytest.raises(ValueError, match="expected audio"):
        MultiScaleSTFTDiscriminator(cfg).init(jax.random.key(0), jnp.zeros((1, 256, 1)))
    with pytest.raises(ValueError, match="shorter than the STFT size"):
        MultiScaleSTFTDiscriminator(cfg).init(jax.random.key(0), jnp.zeros((1, 32, 2)))
