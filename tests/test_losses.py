"""The VAE losses against the PyTorch references on CPU, same random signals:

- STFT losses (A-weighting, sum/difference, L/R, each resolution) against the `auraloss` package and
  against stable-audio-tools' vendored copy (training/losses/auraloss.py), within 1e-4 relative;
- the hinge and feature-matching losses against stable-audio-tools' EncodecDiscriminator.loss
  arithmetic (fed the same logits/features);
- KL against the reference bottleneck's formula.
"""

from __future__ import annotations

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_jax.nn.spectral import stft
from sa_jax.training import losses as L

torch = pytest.importorskip("torch")

SR = 44100
TOL = 1e-4   # relative, as the issue states
REF_CFG = L.STFTLossConfig()   # the reference's 7 resolutions, hop 1/4, A-weighting
# auraloss 0.4 takes the spectral-convergence norm over the whole batch; stable-audio-tools' vendored
# copy (what its trainer runs) per signal, then the mean. Each reference is compared with its own.
CFGS = {"auraloss": L.STFTLossConfig(sc_reduction="batch"), "stable-audio-tools": REF_CFG}

# Compiling (about 1 s per STFT resolution on these CPUs) dominates the test time: one jitted program
# gives every STFT term (sum/diff, left, right) under both settings, sharing the spectrograms.
one_loss = jax.jit(L.stft_loss, static_argnums=(2, 3, 4), static_argnames=("w_lin_mag", "sc_reduction"))


@functools.lru_cache(maxsize=None)
def _both_settings(seed, t):
    reals, recon = _signals(seed=seed, t=t)
    fn = jax.jit(lambda a, b: {k: L.reconstruction_losses(a, b, c, SR) for k, c in CFGS.items()})
    return jax.device_get(fn(_cl(reals), _cl(recon)))


def _vendored():
    spec = importlib.util.find_spec("stable_audio_tools")
    if spec is None:
        pytest.skip("stable-audio-tools is not installed (bash setup.sh test)")
    path = spec.submodule_search_locations[0] + "/training/losses/auraloss.py"
    # Loaded by path: the package's __init__ pulls in heavy optional imports the loss never uses.
    s = importlib.util.spec_from_file_location("_sat_auraloss", path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod


def _auraloss():
    return pytest.importorskip("auraloss.freq")


REFS = {"auraloss": _auraloss, "stable-audio-tools": _vendored}


def _signals(seed=0, b=2, t=8192):
    """Reals and a 'reconstruction' that is close but not equal (the regime the loss works in)."""
    rng = np.random.default_rng(seed)
    reals = rng.standard_normal((b, 2, t)).astype(np.float32) * 0.3
    noise = np.linspace(0.05, 0.3, b)[:, None, None]   # items reconstructed unequally well
    recon = (reals + noise * rng.standard_normal((b, 2, t))).astype(np.float32)
    recon[:, 1] *= 0.7   # a channel imbalance, so the difference signal matters
    return reals, recon


def _cl(x):
    """(batch, channels, time) -> our channels-last jnp array."""
    return jnp.asarray(np.swapaxes(x, 1, 2))


def _rel(a, b):
    return abs(float(a) - float(b)) / abs(float(b))


def _kwargs(cfg=REF_CFG):
    return dict(fft_sizes=list(cfg.fft_sizes), hop_sizes=list(cfg.hop_sizes), win_lengths=list(cfg.win_lengths),
                perceptual_weighting=cfg.perceptual_weighting, sample_rate=SR)


@pytest.mark.parametrize("ref", sorted(REFS))
def test_a_weighting_taps_match(ref):
    mod = REFS[ref]()
    fir = mod.FIRFilter(filter_type="aw", fs=SR)
    np.testing.assert_array_equal(L.a_weighting_taps(SR), fir.fir.weight.data.numpy().reshape(-1))
    x = np.random.default_rng(1).standard_normal((3, 1, 4000)).astype(np.float32)
    ours = L.a_weight(jnp.asarray(x[:, 0]), SR)
    theirs, _ = fir(torch.from_numpy(x), torch.from_numpy(x))
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy()[:, 0], rtol=0, atol=1e-5 * np.abs(theirs.numpy()).max())


