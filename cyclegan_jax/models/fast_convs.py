"""Exact faster formulations of slow convolutions on XLA's CPU backend (`fast_convs`).

`fast_convs` (default True) computes several kinds of convolution by exact reformulations (the same
parameters, the same sums in another order) that XLA's CPU backend runs much faster: the
stride-2 transposed convolutions (the ResNet's 3x3, the U-Net's 4x4) in sub-pixel form
(`subpixel_conv_transpose`; their gradients were ~10x slower as the dilated convolutions
`nn.ConvTranspose` lowers to; on large maps differentiated without the sub-pixel form's zero taps,
`conv_transpose_2x`), and the generator's 7x7 stem and
head and, on large feature maps, the residual blocks' 3x3 convs through `valid_conv` (on CPU a
64 -> 3 conv ran at ~4 GFLOP/s, a 3x3 conv on 64 x 64 maps at ~60), and the input gradients of
stride-1 convs whose output is no larger than their kernel (a PatchGAN's last convs on small
images, their zero padding applied first: ~7x faster as a patch matmul), and the kernel gradients
of stride-2 convs with mid-sized maps (`stride_2_conv`: a matmul of the input's strided taps, ~2x
faster for the 128 px ResNet's down convs) and, on large maps, their input gradients image by
image or as the sub-pixel transposed conv. In float32 those 3x3 convs
use Winograd's F(4x4, 3x3) (`winograd_conv`: 4x fewer multiplies, exact in exact arithmetic, float
errors ~10x a direct sum's; its tile transforms are weighted sums of strided slices, which XLA
fuses). The biases of these convs on large maps take their gradient as matrix-vector products
(`add_bias`), as instance norm takes its statistics. False keeps plain `nn.Conv` and
`nn.ConvTranspose`.
"""

from fractions import Fraction
import functools
import math
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


