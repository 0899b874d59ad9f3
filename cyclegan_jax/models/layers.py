"""Building blocks of the official networks: conv -> norm -> activation, norms, inits, padding.

Each `ConvNormAct` holds a `conv` with `kernel` (HWIO; for transposed convs (kH, kW, out, in), as
a PyTorch ConvTranspose2d weight transposed) and, where the official network has one, `bias`;
with norm='batch' a sibling `norm` holds `scale` and `bias`.
"""

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cyclegan_jax import config_lib
from cyclegan_jax.models.fast_convs import ReformulatedConv

NORM_EPS = 1e-5
Dtype = Any
Padding = Sequence[tuple[int, int]]
VALID = ((0, 0), (0, 0))
ZERO_PAD_1 = ((1, 1), (1, 1))
# PyTorch ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1) as a conv over the
# stride-dilated input: pad k-1-padding = 1 before and 1 + output_padding = 2 after.
TRANSPOSED_PAD = ((1, 2), (1, 2))


def leaky_relu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, negative_slope=0.2)


def kernel_initializer(init_type: str, init_gain: float) -> Callable:
  """Conv weight init of the official `init_weights` (untruncated normals)."""
  if init_type == 'normal':
    return nn.initializers.normal(stddev=init_gain)
  if init_type == 'xavier':
    return nn.initializers.variance_scaling(init_gain**2, 'fan_avg', 'normal')
  if init_type == 'kaiming':  # kaiming_normal_(a=0, mode='fan_in'): gain sqrt(2), ignores init_gain
    return nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
  if init_type == 'orthogonal':
    return nn.initializers.orthogonal(scale=init_gain)
  raise ValueError(f'init_type must be one of {config_lib.INIT_TYPES}, got {init_type!r}')


def instance_norm(x: jax.Array) -> jax.Array:
  """Per sample and channel over H, W; biased variance; no scale/shift. Stats in float32."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(axis=(1, 2), keepdims=True)
  var = jnp.square(x32 - mean).mean(axis=(1, 2), keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + NORM_EPS)).astype(x.dtype)


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')


class BatchStatsNorm(nn.Module):
  """Batch norm that always normalises with the current batch's statistics.

  Like the official code's default test.py (never switched to eval mode), so there are no
  running averages and no mutable collections. Scale ~ N(1, init_gain), bias 0, as the official
  `init_weights` does for BatchNorm2d.
  """
  init_gain: float = 0.02

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    gain = self.init_gain
    scale = self.param('scale', lambda key, shape: 1.0 + gain * jax.random.normal(key, shape),
                       (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    x32 = x.astype(jnp.float32)
    mean = x32.mean(axis=(0, 1, 2))
    var = jnp.square(x32 - mean).mean(axis=(0, 1, 2))
    y = (x32 - mean) * jax.lax.rsqrt(var + NORM_EPS) * scale + bias
    return y.astype(x.dtype)


class ConvNormAct(nn.Module):
  """[reflect pad] -> conv or transposed conv (explicit zero padding) -> [norm] -> [activation]."""
  features: int
  kernel_size: int
  strides: int = 1
  padding: Padding = VALID
  reflect_pad: int = 0
  transpose: bool = False
  norm: str = 'none'
  activation: Optional[Callable] = None
  use_bias: bool = True
  init_type: str = 'normal'
  init_gain: float = 0.02
  dtype: Dtype = jnp.float32
  fast_convs: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.norm not in config_lib.NORM_TYPES:
      raise ValueError(f'norm must be one of {config_lib.NORM_TYPES}, got {self.norm!r}')
    if self.reflect_pad:
      x = reflect_pad(x, self.reflect_pad)
    conv_args = dict(
        features=self.features,
        kernel_size=(self.kernel_size, self.kernel_size),
        strides=(self.strides, self.strides),
        padding=self.padding,
        use_bias=self.use_bias,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_initializer(self.init_type, self.init_gain),
        bias_init=nn.initializers.zeros,
        name='conv',
    )
    subpixel = (self.kernel_size, self.strides, tuple(self.padding)) == (3, 2, TRANSPOSED_PAD)
    plain_stride_1 = self.strides == 1 and tuple(self.padding) == VALID and not self.transpose
    if self.fast_convs and (plain_stride_1 or (self.transpose and subpixel)):
      x = ReformulatedConv(self.features, self.kernel_size, self.transpose, self.use_bias,
                           self.dtype, conv_args['kernel_init'], conv_args['bias_init'],
                           name='conv')(x)
    elif self.transpose:
      # transpose_kernel=True: kernel is (kH, kW, out, in), the same axis order as a PyTorch
      # ConvTranspose2d weight after transpose(2, 3, 1, 0), and fan_in is computed as PyTorch does.
      x = nn.ConvTranspose(transpose_kernel=True, **conv_args)(x)
    else:
      x = nn.Conv(**conv_args)(x)
    if self.norm == 'instance':
      x = instance_norm(x)
    elif self.norm == 'batch':
      x = BatchStatsNorm(self.init_gain, name='norm')(x)
    if self.activation is not None:
      x = self.activation(x)
    return x