@pytest.mark.parametrize("ref", sorted(REFS))
def test_sum_difference_and_per_channel_stft_loss_parity(ref):
    """SumAndDifferenceSTFTLoss and the per-channel MultiResolutionSTFTLoss (the reference's
    resolutions and A-weighting) on the same random signals; the length is no multiple of any hop."""
    mod = REFS[ref]()
    reals, recon = _signals(seed=3, t=7000)
    r, d = torch.from_numpy(reals), torch.from_numpy(recon)
    theirs_sd = mod.SumAndDifferenceSTFTLoss(**_kwargs())(r, d).item()
    mr = mod.MultiResolutionSTFTLoss(**_kwargs())
    theirs_lr = [mr(r[:, ch:ch + 1], d[:, ch:ch + 1]).item() for ch in (0, 1)]
    both = _both_settings(3, 7000)
    got = both[ref]
    ours_lr = [2 * float(got["stft_left"]), 2 * float(got["stft_right"])]   # the terms carry weight 0.5
    print(f"\n{ref}: sum/diff ours {float(got['mrstft']):.7f} ref {theirs_sd:.7f} "
          f"rel {_rel(got['mrstft'], theirs_sd):.2e}; L/R rel "
          f"{_rel(ours_lr[0], theirs_lr[0]):.2e} {_rel(ours_lr[1], theirs_lr[1]):.2e}")
    assert _rel(got["mrstft"], theirs_sd) < TOL
    for ch in (0, 1):
        assert _rel(ours_lr[ch], theirs_lr[ch]) < TOL, (ch, ours_lr[ch], theirs_lr[ch])
    if ref == "stable-audio-tools":
        # The reference trainer's terms: sdstft(reals, decoded) at weight 1, lrstft per channel at 1/2.
        assert float(got["stft_left"]) == pytest.approx(theirs_lr[0] / 2, rel=TOL)
    else:
        # auraloss 0.4 normalises spectral convergence over the whole batch: the setting matters here.
        other = both["stable-audio-tools"]
        assert _rel(other["mrstft"], theirs_sd) > 10 * TOL


@pytest.mark.parametrize("ref", sorted(REFS))
def test_single_resolution_parity(ref):
    """Each STFTLoss alone (no pre-filter, linear term on): the STFT itself, odd hops included."""
    mod = REFS[ref]()
    reals, recon = _signals(seed=4, t=5000)
    x, y = reals.reshape(-1, reals.shape[-1]), recon.reshape(-1, recon.shape[-1])
    for n_fft, hop in ((2048, 512), (32, 8), (512, 100)):
        theirs = mod.STFTLoss(n_fft, hop, n_fft, w_lin_mag=0.5)(torch.from_numpy(reals), torch.from_numpy(recon)).item()
        ours = one_loss(jnp.asarray(x), jnp.asarray(y), n_fft, hop, n_fft, w_lin_mag=0.5,
                        sc_reduction=CFGS[ref].sc_reduction)
        assert _rel(ours, theirs) < TOL, (n_fft, float(ours), theirs)


def test_stft_matches_torch_stft_with_short_window():
    x = np.random.default_rng(2).standard_normal((2, 3000)).astype(np.float32)
    theirs = torch.stft(torch.from_numpy(x), 512, 128, 300, torch.hann_window(300), return_complex=True).numpy()
    ours = np.asarray(stft(jnp.asarray(x), 512, 128, 300))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * np.abs(theirs).max())


