"""Convolution and activation layers shared by the autoencoders (and later the U-Net).

Layout is channels-last, (batch, time, channels). Weight-normalised convolutions keep PyTorch's
parametrisation (`weight_v` direction and `weight_g` magnitude) as the trainable parameters, so
imported checkpoints need no folding and training behaves as in the reference.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

_CONV_DIMS = ("NWC", "WIO", "NWC")


def _normalise(v: jax.Array, g: jax.Array, norm_axes: tuple[int, ...]) -> jax.Array:
    # Computed in float32 whatever the compute dtype: the norm of a long kernel loses bits in bf16.
    v = v.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(v * v, axis=norm_axes, keepdims=True))
    return v * (g.astype(jnp.float32) / norm)


def _kernel_init(fan_in_axes: tuple[int, ...]):
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform",
                                            in_axis=fan_in_axes, out_axis=-1)


class Conv1d(nn.Module):
    """1-D convolution with PyTorch's padding semantics; optionally weight-normalised.

    `padding` is zeros on each side, or a (left, right) pair. Parameters: `kernel` (k, in, out)
    when plain, or `weight_v` (k, in, out) and `weight_g` (out,) when `weight_norm`; `bias` (out,)
    unless `use_bias=False`.
    """

    features: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    padding: int | tuple[int, int] = 0
    use_bias: bool = True
    weight_norm: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        shape = (self.kernel_size, in_features, self.features)
        if self.weight_norm:
            v = self.param("weight_v", _kernel_init((0, 1)), shape)
            g = self.param("weight_g", lambda _k, s: jnp.sqrt(jnp.sum(v * v, axis=(0, 1))), (self.features,))
            kernel = _normalise(v, g, (0, 1))
        else:
            kernel = self.param("kernel", _kernel_init((0, 1)), shape)
        pad = (self.padding, self.padding) if isinstance(self.padding, int) else tuple(self.padding)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel.astype(self.dtype),
            window_strides=(self.stride,), padding=[pad],
            rhs_dilation=(self.dilation,), dimension_numbers=_CONV_DIMS)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            y = y + bias.astype(self.dtype)
        return y


class ConvTranspose1d(nn.Module):
    """Transposed 1-D convolution matching `torch.nn.ConvTranspose1d`; optionally weight-normalised.

    Output length is (L - 1) * stride - 2 * padding + kernel_size. Kernels are stored (k, in, out):
    `kernel` when plain, or `weight_v` with, as in PyTorch's weight norm of a transposed conv, a
    `weight_g` magnitude per *input* channel.
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    weight_norm: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        shape = (self.kernel_size, in_features, self.features)
        if self.weight_norm:
            v = self.param("weight_v", _kernel_init((0, 2)), shape)
            g = self.param("weight_g", lambda _k, s: jnp.sqrt(jnp.sum(v * v, axis=(0, 2))), (in_features,))
            kernel = _normalise(v, g[None, :, None], (0, 2))
        else:
            kernel = self.param("kernel", _kernel_init((0, 2)), shape)
        # A transposed conv is a conv over the input dilated by `stride`, with the kernel flipped
        # in time and the padding mirrored.
        edge = self.kernel_size - 1 - self.padding
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), jnp.flip(kernel, 0).astype(self.dtype),
            window_strides=(1,), padding=[(edge, edge)], lhs_dilation=(self.stride,),
            dimension_numbers=_CONV_DIMS)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            y = y + bias.astype(self.dtype)
        return y


class Snake(nn.Module):
    """Snake activation x + sin(a x)^2 / a with a per-channel frequency `alpha` (DAC)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        alpha = self.param("alpha", nn.initializers.ones, (x.shape[-1],)).astype(x.dtype)
        return x + jnp.sin(alpha * x) ** 2 / (alpha + 1e-9)


class SnakeBeta(nn.Module):
    """SnakeBeta with log-scale parameters: x + sin(e^a x)^2 / (e^b + 1e-9) (Oobleck)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        alpha = jnp.exp(self.param("alpha", nn.initializers.zeros, (channels,))).astype(x.dtype)
        beta = jnp.exp(self.param("beta", nn.initializers.zeros, (channels,))).astype(x.dtype)
        return x + jnp.sin(alpha * x) ** 2 / (beta + 1e-9)


class ELU(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.elu(x)


ACTIVATIONS = {"snake": Snake, "snake_beta": SnakeBeta, "elu": ELU}
