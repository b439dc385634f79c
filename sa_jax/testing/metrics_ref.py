"""The PyTorch references of the metric models, for the parity tests and bench/bench_metrics.py:
torchopenl3's OpenL3 and hear21passt's PaSST with random weights, hear21passt's mel front end, and
openl3 0.4.2's kapre 0.3.7 front end (`kapre037_db`; checked against kapre itself by bench/kapre037_check.py).

- resampy 0.2 (openl3's pin, used by torchopenl3) finds its filter files through pkg_resources, which
  setuptools >= 81 no longer ships: `import_resampy` gives it the one function it calls.
- hear21passt's helpers import timm only for a download function (and timm needs torchvision, which
  does not load beside CPU torch): `passt_module` stands in for it.
- torchaudio (which hear21passt's AugmentMelSTFT imports) does not load beside CPU torch either:
  `torch_mel` is AugmentMelSTFT.forward in eval mode written out, with
  torchaudio.compliance.kaldi.get_mel_banks reproduced from its documented formula (no VTLN warp).
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np


def import_resampy():
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            shim = types.ModuleType("pkg_resources")
            root = Path(importlib.util.find_spec("resampy").submodule_search_locations[0])
            shim.resource_filename = lambda module, name: str(root / name)
            sys.modules["pkg_resources"] = shim
    import resampy

    return resampy


def openl3_torch(input_repr: str = "mel256", embedding_size: int = 512, seed: int = 0):
    """torchopenl3's PytorchOpenl3 with random weights (He-like scales so 8 layers stay in range) and
    random BatchNorm statistics."""
    import torch

    import_resampy()
    from torchopenl3.models import PytorchOpenl3

    torch.manual_seed(seed)
    m = PytorchOpenl3(content_type="music", input_repr=input_repr, embedding_size=embedding_size)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            fan = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (np.sqrt(2.0 / fan) if p.ndim > 1 else 0.1)
                    + (1.0 if name.endswith("weight") and p.ndim == 1 else 0.0))
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return m.eval()


def kapre037_db(windows, input_repr: str = "mel256") -> np.ndarray:
    """openl3 0.4.2's front end (kapre 0.3.7) in NumPy float64, from kapre's source: tf.signal.stft
    (periodic Hann, hop 242; for the mel inputs n_fft 2048 and pad_end: zeros after the window to
    ceil(48000 / 242) frames; for `linear` n_fft 512, no padding), its magnitude, for mel128/mel256
    `librosa.filters.mel(sr=48000, n_fft=2048, htk=False, norm='slaney')` cast to float32 as kapre
    does, then openl3's `kapre_v0_1_4_magnitude_to_decibel` (10 log10(max(x, 1e-10)) relative to the
    window's maximum, floored at -80). (n, 48000) -> (n, bins, frames)."""
    import librosa

    x = np.asarray(windows, np.float64)
    n_fft, n_mels = {"linear": (512, 0), "mel128": (2048, 128), "mel256": (2048, 256)}[input_repr]
    hop = 242
    if n_mels:
        frames = -(-x.shape[1] // hop)
        x = np.pad(x, ((0, 0), (0, (frames - 1) * hop + n_fft - x.shape[1])))
    frames = 1 + (x.shape[1] - n_fft) // hop
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    index = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
    spec = np.abs(np.fft.rfft(x[:, index] * hann, axis=-1))               # (n, frames, bins)
    if n_mels:
        mel = librosa.filters.mel(sr=48000, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=None, htk=False,
                                  norm="slaney").astype(np.float32).astype(np.float64)
        spec = spec @ mel.T
    db = 10.0 * np.log10(np.maximum(spec, 1e-10))
    db = np.maximum(db - db.max(axis=(1, 2), keepdims=True), -80.0)
    return db.transpose(0, 2, 1)


def passt_module():
    """hear21passt.models.passt, with a stand-in for timm's download helper."""
    names = ("timm", "timm.models", "timm.models._hub")
    added = [n for n in names if n not in sys.modules]
    for name in added:
        mod = types.ModuleType(name)
        mod.download_cached_file = lambda *a, **k: None
        sys.modules[name] = mod
    try:
        from hear21passt.models import passt
    finally:    # taken out again: a timm in sys.modules makes transformers take paths that need the real one
        for name in added:
            sys.modules.pop(name, None)
    return passt


def passt_torch(config, seed: int = 0):
    """hear21passt's PaSST network of `config`'s sizes (sa_jax.models.passt.PaSSTConfig) with random
    weights, LayerNorm scales near 1."""
    import torch

    passt = passt_module()
    torch.manual_seed(seed)
    net = passt.PaSST(img_size=(config.n_mels, 998), patch_size=config.patch, stride=config.stride, in_chans=1,
                      num_classes=config.num_classes, embed_dim=config.embed_dim, depth=config.depth,
                      num_heads=config.heads, distilled=True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.05 if p.ndim > 1 else 0.02)
                    + (1.0 if "norm" in name and name.endswith("weight") or name == "head.0.weight" else 0.0))
    return net.eval()


def kaldi_mel_banks_torch(n_mels=128, n_fft=1024, sr=32000, fmin=0.0, fmax=15000.0):
    """torchaudio.compliance.kaldi.get_mel_banks (vtln_warp_factor 1.0) from its documented formula:
    band edges on the mel scale 1127 ln(1 + f / 700) (python floats), triangles in mel (float32 tensors),
    plus hear21passt's zero column for the Nyquist bin."""
    import torch

    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)
    low, high = mel(fmin), mel(fmax)
    delta = (high - low) / (n_mels + 1)
    b = torch.arange(n_mels).float().unsqueeze(1)
    left, center, right = low + b * delta, low + (b + 1.0) * delta, low + (b + 2.0) * delta
    m = (1127.0 * (1.0 + (sr / n_fft) * torch.arange(n_fft // 2).float() / 700.0).log()).unsqueeze(0)
    up, down = (m - left) / (center - left), (right - m) / (right - center)
    return torch.nn.functional.pad(torch.max(torch.zeros(1), torch.min(up, down)), (0, 1))


def torch_mel(x):
    """hear21passt's AugmentMelSTFT.forward in eval mode (128 mels, 32 kHz, window 800, hop 320, n_fft 1024)."""
    import torch

    x = torch.nn.functional.conv1d(x.unsqueeze(1), torch.tensor([[[-0.97, 1.0]]])).squeeze(1)
    spec = torch.stft(x, 1024, hop_length=320, win_length=800, center=True, normalized=False,
                      window=torch.hann_window(800, periodic=False), return_complex=True)
    power = spec.real ** 2 + spec.imag ** 2
    mel = torch.matmul(kaldi_mel_banks_torch(), power)
    return (torch.log(mel + 0.00001) + 4.5) / 5.0


def passt_logits_torch(net, audio) -> np.ndarray:
    """(n, samples) at 32 kHz -> (n, classes) logits, as get_basic_model(mode='logits') computes them."""
    import torch

    with torch.no_grad():
        return net(torch_mel(torch.from_numpy(np.asarray(audio, np.float32))).unsqueeze(1))[0].numpy()