def test_stft_loss_is_zero_for_equal_signals_and_differentiable():
    small = L.STFTLossConfig(fft_sizes=(256, 64), hop_sizes=(64, 16), win_lengths=(256, 64))
    reals, recon = _signals(t=2048)
    terms = jax.jit(L.reconstruction_losses, static_argnums=(2, 3))
    assert all(float(v) == pytest.approx(0, abs=1e-6) for v in terms(_cl(reals), _cl(reals), small, SR).values())
    g = jax.jit(jax.grad(lambda x: sum(L.reconstruction_losses(_cl(reals), x, small, SR).values())))(_cl(recon))
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) > 0


def test_hinge_and_feature_matching_match_reference_arithmetic():
    rng = np.random.default_rng(7)
    scales = [(3, 5), (4, 2)]
    logits_r = [rng.standard_normal((2, 1, a, b)).astype(np.float32) for a, b in scales]
    logits_f = [rng.standard_normal((2, 1, a, b)).astype(np.float32) for a, b in scales]
    feats_r = [[rng.standard_normal((2, 4, a, b)).astype(np.float32) for _ in range(3)] for a, b in scales]
    feats_f = [[rng.standard_normal((2, 4, a, b)).astype(np.float32) for _ in range(3)] for a, b in scales]

    # The reference's EncodecDiscriminator.loss body, with its forward replaced by fixed outputs.
    from sa_jax.testing.reference import import_reference

    disc_mod = import_reference("stable_audio_tools.models.discriminators")
    for normalize in (False, True):
        disc = disc_mod.EncodecDiscriminator.__new__(disc_mod.EncodecDiscriminator)
        torch.nn.Module.__init__(disc)
        disc.fm_reduction = ((lambda x, y: abs(x - y).mean() / (abs(x).mean() + 1e-3)) if normalize
                             else (lambda x, y: abs(x - y).mean()))
        disc.loss_type = "hinge"
        t = lambda xs: [torch.from_numpy(x) for x in xs]
        real_in, fake_in = torch.zeros(1), torch.ones(1)
        outs = {0.0: (t(logits_r), [t(f) for f in feats_r]), 1.0: (t(logits_f), [t(f) for f in feats_f])}
        disc.forward = lambda x: outs[float(x[0])]
        want = [v.item() for v in disc.loss(real_in, fake_in)]
        got = L.discriminator_losses((logits_r, feats_r), (logits_f, feats_f), normalize=normalize)
        for g, w in zip(got, want):
            assert _rel(g, w) < 1e-6, (normalize, float(g), w)


def test_kl_matches_reference_formula():
    rng = np.random.default_rng(0)
    mean = rng.standard_normal((2, 16, 8)).astype(np.float32)
    scale = rng.standard_normal((2, 16, 8)).astype(np.float32)
    std = torch.nn.functional.softplus(torch.from_numpy(scale)) + 1e-4
    var = std * std
    m = torch.from_numpy(mean)
    want = (m * m + var - torch.log(var) - 1).sum(1).mean().item()   # channels-first (B, C, T) in torch
    got = L.kl_loss(jnp.swapaxes(jnp.asarray(mean), 1, 2), jnp.swapaxes(jnp.asarray(std.numpy()), 1, 2))
    assert _rel(got, want) < 1e-6


def test_bad_inputs_raise_clear_errors():
    from sa_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="equal length"):
        L.STFTLossConfig(fft_sizes=(64, 32), hop_sizes=(16,), win_lengths=(64, 32)).validate()
    with pytest.raises(ValueError, match="stereo"):
        L.sum_and_difference_stft_loss(jnp.zeros((1, 4096, 1)), jnp.zeros((1, 4096, 1)), REF_CFG, SR)
    with pytest.raises(ValueError, match="sample_rate"):
        L.multi_resolution_stft_loss(jnp.zeros((1, 4096, 1)), jnp.zeros((1, 4096, 1)), REF_CFG)
    with pytest.raises(ValueError, match="too short"):
        stft(jnp.zeros((1, 100)), 2048, 512)
