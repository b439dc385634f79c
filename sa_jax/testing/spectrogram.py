"""torchaudio.transforms.Spectrogram's arithmetic in plain torch, for stable-audio-tools' EncodecDiscriminator
(torchaudio's native library does not load beside the CPU torch here). Used by the discriminator parity
test and bench/bench_train_vae.py."""

from __future__ import annotations

import torch


class Spectrogram(torch.nn.Module):
    """torchaudio.transforms.Spectrogram's computation for pad=0, onesided, return of complex values."""

    def __init__(self, n_fft, hop_length, win_length, window_fn, normalized, center, pad_mode=None, power=None):
        super().__init__()
        assert power is None and normalized in (True, "window")
        self.n_fft, self.hop, self.win, self.center = n_fft, hop_length, win_length, center
        self.register_buffer("window", window_fn(win_length))

    def forward(self, x):
        shape = x.shape
        s = torch.stft(x.reshape(-1, shape[-1]), self.n_fft, self.hop, self.win, self.window, center=self.center,
                       pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
        s = s.reshape(*shape[:-1], *s.shape[-2:])
        return s / self.window.pow(2.0).sum().sqrt()
