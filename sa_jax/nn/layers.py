"""Convolution and activation layers shared by the autoencoders and the U-Net.

Layout is channels-last, (batch, time, channels). Weight-normalised convolutions keep PyTorch's
parametrisation (`weight_v` direction and `weight_g` magnitude) as the trainable parameters, so
imported checkpoints need no folding and training behaves as in the reference. With `cpu_matmul` (the
U-Net's), a program lowered for the CPU computes a convolution as one matrix product instead.
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


def conv1d_as_matmul(x: jax.Array, kernel: jax.Array, stride: int, padding: tuple[int, int],
                     dilation: int = 1) -> jax.Array:
    """`conv_general_dilated(x, kernel, (stride,), [padding], rhs_dilation=(dilation,))` in NWC/WIO as one
    matrix product: the k shifted (strided) views of the padded input side by side, (b, t_out, k * in),
    times the kernel as (k * in, out). The same sums as the convolution, in another order. Used on the CPU
    (`Conv1d.cpu_matmul`), where XLA's convolutions of short sequences were slow: the kernel gradient of a
    strided convolution ran as a generic dilated convolution (8 ms each for the U-Net's downsamplers) and
    every kernel gradient came out in a layout that was transposed again for each of its consumers;
    as a matrix product the kernel gradient is one more matrix product, in the kernel's own layout."""
    k, c_in, c_out = kernel.shape
    x = jnp.pad(x, ((0, 0), tuple(padding), (0, 0)))
    frames = (x.shape[1] - dilation * (k - 1) - 1) // stride + 1
    if frames < 1:
        raise ValueError(f"conv1d: {x.shape[1]} padded frames are fewer than the kernel's span "
                         f"{dilation * (k - 1) + 1}")
    views = [jax.lax.slice_in_dim(x, j * dilation, j * dilation + stride * (frames - 1) + 1, stride, axis=1)
             for j in range(k)]
    patches = views[0] if k == 1 else jnp.concatenate(views, axis=-1)
    return jnp.einsum("btc,co->bto", patches, kernel.reshape(k * c_in, c_out))


def conv_transpose1d_as_matmul(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """The transposed convolution of `ConvTranspose1d` (out[t stride + j - padding] += x[t] @ kernel[j]) as one
    matrix product, x (b, t, in) times the kernel as (in, k * out), followed by an overlap-add of the k
    output frames of each input frame: the same sums as XLA's input-dilated convolution, which XLA:CPU
    ran as a generic (slow) convolution."""
    k, c_in, c_out = kernel.shape
    span = -(-k // stride)                       # input frames that overlap one output block of `stride` frames
    kernel = jnp.pad(kernel, ((0, span * stride - k), (0, 0), (0, 0)))   # zero taps: frames past the end
    b, t, _ = x.shape
    z = jnp.einsum("btc,cjo->btjo", x, kernel.transpose(1, 0, 2)).reshape(b, t, span, stride, c_out)
    # output block u (frames u stride .. u stride + stride - 1) sums z[:, u - q, q] over the taps' blocks q
    blocks = sum(jnp.pad(z[:, :, q], ((0, 0), (q, span - 1 - q), (0, 0), (0, 0))) for q in range(span))
    y = blocks.reshape(b, (t + span - 1) * stride, c_out)
    return y[:, padding:(t - 1) * stride + k - padding]


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
    cpu_matmul: bool = False   # on the CPU, compute as one matrix product (conv1d_as_matmul); same parameters

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

        def xla_conv(x, kernel):
            return jax.lax.conv_general_dilated(x, kernel, window_strides=(self.stride,), padding=[pad],
                                                rhs_dilation=(self.dilation,), dimension_numbers=_CONV_DIMS)

        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if self.cpu_matmul:
            y = jax.lax.platform_dependent(
                x, kernel, cpu=lambda x, k: conv1d_as_matmul(x, k, self.stride, pad, self.dilation), default=xla_conv)
        else:
            y = xla_conv(x, kernel)
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
    cpu_matmul: bool = False   # on the CPU, compute as one matrix product (conv_transpose1d_as_matmul)

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

        def xla_conv(x, kernel):
            # A transposed conv is a conv over the input dilated by `stride`, with the kernel flipped
            # in time and the padding mirrored.
            edge = self.kernel_size - 1 - self.padding
            return jax.lax.conv_general_dilated(x, jnp.flip(kernel, 0), window_strides=(1,), padding=[(edge, edge)],
                                                lhs_dilation=(self.stride,), dimension_numbers=_CONV_DIMS)

        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if self.cpu_matmul:
            y = jax.lax.platform_dependent(
                x, kernel, cpu=lambda x, k: conv_transpose1d_as_matmul(x, k, self.stride, self.padding),
                default=xla_conv)
        else:
            y = xla_conv(x, kernel)
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