def _conv_transpose_by_products(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  """`subpixel_conv_transpose` without its zero taps: one matmul of x with the kernel slices of
  every (input offset, output phase) pair that has one, side by side (9 of the sub-pixel form's 16
  for a 3x3 kernel, 16 of 36 for a 4x4 one), then each phase as the sum of its pairs' products
  shifted by their offsets. Its gradients are one matmul each too: the shifted output gradient
  times the kernel slices (input) and times x (kernel)."""
  kernel_size, out_channels, in_channels = kernel.shape[0], *kernel.shape[2:]
  table, first = _subpixel_taps(kernel_size, padding)
  num_taps = table.shape[1]
  pairs = [((d_h, d_w), (r_h, r_w))
           for d_h in range(num_taps)
           for d_w in range(num_taps)
           for r_h in (0, 1)
           for r_w in (0, 1)
           if table[r_h, d_h] < kernel_size and table[r_w, d_w] < kernel_size]
  slices = jnp.concatenate([kernel[table[r_h, d_h], table[r_w, d_w]].T
                            for (d_h, d_w), (r_h, r_w) in pairs], axis=1)
  batch, height, width, _ = x.shape
  products = (x.reshape(-1, in_channels) @ slices).reshape(batch, height, width, len(pairs),
                                                            out_channels)
  pad = (-first, num_taps - 1 + first)
  products = jnp.pad(products, ((0, 0), pad, pad, (0, 0), (0, 0)))
  phases = {}
  for k, ((d_h, d_w), phase) in enumerate(pairs):
    term = products[:, d_h:d_h + height, d_w:d_w + width, k]
    phases[phase] = phases[phase] + term if phase in phases else term
  # [batch, height, phase_h, width, phase_w, out]: the output after a reshape.
  y = jnp.stack([jnp.stack([phases[r_h, 0], phases[r_h, 1]], axis=3) for r_h in (0, 1)], axis=2)
  return y.reshape(batch, 2 * height, 2 * width, out_channels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_transpose_2x(x: jax.Array, kernel: jax.Array, padding: int = 1) -> jax.Array:
  """`subpixel_conv_transpose`, differentiated as `_conv_transpose_by_products` (the same sums):
  on CPU XLA's gradients of the sub-pixel conv, over its zero taps too, ran 1.4-1.5x slower than
  the products' matmuls for the 256 px ResNet's up convs (batch 3), while its forward conv is as
  fast or faster than theirs."""
  return subpixel_conv_transpose(x, kernel, padding)


def _conv_transpose_2x_forward(x, kernel, padding):
  return subpixel_conv_transpose(x, kernel, padding), (x, kernel)


def _conv_transpose_2x_backward(padding, residuals, output_grad):
  x, kernel, output_grad = jax.lax.optimization_barrier((*residuals, output_grad))
  return jax.vjp(lambda x, kernel: _conv_transpose_by_products(x, kernel, padding), x,
                 kernel)[1](output_grad)


conv_transpose_2x.defvjp(_conv_transpose_2x_forward, _conv_transpose_2x_backward)

# Fewest elements of one image's output for `conv_transpose_2x` (the 128 px ResNet's up convs have
# 2^19 and 2^20). Smaller maps keep XLA's gradients, and with them the offline default's results
# bitwise.
_CONV_TRANSPOSE_PRODUCTS_ELEMENTS = 2**17


def conv_transpose_by_products(y_shape) -> bool:
  """Whether `ReformulatedConv` differentiates its transposed conv by `conv_transpose_2x` (CPU
  only)."""
  return (jax.default_backend() == 'cpu' and
          math.prod(y_shape[1:]) >= _CONV_TRANSPOSE_PRODUCTS_ELEMENTS)


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


def _kernel_grad_by_output_patches(x, output_grad, kernel_hw):
  """The kernel gradient of a VALID stride-1 conv with few output channels, as one matmul of the
  output gradient's patches (kh * kw * out rows, one column per input pixel) with x. Its patches
  are stacked rows first, then columns (one stack of kh * kw shifted planes ran 3x slower)."""
  kh, kw = kernel_hw
  _, height, width, in_channels = x.shape
  planes = jnp.pad(output_grad.transpose(3, 0, 1, 2),
                   ((0, 0), (0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1)))
  rows = jnp.stack([planes[:, :, kh - 1 - i:kh - 1 - i + height] for i in range(kh)])
  patches = jnp.stack([rows[..., kw - 1 - j:kw - 1 - j + width] for j in range(kw)], axis=1)
  grad = patches.reshape(kh * kw * output_grad.shape[-1], -1) @ x.reshape(-1, in_channels)
  return grad.reshape(kh, kw, -1, in_channels).transpose(0, 1, 3, 2)


@jax.custom_vjp
def _few_channels_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A plain conv whose gradients avoid XLA's CPU convolutions where these are slow: with few
  output channels (the generator's head), the kernel gradient by the output gradient's patches;
  with few input channels (the stem), the input gradient, itself a conv with few output
  channels, by tap sums (7x7 at 256 px: 40 -> 19 ms and 39 -> 23 ms)."""
  return _plain_conv(x, kernel)


def _few_channels_conv_forward(x, kernel):
  return _plain_conv(x, kernel), (x, kernel)


def _few_channels_conv_backward(residuals, output_grad):
  x, kernel = residuals
  kh, kw, in_channels, out_channels = kernel.shape
  # XLA drops whichever of these two the formulations below replace.
  x_grad, kernel_grad = jax.vjp(_plain_conv, x, kernel)[1](output_grad)
  if 4 * in_channels <= out_channels:
    x_grad = _tap_sum_conv(
        jnp.pad(output_grad, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0))),
        kernel[::-1, ::-1].transpose(0, 1, 3, 2))
  if 4 * out_channels <= in_channels:
    kernel_grad = _kernel_grad_by_output_patches(x, output_grad, (kh, kw))
  return x_grad, kernel_grad


_few_channels_conv.defvjp(_few_channels_conv_forward, _few_channels_conv_backward)


@functools.cache
def _winograd_transforms(points: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(A^T, G, B^T) of the Winograd / Toom-Cook algorithm F(m, 3) for the given m + 1 finite
  interpolation points (and infinity): for a 3-tap correlation y[i] = sum_k d[i + k] g[k] of an
  input tile d of m + 2 values, y = A^T ((G g) * (B^T d)), an identity of polynomials.

  With V_k the (m + 2) x k matrix whose rows are (1, p, ..., p^(k-1)) for each point p and
  (0, ..., 0, 1) for infinity, the linear convolution s = h * g of an m-tap h and g is
  V_(m+2)^-1 ((V_m h) * (V_3 g)); the correlation is its transpose in h:
  A^T = V_m^T, G = V_3, B^T = V_(m+2)^-T. Each row of B^T is scaled to small integers and G's row
  by the inverse (exact rational arithmetic, so the identity holds exactly before rounding).
  """
  size = len(points) + 1

  def vandermonde(columns):
    rows = [[Fraction(p)**i for i in range(columns)] for p in points]
    return rows + [[Fraction(0)] * (columns - 1) + [Fraction(1)]]

  # Gauss-Jordan inverse of V_(m+2) in rationals.
  rows = [
      row + [Fraction(int(i == j)) for j in range(size)] for i, row in enumerate(vandermonde(size))
  ]
  for column in range(size):
    pivot = next(r for r in range(column, size) if rows[r][column] != 0)
    rows[column], rows[pivot] = rows[pivot], rows[column]
    rows[column] = [v / rows[column][column] for v in rows[column]]
    for r in range(size):
      if r != column and rows[r][column] != 0:
        rows[r] = [v - rows[r][column] * w for v, w in zip(rows[r], rows[column])]
  input_transform = [list(column) for column in zip(*[row[size:] for row in rows])]
  kernel_transform = vandermonde(3)
  for j, row in enumerate(input_transform):
    scale = Fraction(math.lcm(*[v.denominator for v in row]), math.gcd(*[v.numerator for v in row]))
    input_transform[j] = [v * scale for v in row]
    kernel_transform[j] = [v / scale for v in kernel_transform[j]]
  output_transform = [list(column) for column in zip(*vandermonde(size - 2))]
  return tuple(
      np.array(matrix, dtype=np.float64)
      for matrix in (output_transform, kernel_transform, input_transform))


# Output tile side -> interpolation points. For F(4, 3), 1/2 and -2 instead of the common 2 and -2
# give 2.5x smaller float32 errors at the same speed (measured on 256 -> 256 convs, 64 x 64 maps).
WINOGRAD_POINTS = {2: (0, 1, -1), 4: (0, 1, -1, 0.5, -2)}


def _weighted_sum(weights, terms):
  """sum_k weights[k] * terms[k], skipping zero weights and multiplying by none of +-1."""
  parts = [
      term if weight == 1 else -term if weight == -1 else float(weight) * term
      for weight, term in zip(weights, terms)
      if weight != 0
  ]
  return functools.reduce(jnp.add, parts)


def _tile_transform(x, matrix, tile, tiles, axis, stack_axis):
  """`matrix` (rows x taps) applied to `tiles` windows of `taps` values along `axis`, starting at
  multiples of `tile`: x's shape with `tiles` entries along `axis` and `rows` new entries at
  `stack_axis`. Weighted sums of strided slices, which XLA fuses into one pass over x: as a
  stack of the slices times the matrix (a dot), XLA wrote the stack, then its transpose for the
  dot (the 128 px step 1.03x slower; it compiles faster, 20 s against 24)."""
  starts = [
      jax.lax.slice_in_dim(x, k, k + (tiles - 1) * tile + 1, tile, axis)
      for k in range(matrix.shape[1])
  ]
  return jnp.stack([_weighted_sum(row, starts) for row in matrix], axis=stack_axis)


def _transform_2d(x, matrix, tile, tiles_h, tiles_w):
  """`matrix` on both sides of every window of an NHWC map: [rows^2, N * tiles_h * tiles_w, C],
  the row transform's index first (stacked in place: no transpose of the blocks)."""
  rows = _tile_transform(x, matrix, tile, tiles_h, 1, 0)
  blocks = _tile_transform(rows, matrix, tile, tiles_w, 3, 1)
  return blocks.reshape(matrix.shape[0]**2, -1, x.shape[-1])


def _tile_transform_transpose(y, matrix, tile, tiles, axis, stack_axis):
  """The transpose of `_tile_transform` (`axis` counted without the stacked one): each tap's
  weighted sum of the rows, added at its windows' offsets; windows overlap by taps - tile <= tile.
  As JAX's transpose of the slices (pads and chained adds), XLA recomputed the chain for every tap
  (the 128 px step 1.06x slower than this)."""
  rows, taps = matrix.shape
  terms = [jax.lax.index_in_dim(y, r, stack_axis, keepdims=False) for r in range(rows)]
  parts = [_weighted_sum(matrix[:, k], terms) for k in range(taps)]
  shape = list(parts[0].shape)
  shape[axis] = tiles * tile

  def interleaved(group):
    return jnp.stack(group, axis=axis + 1).reshape(shape)

  def padded(value, low, high):
    padding = [(low, high, 0) if a == axis else (0, 0, 0) for a in range(value.ndim)]
    return jax.lax.pad(value, jnp.zeros((), value.dtype), padding)

  overlap = taps - tile
  first = padded(interleaved(parts[:tile]), 0, overlap)
  rest = interleaved(parts[tile:] + [jnp.zeros_like(parts[0])] * (tile - overlap))
  return first + padded(rest, tile, overlap - tile)


def _transform_2d_transpose(blocks, matrix, tile, tiles_h, tiles_w):
  """The transpose of `_transform_2d`: [rows^2, N * tiles_h * tiles_w, C] blocks to the NHWC map
  of (tiles - 1) * tile + taps rows and columns whose windows they came from."""
  size = matrix.shape[0]
  blocks = blocks.reshape(size, size, -1, tiles_h, tiles_w, blocks.shape[-1])
  rows = _tile_transform_transpose(blocks, matrix, tile, tiles_w, 3, 1)
  return _tile_transform_transpose(rows, matrix, tile, tiles_h, 1, 0)


def _transform_kernel(kernel, matrix):
  """matrix @ kernel @ matrix^T over the two leading (spatial) axes: [rows^2, in, out]. One
  matmul of the Kronecker product matrix (x) matrix with the kernel's taps, which writes the
  result in its final layout (the two-sided product as two tensordots moved the kernel between
  layouts: 4-5x slower on CPU for 3x3 256 -> 256 kernels)."""
  taps = kernel.reshape(kernel.shape[0] * kernel.shape[1], -1)
  return (jnp.asarray(np.kron(matrix, matrix), kernel.dtype) @ taps).reshape(-1, *kernel.shape[2:])


def _pad_to_tiles(x, tile, tiles_h, tiles_w, overlap):
  return jnp.pad(x, ((0, 0), (0, tiles_h * tile + overlap - x.shape[1]),
                     (0, tiles_w * tile + overlap - x.shape[2]), (0, 0)))


def _winograd(x, kernel, transforms):
  """The Winograd conv of x with `kernel`."""
  output_transform, kernel_transform, input_transform = transforms
  tile, size = output_transform.shape
  batch, height, width, _ = x.shape
  out_channels = kernel.shape[3]
  out_height, out_width = height - 2, width - 2
  tiles_h, tiles_w = -(-out_height // tile), -(-out_width // tile)
  blocks = _transform_2d(_pad_to_tiles(x, tile, tiles_h, tiles_w, 2), input_transform, tile,
                         tiles_h, tiles_w)
  products = jnp.matmul(blocks, _transform_kernel(kernel, kernel_transform))
  products = products.reshape(size, size, batch, tiles_h, tiles_w, out_channels)
  # A on both sides of each block, as weighted sums of the products stacked into [batch, tiles_h,
  # tile row, tiles_w, tile column, out], the output after a reshape: XLA fuses them into one
  # pass (as an einsum, two dots and a transpose: the 128 px step 1.05x slower).
  columns = jnp.stack(
      [_weighted_sum(row, [products[:, b] for b in range(size)]) for row in output_transform],
      axis=4)
  y = jnp.stack([_weighted_sum(row, [columns[a] for a in range(size)]) for row in output_transform],
                axis=2)
  y = y.reshape(batch, tiles_h * tile, tiles_w * tile, out_channels)
  return y[:, :out_height, :out_width]


def _winograd_gradients(transforms, x, kernel, output_grad):
  """(input, kernel) gradients of the Winograd conv, recomputing the transforms from x: the
  forward pass's steps transposed, from the output gradient's blocks A dy A^T."""
  output_transform, kernel_transform, input_transform = transforms
  tile, size = output_transform.shape
  _, height, width, _ = x.shape
  _, out_height, out_width, _ = output_grad.shape
  tiles_h, tiles_w = -(-out_height // tile), -(-out_width // tile)
  products_grad = _transform_2d(_pad_to_tiles(output_grad, tile, tiles_h, tiles_w, 0),
                                output_transform.T, tile, tiles_h, tiles_w)
  transformed_kernel_grad = jnp.einsum(
      'kpc,kpo->kco',
      _transform_2d(_pad_to_tiles(x, tile, tiles_h, tiles_w, 2), input_transform, tile, tiles_h,
                    tiles_w), products_grad)
  kernel_grad = _transform_kernel(transformed_kernel_grad.reshape(size, size, *kernel.shape[2:]),
                                  kernel_transform.T).reshape(kernel.shape)
  # The kernel swapped before its transform (2.4 MB for 256 -> 256), not the transformed one read
  # transposed by the matmul: the same products, and a transposed operand made the batched matmul
  # 1.4x slower on CPU.
  blocks_grad = jnp.matmul(products_grad,
                           _transform_kernel(kernel.transpose(0, 1, 3, 2), kernel_transform))
  x_grad = _transform_2d_transpose(blocks_grad, input_transform, tile, tiles_h, tiles_w)
  return x_grad[:, :height, :width], kernel_grad


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def winograd_conv(x: jax.Array, kernel: jax.Array, tile: int = 4) -> jax.Array:
  """VALID stride-1 3x3 NHWC conv by Winograd's F(tile x tile, 3 x 3): the output in tile x tile
  blocks, each from a (tile + 2)^2 input block, by one (tile + 2)^2-way batched matmul of the
  transformed input blocks and kernel: 9 (tile / (tile + 2))^2 times fewer multiplies (4 for
  tile 4). Maps that are not a multiple of the tile are padded with zeros and cropped.

  Its gradients are Winograd too, recomputing the transforms from (x, kernel), both from the
  output gradient's blocks A dy A^T: the kernel gradient, a 3x3 correlation of x with the output
  gradient summed over the map, is G^T (sum over blocks of (B^T x B) (A dy A^T)) G, the blocks'
  sum in one batched matmul; the input gradient is the forward pass transposed, the blocks times
  the transformed kernel transposed, then B (.) B^T added back at the overlapping input windows
  (as the same conv of the output gradient padded by 2 with the flipped, transposed kernel, it
  took 27% more products for 32 x 32 maps and its own transforms: the 128 px and 256 px steps
  0.97x; the input gradient's largest error against float64 on a 256 -> 256 conv on 64 x 64 maps
  went from 4.7e-6 to 3.2e-6 of its largest value, XLA's plain conv's being 4.3e-7).
  """
  return _winograd(x, kernel, _winograd_transforms(WINOGRAD_POINTS[tile]))


def _winograd_conv_forward(x, kernel, tile):
  return winograd_conv(x, kernel, tile), (x, kernel)


def _winograd_conv_backward(tile, residuals, output_grad):
  return _winograd_gradients(_winograd_transforms(WINOGRAD_POINTS[tile]), *residuals, output_grad)


winograd_conv.defvjp(_winograd_conv_forward, _winograd_conv_backward)


# Output pixels from which XLA's CPU convolutions fall behind a matmul formulation (measured:
# 3x3 256 -> 256 convs on 32 x 32 maps are as fast plain, on 64 x 64 maps 1.8x slower).
_LARGE_MAP_PIXELS = 48 * 48
# Fewest input and output channels for Winograd: with fewer, the batched matmul no longer
# dominates the transforms.
_WINOGRAD_MIN_CHANNELS = 64
# Fewest output pixels for Winograd (measured: the 128 px resnet_6blocks train step, whose
# residual blocks work on 32 x 32 maps, is 18% faster with them in Winograd).
_WINOGRAD_MIN_PIXELS = 32 * 32


def _conv_formulations(x_shape, kernel_shape, dtype=jnp.float32) -> tuple[Callable, Callable]:
  """(forward, backward) formulations of a VALID stride-1 conv: all are the same sums in another
  order. XLA's CPU convolutions are slow to run with few output channels or on large maps, and
  slow to differentiate on large maps or with outputs no larger than the kernel; other backends
  keep their own convolutions. float32 3x3 convs with many channels on large maps use Winograd's
  F(4x4, 3x3), forward and backward; it rounds differently (errors ~10x those of a direct sum,
  still ~1e-6 of the sums of |x| |w|), so not in lower precisions."""
  if jax.default_backend() != 'cpu':
    return _plain_conv, _plain_conv
  kh, kw, cin, cout = kernel_shape
  out_pixels = (x_shape[1] - kh + 1) * (x_shape[2] - kw + 1)
  large_map = out_pixels >= _LARGE_MAP_PIXELS
  if 4 * cout <= cin:
    return _tap_sum_conv, _few_channels_conv
  if x_shape[1] - kh < kh or x_shape[2] - kw < kw:
    # An output no larger than the kernel (a PatchGAN's last layers on small images): XLA
    # computes the input gradient with the kernel and the output gradient's roles swapped, ~7x
    # slower than the patches' matmul (measured: 4x4 64 -> 128 on 3x3 outputs, batch 4).
    return _plain_conv, _im2col_conv
  if 4 * cin <= cout:
    # Few input channels (the generator's stem): XLA's own kernel gradient beats the patches'
    # (3 -> 64, 7x7, 256 px: 36 ms against 84), and its convs need no reformulation on large maps.
    return _plain_conv, _few_channels_conv
  if (out_pixels >= _WINOGRAD_MIN_PIXELS and (kh, kw) == (3, 3) and
      min(cin, cout) >= _WINOGRAD_MIN_CHANNELS and jnp.dtype(dtype) == jnp.float32):
    return winograd_conv, winograd_conv
  if large_map:
    return _tap_sum_conv, _im2col_conv
  return _plain_conv, _plain_conv


def reformulates(x_shape, kernel_shape, dtype=jnp.float32) -> bool:
  """Whether `valid_conv` computes or differentiates this conv other than as a plain conv."""
  return _conv_formulations(x_shape, kernel_shape, dtype) != (_plain_conv, _plain_conv)


@jax.custom_vjp
def valid_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """VALID stride-1 NHWC conv, computed and differentiated by the fastest exact formulation."""
  return _conv_formulations(x.shape, kernel.shape, x.dtype)[0](x, kernel)


def _valid_conv_forward(x, kernel):
  return valid_conv(x, kernel), (x, kernel)


def _valid_conv_backward(residuals, output_grad):
  x, kernel = residuals
  # The backward formulation's intermediates (patches, Winograd blocks) depend on x alone: the
  # barrier keeps XLA from computing them early or sharing them with the forward pass, which
  # would keep them alive from the forward pass to the backward one.
  x, kernel, output_grad = jax.lax.optimization_barrier((x, kernel, output_grad))
  return jax.vjp(_conv_formulations(x.shape, kernel.shape, x.dtype)[1], x, kernel)[1](output_grad)


valid_conv.defvjp(_valid_conv_forward, _valid_conv_backward)


def _stride_2_plain_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (2, 2), ((padding, padding), (padding, padding)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _stride_2_kernel_grad_by_taps(x, output_grad, kernel_hw, padding):
  """The kernel gradient of a stride-2 conv as one matmul per image: the input's kh * kw strided
  taps side by side (a [pixels, kh * kw * in] matrix) times the output gradient. Per image, since
  one matmul over a batch of two 128 px maps ran slower than XLA's own gradient."""
  kh, kw = kernel_hw
  _, out_height, out_width, out_channels = output_grad.shape
  in_channels = x.shape[-1]
  grad = 0
  for image, image_grad in zip(x, output_grad):
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    taps = jnp.concatenate([
        jax.lax.slice(padded, (i, j, 0),
                      (i + 2 * out_height - 1, j + 2 * out_width - 1, in_channels), (2, 2, 1))
        for i in range(kh)
        for j in range(kw)
    ], axis=-1)
    grad += taps.reshape(-1, kh * kw * in_channels).T @ image_grad.reshape(-1, out_channels)
  return grad.reshape(kh, kw, in_channels, out_channels)


def _stride_2_input_grad(x_shape, kernel, output_grad, padding):
  """The input gradient of a stride-2 conv. On large maps image by image: XLA's CPU gradient of a
  batch ran 1.5-4x slower than its gradients of the images one at a time (the 256 px ResNet's
  down convs and the PatchGAN's second conv at batch 2 and 3); on the largest maps, as the
  official transposed conv with the same kernel (its adjoint, in sub-pixel form) where that gives
  x's shape: 35 -> 21 ms an image for the 256 px ResNet's first down conv."""
  x_elements = math.prod(x_shape[1:])
  kernel_size = kernel.shape[0]
  if x_elements >= _STRIDE_2_SUBPIXEL_GRAD_ELEMENTS and kernel_size - 2 * padding - 2 in (
      0, -1) and x_shape[1:3] == (2 * output_grad.shape[1], 2 * output_grad.shape[2]):
    grad_of_image = lambda image_grad: subpixel_conv_transpose(image_grad, kernel, padding)
  else:
    grad_of_image = lambda image_grad: jax.linear_transpose(
        lambda x: _stride_2_plain_conv(x, kernel, padding),
        jax.ShapeDtypeStruct((image_grad.shape[0], *x_shape[1:]), image_grad.dtype))(image_grad)[0]
  if x_elements < _STRIDE_2_PER_IMAGE_GRAD_ELEMENTS:
    return grad_of_image(output_grad)
  return jnp.concatenate(
      [grad_of_image(output_grad[i:i + 1]) for i in range(output_grad.shape[0])])


# Elements of one image's input from which a stride-2 conv's input gradient is computed image by
# image (128 x 128 x 64 and larger: the 256 px ResNet's down convs and PatchGAN's second conv gain,
# the 128 px ResNet's first down conv neither gains nor loses; batches of 64 x 64 maps are faster
# together) and as the sub-pixel transposed conv (the 256 px ResNet's first down conv).
_STRIDE_2_PER_IMAGE_GRAD_ELEMENTS = 2**20
_STRIDE_2_SUBPIXEL_GRAD_ELEMENTS = 2**22


def _stride_2_kernel_grad_by_xla(x, output_grad, kernel_shape, padding):
  return jax.linear_transpose(lambda kernel: _stride_2_plain_conv(x, kernel, padding),
                              jax.ShapeDtypeStruct(kernel_shape, x.dtype))(output_grad)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def stride_2_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  """A stride-2 NHWC conv with `padding` zeros on each side, computed by XLA; its input gradient
  by `_stride_2_input_grad`, its kernel gradient, for mid-sized maps, as one matmul of the input's
  strided taps per image (`_stride_2_kernel_grad_by_taps`)."""
  return _stride_2_plain_conv(x, kernel, padding)


def _stride_2_conv_forward(x, kernel, padding):
  return _stride_2_plain_conv(x, kernel, padding), (x, kernel)


def _stride_2_conv_backward(padding, residuals, output_grad):
  x, kernel = residuals
  # As in valid_conv: the taps are built in the backward pass, not kept from the forward one.
  x, kernel, output_grad = jax.lax.optimization_barrier((x, kernel, output_grad))
  x_grad = _stride_2_input_grad(x.shape, kernel, output_grad, padding)
  kernel_grad = (_stride_2_kernel_grad_by_taps(x, output_grad, kernel.shape[:2], padding)
                 if _taps_in_range(x.shape, kernel.shape, padding) else
                 _stride_2_kernel_grad_by_xla(x, output_grad, kernel.shape, padding))
  return x_grad, kernel_grad


stride_2_conv.defvjp(_stride_2_conv_forward, _stride_2_conv_backward)

# Bytes of one image's taps between which a stride-2 conv's kernel gradient is faster as their
# matmul than as XLA's CPU convolution (measured, 3x3 convs of the 128 px ResNet, batch 1 / 2:
# 64 -> 128 channels on 128 x 128 maps 13.6 / 21 ms -> 6 / 16 ms, 128 -> 256 on 64 x 64 maps
# 10 / 17 -> 5.6 / 8.9 ms). Below, no gain, and the per-image matmuls tripled the compile time of
# the offline default's step; above (the 256 px ResNet's first, 38 MB a 256 x 256 image), no gain.
_STRIDE_2_TAPS_BYTES = (2**20, 2**24)


def _taps_in_range(x_shape, kernel_shape, padding) -> bool:
  kh, kw, in_channels, _ = kernel_shape
  out_pixels = (((x_shape[1] + 2 * padding - kh) // 2 + 1) *
                ((x_shape[2] + 2 * padding - kw) // 2 + 1))
  low, high = _STRIDE_2_TAPS_BYTES
  return low <= out_pixels * kh * kw * in_channels * 4 <= high


def stride_2_reformulates(x_shape, kernel_shape, padding) -> bool:
  """Whether `stride_2_conv` differentiates this conv faster than XLA (CPU only)."""
  return jax.default_backend() == 'cpu' and (
      _taps_in_range(x_shape, kernel_shape, padding) or
      math.prod(x_shape[1:]) >= _STRIDE_2_PER_IMAGE_GRAD_ELEMENTS)


def spatial_sums(x: jax.Array, entry_weight: float = 1.0, row_weight: float = 1.0) -> jax.Array:
  """[N, C] sums over H and W of NHWC `x`, each entry weighted by `entry_weight` and each row's
  sum by `row_weight` (1 / W and 1 / H: the means): the sum of each row, then of the rows, each a
  batched (1 x n) @ (n x C) product that reads x in its own layout. On CPU faster than XLA's
  reduction over H and W fused with what produces x, and as accurate: two short sums, not one of
  H x W terms (one long sequential sum lost 1e-3 on a 1024 x 768 map)."""
  batch, height, width, _ = x.shape
  rows = jnp.einsum('nhw,nhwc->nhc', jnp.full((batch, height, width), entry_weight, x.dtype), x)
  return jnp.einsum('nh,nhc->nc', jnp.full((batch, height), row_weight, x.dtype), rows)


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """y + bias over the channels of NHWC `y`, whose bias gradient is `spatial_sums` of the output
  gradient, summed over the batch: XLA's CPU reduction over N, H and W took ~1.6 ms for a
  3 x 32 x 32 x 256 map (the 128 px step 0.97x)."""
  return y + bias


def _add_bias_forward(y, bias):
  return y + bias, None


def _add_bias_backward(_, output_grad):
  return output_grad, spatial_sums(output_grad).sum(axis=0)


add_bias.defvjp(_add_bias_forward, _add_bias_backward)

# Fewest elements of one image's output for `add_bias` (the 128 px ResNet's residual maps have
# 2^18). Smaller maps keep XLA's reduction, which is fast there, and with it the offline default's
# results bitwise.
_BIAS_BY_MATMULS_ELEMENTS = 2**17


def bias_gradient_by_matmuls(y_shape) -> bool:
  """Whether `ReformulatedConv` adds its bias by `add_bias` (CPU only)."""
  return jax.default_backend() == 'cpu' and math.prod(y_shape[1:]) >= _BIAS_BY_MATMULS_ELEMENTS


class ReformulatedConv(nn.Module):
  """Drop-in for a VALID stride-1 `nn.Conv` (computed by `valid_conv`), for a stride-2 `nn.Conv`
  with `padding` zeros on each side (`stride` 2; computed by `stride_2_conv`) or, with
  `transpose`, for an official stride-2 transposed conv whose output is twice its input
  (`nn.ConvTranspose` with transpose_kernel=True; computed by `subpixel_conv_transpose` with
  PyTorch's `padding`): the same parameters."""
  features: int
  kernel_size: int
  transpose: bool
  use_bias: bool
  dtype: Dtype
  kernel_init: Callable
  bias_init: Callable
  padding: int = 1  # PyTorch's padding of the transposed conv, or the stride-2 conv's zeros.
  stride: int = 1  # 2: a (not transposed) stride-2 conv.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = (self.features, x.shape[-1]) if self.transpose else (x.shape[-1], self.features)
    kernel = self.param('kernel', self.kernel_init, (self.kernel_size, self.kernel_size, *channels),
                        jnp.float32)
    if self.transpose:
      y_shape = (x.shape[0], 2 * x.shape[1], 2 * x.shape[2], self.features)
      conv = conv_transpose_2x if conv_transpose_by_products(y_shape) else subpixel_conv_transpose
      y = conv(x.astype(self.dtype), kernel.astype(self.dtype), self.padding)
    elif self.stride == 2:
      y = stride_2_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.padding)
    else:
      y = valid_conv(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param('bias', self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
      y = add_bias(y, bias) if bias_gradient_by_matmuls(y.shape) else y + bias
    return y
