"""Exact faster formulations of slow convolutions on XLA's CPU backend (`fast_convs`).

`fast_convs` (default True) computes two kinds of convolution by exact reformulations (the same
parameters, the same sums in another order) that XLA's CPU backend runs much faster: the
stride-2 transposed convolutions (the ResNet's 3x3, the U-Net's 4x4) in sub-pixel form
(`subpixel_conv_transpose`; their gradients were ~10x slower as the dilated convolutions
`nn.ConvTranspose` lowers to), and the generator's 7x7 stem and
head and, on large feature maps, the residual blocks' 3x3 convs through `valid_conv` (on CPU a
64 -> 3 conv ran at ~4 GFLOP/s, a 3x3 conv on 64 x 64 maps at ~60). False keeps plain `nn.Conv`
and `nn.ConvTranspose`.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def subpixel_padding(kernel_size: int, stride: int, lax_padding) -> int | None:
  """PyTorch's `padding` of a stride-2 transposed conv with this (lax, dilated-input) padding
  whose output is exactly twice its input (k - 2 padding - 2 + output_padding = 0, e.g. the
  ResNet's k=3, p=1, output_padding=1 and the U-Net's k=4, p=1), which `subpixel_conv_transpose`
  computes; None for any other conv."""
  if stride != 2 or len(set(lax_padding)) != 1:
    return None
  before, after = lax_padding[0]
  padding, output_padding = kernel_size - 1 - before, after - before
  if padding < 0 or output_padding < 0 or kernel_size - 2 * padding - 2 + output_padding != 0:
    return None
  return padding


def _subpixel_taps(kernel_size: int, padding: int) -> tuple[np.ndarray, int]:
  """[output phase, input tap] -> kernel index (kernel_size for a zero tap), and the first tap's
  offset. Along one axis, output 2m + r of the transposed conv sums x[m + d] * w[r + p - 2d]."""
  offsets = [
      d for d in range(-kernel_size, kernel_size + 1)
      if any(0 <= r + padding - 2 * d < kernel_size for r in (0, 1))
  ]
  taps = [[
      r + padding - 2 * d if 0 <= r + padding - 2 * d < kernel_size else kernel_size
      for d in offsets
  ]
          for r in (0, 1)]
  return np.array(taps), offsets[0]


def subpixel_conv_transpose(x: jax.Array, kernel: jax.Array, padding: int = 1) -> jax.Array:
  """The official stride-2 transposed conv (PyTorch `padding`, output twice the input: see
  `subpixel_padding`), without bias.

  `kernel` is (k, k, out, in), as `nn.ConvTranspose(transpose_kernel=True)` holds it. The four
  output phases (row and column parity) are one stride-1 convolution of the zero-padded input
  over the input taps that reach them, with 4 x out channels, interleaved by depth-to-space: the
  same products and sums as the transposed convolution, in another order.
  """
  kernel_size, out_channels, in_channels = kernel.shape[0], *kernel.shape[2:]
  table, first = _subpixel_taps(kernel_size, padding)
  num_taps = table.shape[1]
  taps = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
  # [phase_h, tap_h, phase_w, tap_w, out, in] -> (tap_h, tap_w, in, (phase_h, phase_w, out)).
  sub_kernel = taps[table[:, :, None, None], table[None, None, :, :]]
  sub_kernel = sub_kernel.transpose(1, 3, 5, 0, 2, 4).reshape(num_taps, num_taps, in_channels,
                                                              4 * out_channels)
  pad = (-first, num_taps - 1 + first)
  padded = jnp.pad(x, ((0, 0), pad, pad, (0, 0)))
  phases = jax.lax.conv_general_dilated(padded, sub_kernel, (1, 1), 'VALID',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  batch, height, width, _ = phases.shape
  phases = phases.reshape(batch, height, width, 2, 2, out_channels)
  return phases.transpose(0, 1, 3, 2, 4, 5).reshape(batch, 2 * height, 2 * width, out_channels)


def _plain_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _tap_sum_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """VALID stride-1 conv as one matmul to every tap's output channels, then a sum of the tap
  planes shifted into place: fast when the output has few channels (the generator's head)."""
  kh, kw, cin, cout = kernel.shape
  height, width = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  taps = jnp.einsum('nhwc,cto->nhwto', x, kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw, cout))
  return sum(taps[:, i:i + height, j:j + width, i * kw + j] for i in range(kh) for j in range(kw))


def _im2col_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """VALID stride-1 conv as patches (kh * kw * cin channels) times one matrix: cheap to
  differentiate when the input has few channels (the generator's stem)."""
  kh, kw, cin, cout = kernel.shape
  height, width = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  patches = jnp.concatenate(
      [x[:, i:i + height, j:j + width] for i in range(kh) for j in range(kw)], axis=-1)
  return patches @ kernel.reshape(kh * kw * cin, cout)


# Output pixels from which XLA's CPU convolutions fall behind a matmul formulation (measured:
# 3x3 256 -> 256 convs on 32 x 32 maps are as fast plain, on 64 x 64 maps 1.8x slower).
_LARGE_MAP_PIXELS = 48 * 48


def _conv_formulations(x_shape, kernel_shape) -> tuple[Callable, Callable]:
  """(forward, backward) formulations of a VALID stride-1 conv: all are the same sums in another
  order. XLA's CPU convolutions are slow to run with few output channels or on large maps, and
  slow to differentiate with few input channels or on large maps; other backends keep their own
  convolutions."""
  if jax.default_backend() != 'cpu':
    return _plain_conv, _plain_conv
  kh, kw, cin, cout = kernel_shape
  large_map = (x_shape[1] - kh + 1) * (x_shape[2] - kw + 1) >= _LARGE_MAP_PIXELS
  if 4 * cout <= cin:
    return _tap_sum_conv, _plain_conv
  if 4 * cin <= cout:
    return _plain_conv, _im2col_conv
  if large_map:
    return _tap_sum_conv, _im2col_conv
  return _plain_conv, _plain_conv


@jax.custom_vjp
def valid_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """VALID stride-1 NHWC conv, computed and differentiated by the fastest exact formulation."""
  return _conv_formulations(x.shape, kernel.shape)[0](x, kernel)


def _valid_conv_forward(x, kernel):
  return valid_conv(x, kernel), (x, kernel)


def _valid_conv_backward(residuals, output_grad):
  x, kernel = residuals
  return jax.vjp(_conv_formulations(x.shape, kernel.shape)[1], x, kernel)[1](output_grad)


valid_conv.defvjp(_valid_conv_forward, _valid_conv_backward)


class ReformulatedConv(nn.Module):
  """Drop-in for a VALID stride-1 `nn.Conv` (computed by `valid_conv`) or, with `transpose`, for
  an official stride-2 transposed conv whose output is twice its input (`nn.ConvTranspose` with
  transpose_kernel=True; computed by `subpixel_conv_transpose` with PyTorch's `padding`): the same
  parameters."""
  features: int
  kernel_size: int
  transpose: bool
  use_bias: bool
  dtype: Dtype
  kernel_init: Callable
  bias_init: Callable
  padding: int = 1  # PyTorch's padding of the transposed conv.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = (self.features, x.shape[-1]) if self.transpose else (x.shape[-1], self.features)
    kernel = self.param('kernel', self.kernel_init, (self.kernel_size, self.kernel_size, *channels),
                        jnp.float32)
    if self.transpose:
      y = subpixel_conv_transpose(x.astype(self.dtype), kernel.astype(self.dtype), self.padding)
    else:
      y = valid_conv(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
    return y
