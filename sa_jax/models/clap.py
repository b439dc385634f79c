"""CLAP (contrastive language-audio pretraining) in Flax: the HTSAT audio tower, the RoBERTa
text tower (`sa_jax.models.bert`), the two projection heads and the contrastive logit scales.

HTSAT is a Swin transformer over a log-mel spectrogram folded into a square image:
- the (time, mel) spectrogram is batch-normed per mel bin, resampled in time (bicubic, aligned
  corners) to `spec_size * freq_ratio` frames (freq_ratio = spec_size / mel bins), cut into
  `freq_ratio` time segments and stacked along frequency, giving a spec_size x spec_size image
  (rows = segment-major frequency, columns = time within the segment);
- a strided conv cuts it into patches, then stages of Swin blocks (windowed self-attention with
  a learned relative-position bias; every second block shifts its windows by half a window, with
  an additive -100 mask between regions that the cyclic shift brought together) separated by
  patch merging (2x2 neighbours concatenated, normed and projected to twice the width);
- the final LayerNorm output is averaged over all tokens: that mean is the audio feature.
With feature fusion (LAION's `*-fusion` models, for audio longer than the 10 s window) the input
holds four spectrograms: a downsampled view of the whole clip (channel 0) and three crops.
Each crop goes through a wider strided conv; their patch maps are laid side by side in time and
merged into the global patch map by attentional feature fusion (AFF: sigmoid gate from a local
1x1-conv branch plus a globally pooled branch). Rows whose `is_longer` flag is false skip it.

Layout: channels-last inside (patch maps are (batch, height, width, channels)); the input
features keep the feature extractor's (batch, spectrograms, frames, mel bins) layout.
Parameters are float32; `dtype` sets the compute dtype. BatchNorm statistics live in the
`batch_stats` collection. `train=True` updates them (apply with mutable=["batch_stats"]) and turns
on the configured dropout and stochastic depth (needs a 'dropout' rng).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sa_jax.errors import ConfigError
from sa_jax.models.bert import BertConfig, BertEncoder
from sa_jax.tree import flat_shapes

Dtype = Any


@dataclass(frozen=True)
class HTSATConfig:
    """The HTSAT audio tower. Defaults are LAION CLAP's HTSAT-tiny (`laion/clap-htsat-*`)."""

    num_mel_bins: int = 64
    spec_size: int = 256
    patch_size: int = 4
    patch_stride: tuple[int, int] = (4, 4)
    window_size: int = 8
    embed_dim: int = 96                         # width of the patch embedding (first stage)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    patch_norm: bool = True
    layer_norm_eps: float = 1e-5                # Swin blocks; the other norms use 1e-5 as well
    hidden_act: str = "gelu"
    enable_fusion: bool = False
    aff_block_r: int = 4                        # channel reduction inside the fusion gate
    drop_path_rate: float = 0.0                 # stochastic depth in training, rising linearly over the blocks

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.num_mel_bins

    @property
    def input_channels(self) -> int:
        return 4 if self.enable_fusion else 1

    def validate(self) -> None:
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ConfigError(f"HTSAT config: depths {self.depths} and num_heads {self.num_heads} must be "
                              "non-empty and of equal length")
        if self.spec_size % self.num_mel_bins or self.freq_ratio < 1:
            raise ConfigError(f"HTSAT config: spec_size {self.spec_size} must be a multiple of num_mel_bins "
                              f"{self.num_mel_bins}")
        grid = [self.spec_size // s for s in self.patch_stride]
        if any(g % 2 ** (len(self.depths) - 1) for g in grid):
            raise ConfigError(f"HTSAT config: the patch grid {grid} must halve evenly {len(self.depths) - 1} times")
        for i, h in enumerate(self.num_heads):
            if (self.embed_dim * 2 ** i) % h:
                raise ConfigError(f"HTSAT config: stage {i} width {self.embed_dim * 2 ** i} is not a multiple "
                                  f"of its {h} heads")
        if self.hidden_act not in ("gelu", "gelu_new", "relu"):
            raise ConfigError(f"HTSAT config: hidden_act {self.hidden_act!r} is not supported")

    @classmethod
    def from_hf(cls, data: dict) -> "HTSATConfig":
        """From the `audio_config` of a transformers ClapConfig."""
        def pair(v):
            return (v, v) if isinstance(v, int) else tuple(v)

        patch = pair(data.get("patch_size", 4))
        if patch[0] != patch[1]:
            raise ConfigError(f"HTSAT config: non-square patch_size {patch} is not supported")
        if data.get("enable_fusion") and data.get("fusion_type") not in (None, "aff_2d"):
            raise ConfigError(f"HTSAT config: fusion_type {data.get('fusion_type')!r} is not supported "
                              "(only 'aff_2d', LAION's fusion models)")
        if data.get("patch_embed_input_channels", 1) != 1:
            raise ConfigError("HTSAT config: patch_embed_input_channels must be 1")
        config = cls(
            num_mel_bins=data.get("num_mel_bins", 64), spec_size=data.get("spec_size", 256),
            patch_size=patch[0], patch_stride=pair(data.get("patch_stride", (4, 4))),
            window_size=data.get("window_size", 8), embed_dim=data.get("patch_embeds_hidden_size", 96),
            depths=tuple(data.get("depths", (2, 2, 6, 2))),
            num_heads=tuple(data.get("num_attention_heads", (4, 8, 16, 32))),
            mlp_ratio=float(data.get("mlp_ratio", 4.0)), qkv_bias=data.get("qkv_bias", True),
            patch_norm=data.get("enable_patch_layer_norm", True),
            layer_norm_eps=float(data.get("layer_norm_eps", 1e-5)), hidden_act=data.get("hidden_act", "gelu"),
            enable_fusion=bool(data.get("enable_fusion", False)), aff_block_r=data.get("aff_block_r", 4),
            drop_path_rate=float(data.get("drop_path_rate", 0.0)))
        hidden = data.get("hidden_size", config.num_features)
        if hidden != config.num_features:
            raise ConfigError(f"HTSAT config: hidden_size {hidden} differs from the last stage's width "
                              f"{config.num_features} (patch_embeds_hidden_size * 2^(stages-1))")
        config.validate()
        return config


@dataclass(frozen=True)
class ClapAudioFeatures:
    """How audio becomes log-mel features (transformers' ClapFeatureExtractor, LAION's defaults)."""

    sample_rate: int = 48000
    n_fft: int = 1024
    hop_length: int = 480
    f_min: float = 50.0
    f_max: float = 14000.0
    max_length_s: float = 10.0


@dataclass(frozen=True)
class ClapConfig:
    text: BertConfig = field(default_factory=BertConfig)
    audio: HTSATConfig = field(default_factory=HTSATConfig)
    features: ClapAudioFeatures = field(default_factory=ClapAudioFeatures)
    projection_dim: int = 512
    projection_act: str = "relu"
    logit_scale_init: float = 1 / 0.07

    def validate(self) -> None:
        self.text.validate()
        self.audio.validate()
        if self.projection_act not in ("relu", "gelu"):
            raise ConfigError(f"CLAP config: projection_act {self.projection_act!r} is not 'relu' or 'gelu'")

    @classmethod
    def from_hf(cls, data: dict) -> "ClapConfig":
        """From a transformers ClapModel `config.json` dict."""
        if data.get("model_type", "clap") != "clap":
            raise ConfigError(f"model_type {data.get('model_type')!r} is not a CLAP model")
        text = BertConfig.from_hf({"model_type": "clap_text_model", "layer_norm_eps": 1e-12,
                                   **data.get("text_config", {})})
        config = cls(text=text, audio=HTSATConfig.from_hf(data.get("audio_config", {})),
                     projection_dim=data.get("projection_dim", 512),
                     projection_act=data.get("projection_hidden_act", "relu"),
                     logit_scale_init=float(data.get("logit_scale_init_value", 1 / 0.07)))
        config.validate()
        return config


# --------------------------------------------------------------------------------------------
# Spectrogram -> image

def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D bicubic resampling with aligned corners, as torch's
    `interpolate(mode="bicubic", align_corners=True)`: Keys cubic with a = -0.75, edge samples
    repeated beyond the ends."""
    a = -0.75
    m = np.zeros((n_out, n_in), np.float64)
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    for i in range(n_out):
        src = np.float32(scale) * np.float32(i)     # torch computes the source index in float32
        i0 = int(np.floor(src))
        t = float(src) - i0
        near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1              # |x| <= 1
        far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a         # 1 < |x| < 2
        for off, w in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            m[i, min(max(i0 + off, 0), n_in - 1)] += w
    return m.astype(np.float32)


def spectrogram_to_image(x: jax.Array, config: HTSATConfig) -> jax.Array:
    """(batch, channels, frames, mels) -> (batch, spec_size, spec_size, channels) channels-last."""
    b, c, t, f = x.shape
    r = config.freq_ratio
    width, height = config.spec_size * r, config.spec_size // r
    if t > width or f > height:
        raise ValueError(f"HTSAT input has {t} frames x {f} mel bins; the model takes at most {width} x {height}")
    if t < width:
        x = jnp.einsum("oi,bcif->bcof", jnp.asarray(bicubic_matrix(t, width), x.dtype), x)
    if f < height:
        x = jnp.einsum("oi,bcti->bcto", jnp.asarray(bicubic_matrix(f, height), x.dtype), x)
    x = x.reshape(b, c, r, width // r, height)          # time segments
    x = x.transpose(0, 2, 4, 3, 1)                      # (b, segment, mel, time-in-segment, c)
    return x.reshape(b, r * height, width // r, c)


# --------------------------------------------------------------------------------------------
# Swin blocks

def _ln(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, param_dtype=jnp.float32, name=name)


def _dense(features: int, dtype: Dtype, name: str, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.truncated_normal(0.02), name=name)


def _act(name: str):
    return {"gelu": lambda x: jax.nn.gelu(x, approximate=False), "relu": jax.nn.relu,
            "gelu_new": lambda x: jax.nn.gelu(x, approximate=True)}[name]


def relative_position_index(window: int) -> np.ndarray:
    """(window^2, window^2) index into the (2w-1)^2 bias table for each query/key pair."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shift_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """(windows, window^2, window^2) additive mask: -100 between tokens of different regions of
    the cyclically shifted map, 0 within a region."""
    def regions(n):
        idx = np.arange(n)
        return (idx >= n - window).astype(np.int64) + (idx >= n - shift)

    labels = regions(height)[:, None] * 3 + regions(width)[None, :]
    labels = labels.reshape(height // window, window, width // window, window).transpose(0, 2, 1, 3)
    labels = labels.reshape(-1, window * window)
    return np.where(labels[:, None, :] != labels[:, :, None], -100.0, 0.0).astype(np.float32)


def window_partition(x: jax.Array, window: int) -> jax.Array:
    """(b, h, w, c) -> (b * windows, window^2, c), windows in row-major order per batch row."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_merge(x: jax.Array, window: int, b: int, h: int, w: int) -> jax.Array:
    c = x.shape[-1]
    x = x.reshape(b, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def _drop_path(module: nn.Module, x, rate: float, deterministic: bool):
    """Stochastic depth: zero a residual branch for whole samples with probability `rate`."""
    if deterministic or rate == 0.0:
        return x
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class SwinBlock(nn.Module):
    dim: int
    num_heads: int
    window: int
    shift: int
    config: HTSATConfig
    dtype: Dtype = jnp.float32
    drop_path: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        c = self.config
        b, h, w, ch = x.shape
        window, shift = self.window, self.shift
        if min(h, w) <= window:          # the map fits one window: no partition, no shift
            window, shift = min(h, w), 0   # (LAION builds such a block, and its table, for the smaller window)
        head_dim = self.dim // self.num_heads
        y = _ln(c.layer_norm_eps, self.dtype, "norm1")(x)
        pad_h, pad_w = (-h) % window, (-w) % window
        y = jnp.pad(y, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        hp, wp = h + pad_h, w + pad_w
        if shift:
            y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
        windows = window_partition(y, window)                       # (b * nw, n, ch)
        n = window * window
        table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                           ((2 * window - 1) ** 2, self.num_heads), jnp.float32)
        bias = table[relative_position_index(window).reshape(-1)].reshape(n, n, self.num_heads)
        bias = bias.transpose(2, 0, 1)[None]                         # (1, heads, n, n)
        if shift:
            mask = jnp.asarray(shift_mask(hp, wp, window, shift))[:, None]   # (nw, 1, n, n)
            bias = jnp.tile(bias + mask, (b, 1, 1, 1))
        qkv = [_dense(self.dim, self.dtype, name, c.qkv_bias)(windows).reshape(-1, n, self.num_heads, head_dim)
               for name in ("query", "key", "value")]
        out = jax.nn.dot_product_attention(*qkv, bias=bias.astype(qkv[0].dtype))
        out = _dense(self.dim, self.dtype, "proj")(out.reshape(-1, n, self.dim))
        out = window_merge(out, window, b, hp, wp)
        if shift:
            out = jnp.roll(out, (shift, shift), axis=(1, 2))
        x = x + _drop_path(self, out[:, :h, :w], self.drop_path, deterministic)
        y = _ln(c.layer_norm_eps, self.dtype, "norm2")(x)
        y = _act(c.hidden_act)(_dense(int(self.dim * c.mlp_ratio), self.dtype, "fc1")(y))
        return x + _drop_path(self, _dense(self.dim, self.dtype, "fc2")(y), self.drop_path, deterministic)


class PatchMerging(nn.Module):
    dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        # neighbours in the order (row, col) = (0,0), (1,0), (0,1), (1,1)
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        x = _ln(1e-5, self.dtype, "norm")(x)
        return _dense(2 * self.dim, self.dtype, "reduction", use_bias=False)(x)


# --------------------------------------------------------------------------------------------
# Patch embedding with attentional feature fusion

def _conv(features: int, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
          dtype: Dtype, name: str) -> nn.Conv:
    return nn.Conv(features, kernel, strides=stride, padding=[(p, p) for p in padding], dtype=dtype,
                   param_dtype=jnp.float32, name=name)


class _Gate(nn.Module):
    """conv1x1 -> BN -> ReLU -> conv1x1 -> BN (the local or, after pooling, the global branch)."""

    channels: int
    inner: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                       dtype=self.dtype, param_dtype=jnp.float32, name=name)
        x = _conv(self.inner, (1, 1), (1, 1), (0, 0), self.dtype, "conv1")(x)
        x = jax.nn.relu(bn("bn1")(x))
        return bn("bn2")(_conv(self.channels, (1, 1), (1, 1), (0, 0), self.dtype, "conv2")(x))


class AFF(nn.Module):
    """Attentional feature fusion: 2 x (x * g + residual * (1 - g)), g = sigmoid(local + global)."""

    channels: int
    r: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, residual, train: bool = False):
        inner = self.channels // self.r
        both = x + residual
        local = _Gate(self.channels, inner, self.dtype, name="local")(both, train)
        pooled = jnp.mean(both.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(both.dtype)
        glob = _Gate(self.channels, inner, self.dtype, name="global")(pooled, train)
        g = jax.nn.sigmoid(local + glob)
        return 2 * x * g + 2 * residual * (1 - g)


class PatchEmbed(nn.Module):
    config: HTSATConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, img, is_longer=None, train: bool = False):
        c = self.config
        p, s = c.patch_size, c.patch_stride
        pad = ((p - s[0]) // 2, (p - s[1]) // 2)
        x = _conv(c.embed_dim, (p, p), s, pad, self.dtype, "proj")(img[..., :1])
        if c.enable_fusion:
            b, hh, ww, _ = img.shape
            crops = img[..., 1:].transpose(0, 3, 1, 2).reshape(b * 3, hh, ww, 1)
            local = _conv(c.embed_dim, (p, 3 * p), (s[0], 3 * s[1]), pad, self.dtype, "mel_conv2d")(crops)
            _, lh, lw, e = local.shape
            local = local.reshape(b, 3, lh, lw, e).transpose(0, 2, 1, 3, 4).reshape(b, lh, 3 * lw, e)
            width = x.shape[2]
            local = local[:, :, :width] if 3 * lw >= width else jnp.pad(
                local, ((0, 0), (0, 0), (0, width - 3 * lw), (0, 0)))
            fused = AFF(c.embed_dim, c.aff_block_r, self.dtype, name="fusion")(x, local, train)
            if is_longer is None:
                is_longer = jnp.zeros((b,), bool)
            x = jnp.where(jnp.asarray(is_longer).reshape(b, 1, 1, 1), fused, x)
        if c.patch_norm:
            x = _ln(1e-5, self.dtype, "norm")(x)
        return x


class HTSAT(nn.Module):
    """(pooled (batch, num_features) float32, tokens (batch, h, w, num_features)) =
    HTSAT(features (batch, 1 or 4, frames, mels), is_longer (batch,) bool)."""

    config: HTSATConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, is_longer: jax.Array | None = None, train: bool = False):
        c = self.config
        if features.ndim != 4 or features.shape[1] != c.input_channels:
            raise ValueError(f"HTSAT takes features of shape (batch, {c.input_channels}, frames, "
                             f"{c.num_mel_bins}), got {features.shape}"
                             + (" (a fusion model takes 4 spectrograms per clip)" if c.enable_fusion else ""))
        if features.shape[-1] != c.num_mel_bins:
            raise ValueError(f"HTSAT takes {c.num_mel_bins} mel bins, got {features.shape[-1]}")
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=jnp.float32,
                         param_dtype=jnp.float32, name="bn0")(features.astype(jnp.float32))
        img = spectrogram_to_image(x, c).astype(self.dtype)
        x = PatchEmbed(c, self.dtype, name="patch_embed")(img, is_longer, train)
        rates = np.linspace(0.0, c.drop_path_rate, sum(c.depths)).tolist()
        for i, (depth, heads) in enumerate(zip(c.depths, c.num_heads)):
            dim = c.embed_dim * 2 ** i
            for j in range(depth):
                x = SwinBlock(dim, heads, c.window_size, 0 if j % 2 == 0 else c.window_size // 2, c, self.dtype,
                              rates[sum(c.depths[:i]) + j], name=f"stage_{i}_block_{j}")(x, not train)
            if i < len(c.depths) - 1:
                x = PatchMerging(dim, self.dtype, name=f"stage_{i}_merge")(x)
        x = _ln(1e-5, self.dtype, "norm")(x)
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return pooled, x


class Projection(nn.Module):
    """linear -> act -> linear, CLAP's projection head into the joint embedding space."""

    dim: int
    act: str = "relu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _dense(self.dim, self.dtype, "linear1")(x)
        x = jax.nn.relu(x) if self.act == "relu" else jax.nn.gelu(x, approximate=False)
        return _dense(self.dim, self.dtype, "linear2")(x).astype(jnp.float32)


def _normalize(x):
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ClapModel(nn.Module):
    """Both towers, both projection heads and the two log logit scales.

    Methods (use with `model.apply(variables, ..., method=...)`):
      - `text_hidden_states(ids, mask)` -> tuple of num_layers + 1 (batch, len, hidden) arrays
      - `get_text_embedding(ids, mask)` -> (batch, projection_dim), L2-normalised
      - `get_audio_embedding(features, is_longer)` -> (batch, projection_dim), L2-normalised
      - `__call__(ids, mask, features, is_longer)` -> (text_emb, audio_emb, logit_scale_a, logit_scale_t)
        with the scales as log values (exp() them for the logits; see `contrastive_loss`).
    """

    config: ClapConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        c = self.config
        self.text_model = BertEncoder(c.text, self.dtype)
        self.text_projection = Projection(c.projection_dim, c.projection_act, self.dtype)
        self.audio_model = HTSAT(c.audio, self.dtype)
        self.audio_projection = Projection(c.projection_dim, c.projection_act, self.dtype)
        init = nn.initializers.constant(math.log(c.logit_scale_init))
        self.logit_scale_a = self.param("logit_scale_a", init, (), jnp.float32)
        self.logit_scale_t = self.param("logit_scale_t", init, (), jnp.float32)

    def text_hidden_states(self, input_ids, attention_mask=None):
        return self.text_model(input_ids, attention_mask)[0]

    def get_text_embedding(self, input_ids, attention_mask=None, train: bool = False):
        _, pooled = self.text_model(input_ids, attention_mask, deterministic=not train)
        return _normalize(self.text_projection(pooled))

    def get_audio_embedding(self, features, is_longer=None, train: bool = False):
        pooled, _ = self.audio_model(features, is_longer, train)
        return _normalize(self.audio_projection(pooled))

    def __call__(self, input_ids, attention_mask, features, is_longer=None, train: bool = False):
        return (self.get_text_embedding(input_ids, attention_mask, train),
                self.get_audio_embedding(features, is_longer, train), self.logit_scale_a, self.logit_scale_t)


def contrastive_loss(audio_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """CLAP's symmetric InfoNCE loss for a batch of matching (audio, text) pairs.

    Row i of each embedding matrix is a pair (embeddings L2-normalised); `logit_scale` is the log
    temperature parameter (`logit_scale_a`, as LAION-CLAP's `ClipLoss` uses for both directions).
    Returns the mean of the audio->text and text->audio cross entropies.
    """
    if audio_emb.shape != text_emb.shape or audio_emb.ndim != 2:
        raise ValueError(f"audio and text embeddings must both be (batch, dim), got {audio_emb.shape} "
                         f"and {text_emb.shape}")
    logits = jnp.exp(logit_scale) * audio_emb.astype(jnp.float32) @ text_emb.astype(jnp.float32).T
    labels = jnp.arange(logits.shape[0])
    lsm_a = jax.nn.log_softmax(logits, axis=1)
    lsm_t = jax.nn.log_softmax(logits, axis=0)
    return -(jnp.mean(lsm_a[labels, labels]) + jnp.mean(lsm_t[labels, labels])) / 2


def variable_shapes(config: ClapConfig) -> dict[str, tuple[int, ...]]:
    """Flat `collection/a/b -> shape` of the model's variables (no compute)."""
    c = config
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    feats = jax.ShapeDtypeStruct((1, c.audio.input_channels, 8, c.audio.num_mel_bins), jnp.float32)
    tree = jax.eval_shape(lambda k, i, f: ClapModel(c).init(k, i, None, f), jax.random.key(0), ids, feats)
    return flat_shapes(tree)


# --------------------------------------------------------------------------------------------
# Audio -> log-mel features (NumPy), as transformers' ClapFeatureExtractor / LAION's data code

def mel_filters(features: ClapAudioFeatures, mel_bins: int, htk: bool) -> np.ndarray:
    """(n_fft // 2 + 1, mel_bins) triangular filters, float64. Fusion models were trained with HTK
    mel spacing and unnormalised filters (torchaudio's defaults); the others with Slaney spacing
    and Slaney area normalisation (librosa's defaults)."""
    import librosa

    fb = librosa.filters.mel(sr=features.sample_rate, n_fft=features.n_fft, n_mels=mel_bins, fmin=features.f_min,
                             fmax=features.f_max, htk=htk, norm=None if htk else "slaney", dtype=np.float64)
    return fb.T


def log_mel(waveform: np.ndarray, features: ClapAudioFeatures, filters: np.ndarray) -> np.ndarray:
    """(frames, mels) power log-mel spectrogram in dB: periodic Hann window of n_fft, centred
    frames (reflect padding), |rfft|^2, mel filters, 10 log10(max(x, 1e-10))."""
    n, hop = features.n_fft, features.hop_length
    x = np.pad(np.asarray(waveform, np.float64), n // 2, mode="reflect")
    frames = 1 + (len(x) - n) // hop
    idx = np.arange(n)[None, :] + hop * np.arange(frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    power = np.abs(np.fft.rfft(x[idx] * window, n=n, axis=-1)) ** 2
    mel = np.maximum(power @ filters, 1e-10)
    return 10.0 * np.log10(mel)


def _shrink_time(mel: np.ndarray, frames: int) -> np.ndarray:
    """Bilinear resize of (T, mels) to (frames, mels) along time, torch's align_corners=False."""
    t = mel.shape[0]
    # source positions in float32, as torch computes them (the fraction decides the blend)
    scale = np.float32(t / frames)
    src = np.maximum((np.arange(frames, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, t - 1)
    w = (src - i0).astype(np.float64)[:, None]
    return (1 - w) * mel[i0] + w * mel[i1]


def audio_features(waveforms: Sequence[np.ndarray] | np.ndarray, config: ClapConfig, seed: int = 0,
                   sample_rate: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features (batch, 1 or 4, frames, mels) float32, is_longer (batch,) bool) for mono clips.

    Clips shorter than `max_length_s` are repeated to fill the window and zero-padded
    ("repeatpad"). Longer clips: a fusion model gets [whole clip shrunk to the window, three
    random window-long crops from the front, middle and back thirds] with is_longer True; other
    models get one random window-long crop of the waveform. Crops are drawn from `seed`.
    Unlike transformers' extractor, no clip is marked `is_longer` at random when none is longer
    (LAION-CLAP's inference path does not fuse short clips either).
    """
    f = config.features
    if sample_rate is not None and sample_rate != f.sample_rate:
        raise ValueError(f"CLAP takes audio at {f.sample_rate} Hz, got {sample_rate} Hz; resample it first")
    if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
        waveforms = [waveforms]
    waveforms = [np.asarray(w, np.float64) for w in waveforms]
    if not waveforms:
        raise ValueError("no audio given")
    for i, w in enumerate(waveforms):
        if w.ndim != 1 or w.size == 0:
            raise ValueError(f"clip {i}: CLAP takes non-empty mono waveforms (1-D), got shape {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError(f"clip {i} contains NaN or infinite samples")
    fusion = config.audio.enable_fusion
    filters = mel_filters(f, config.audio.num_mel_bins, htk=fusion)
    max_len = int(round(f.max_length_s * f.sample_rate))
    rng = np.random.default_rng(seed)
    out, longer = [], []
    for w in waveforms:
        if len(w) > max_len and fusion:
            mel = log_mel(w, f, filters)
            chunk = max_len // f.hop_length + 1
            if mel.shape[0] == chunk:
                out.append(np.stack([mel] * 4))
                longer.append(False)
                continue
            thirds = np.array_split(np.arange(mel.shape[0] - chunk + 1), 3)
            starts = [rng.choice(r) if len(r) else 0 for r in thirds]
            out.append(np.stack([_shrink_time(mel, chunk)] + [mel[s:s + chunk] for s in starts]))
            longer.append(True)
            continue
        if len(w) > max_len:
            start = rng.integers(0, len(w) - max_len + 1)
            w = w[start:start + max_len]
            longer.append(True)
        else:
            if len(w) < max_len:
                w = np.tile(w, max_len // len(w))
                w = np.pad(w, (0, max_len - len(w)))
            longer.append(False)
        mel = log_mel(w, f, filters)
        out.append(np.stack([mel] * 4) if fusion else mel[None])
    return np.stack(out).astype(np.float32), np.asarray(longer, bool)
