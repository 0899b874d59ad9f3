"""CycleGAN networks: the ResNet generator and the PatchGAN discriminator (Flax linen, NHWC).

Both match the official PyTorch networks layer for layer (see `torch_convert` for checkpoint
import). Parameter tree of a `ResnetGenerator` (B = num_blocks):

    stem/conv            reflect-pad 3, 7x7 conv, norm, ReLU
    down_0/conv, down_1/conv   3x3 stride-2 convs, norm, ReLU
    block_<i>/conv_0/conv, block_<i>/conv_1/conv   residual blocks, i < B
    up_0/conv, up_1/conv       3x3 stride-2 transposed convs, norm, ReLU
    head/conv            reflect-pad 3, 7x7 conv to output_nc (tanh applied after)

and of an `NLayerDiscriminator`: layer_0/conv ... layer_<n_layers>/conv, head/conv. Each `conv`
holds `kernel` (HWIO) and, where the official network has one, `bias`; with norm='batch' a sibling
`norm` holds `scale` and `bias`.

`fast_convs` (default True) computes two kinds of convolution by exact reformulations (the same
parameters, the same sums in another order) that XLA's CPU backend runs much faster: the
transposed convolutions in sub-pixel form (`subpixel_conv_transpose`; their gradients were ~10x
slower as the dilated convolutions `nn.ConvTranspose` lowers to), and the generator's 7x7 stem and
head and, on large feature maps, the residual blocks' 3x3 convs through `valid_conv` (on CPU a
64 -> 3 conv ran at ~4 GFLOP/s, a 3x3 conv on 64 x 64 maps at ~60). False keeps plain `nn.Conv` and `nn.ConvTranspose`.
"""

from functools import partial
import re
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NORM_TYPES = ('instance', 'batch', 'none')
INIT_TYPES = ('normal', 'xavier', 'kaiming', 'orthogonal')
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
  raise ValueError(f'init_type must be one of {INIT_TYPES}, got {init_type!r}')


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


# ConvTranspose2d(k=3, s=2, p=1, output_padding=1), along one axis: output 2m = x[m] * w[1] and
# output 2m + 1 = x[m] * w[2] + x[m + 1] * w[0]. [output phase, input tap m + tap] -> kernel
# index, where index 3 is a zero tap.
_SUBPIXEL_TAPS = np.array([[1, 3], [2, 0]])


def subpixel_conv_transpose(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The official stride-2 3x3 transposed conv (padding 1, output padding 1), without bias.

  `kernel` is (3, 3, out, in), as `nn.ConvTranspose(transpose_kernel=True)` holds it. The four
  output phases (row and column parity) are one stride-1 2x2 convolution of the input, padded by
  one zero row and column at the end, with 4 x out channels, interleaved by depth-to-space: the
  same products and sums as the transposed convolution, in another order.
  """
  out_channels, in_channels = kernel.shape[2:]
  taps = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
  # [phase_h, tap_h, phase_w, tap_w, out, in] -> (tap_h, tap_w, in, (phase_h, phase_w, out)).
  sub_kernel = taps[_SUBPIXEL_TAPS[:, :, None, None], _SUBPIXEL_TAPS[None, None, :, :]]
  sub_kernel = sub_kernel.transpose(1, 3, 5, 0, 2, 4).reshape(2, 2, in_channels, 4 * out_channels)
  padded = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
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
  the official transposed conv (`nn.ConvTranspose` with kernel 3, stride 2, TRANSPOSED_PAD,
  transpose_kernel=True; computed by `subpixel_conv_transpose`): the same parameters."""
  features: int
  kernel_size: int
  transpose: bool
  use_bias: bool
  dtype: Dtype
  kernel_init: Callable
  bias_init: Callable

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = (self.features, x.shape[-1]) if self.transpose else (x.shape[-1], self.features)
    kernel = self.param('kernel', self.kernel_init, (self.kernel_size, self.kernel_size, *channels),
                        jnp.float32)
    conv = subpixel_conv_transpose if self.transpose else valid_conv
    y = conv(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
    return y


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
    if self.norm not in NORM_TYPES:
      raise ValueError(f'norm must be one of {NORM_TYPES}, got {self.norm!r}')
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


def _normed_layer(norm: str, init_type: str, init_gain: float, dtype: Dtype) -> Callable:
  """ConvNormAct for convs followed by a norm layer.

  Official rule: `use_bias = norm_layer is InstanceNorm2d`. So with 'batch' and also with 'none'
  (the official code inserts an Identity there) these convs have no bias.
  """
  return partial(ConvNormAct, norm=norm, use_bias=norm == 'instance', init_type=init_type,
                 init_gain=init_gain, dtype=dtype)


class ResnetBlock(nn.Module):
  """x + [reflect pad 1, conv3x3, norm, ReLU, reflect pad 1, conv3x3, norm], no activation after."""
  norm: str = 'instance'
  init_type: str = 'normal'
  init_gain: float = 0.02
  dtype: Dtype = jnp.float32
  fast_convs: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    layer = partial(_normed_layer(self.norm, self.init_type, self.init_gain, self.dtype),
                    fast_convs=self.fast_convs)
    features = x.shape[-1]
    y = layer(features, 3, reflect_pad=1, activation=nn.relu, name='conv_0')(x)
    y = layer(features, 3, reflect_pad=1, name='conv_1')(y)
    return x + y


class ResnetGenerator(nn.Module):
  """Johnson et al. ResNet generator: c7s1-ngf, d2ngf, d4ngf, R4ngf x num_blocks, u2ngf, ungf,
  c7s1-output_nc, tanh. Input H, W must be multiples of 4; output is float32 in [-1, 1]."""
  output_nc: int = 3
  ngf: int = 64
  num_blocks: int = 9
  norm: str = 'instance'
  init_type: str = 'normal'
  init_gain: float = 0.02
  dtype: Dtype = jnp.float32
  fast_convs: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    height, width = x.shape[1:3]
    if height % 4 or width % 4:
      raise ValueError(f'ResnetGenerator needs H and W divisible by 4, got {height}x{width}')
    layer = _normed_layer(self.norm, self.init_type, self.init_gain, self.dtype)
    x = x.astype(self.dtype)
    x = layer(self.ngf, 7, reflect_pad=3, activation=nn.relu, fast_convs=self.fast_convs,
              name='stem')(x)
    for i in range(2):
      x = layer(self.ngf * 2**(i + 1), 3, strides=2, padding=ZERO_PAD_1, activation=nn.relu,
                name=f'down_{i}')(x)
    for i in range(self.num_blocks):
      x = ResnetBlock(self.norm, self.init_type, self.init_gain, self.dtype, self.fast_convs,
                      name=f'block_{i}')(x)
    for i in range(2):
      x = layer(self.ngf * 2**(1 - i), 3, strides=2, padding=TRANSPOSED_PAD, transpose=True,
                activation=nn.relu, fast_convs=self.fast_convs, name=f'up_{i}')(x)
    x = ConvNormAct(self.output_nc, 7, reflect_pad=3, init_type=self.init_type,
                    init_gain=self.init_gain, dtype=self.dtype, fast_convs=self.fast_convs,
                    name='head')(x)
    return jnp.tanh(x.astype(jnp.float32))


class NLayerDiscriminator(nn.Module):
  """PatchGAN: 4x4 convs, zero pad 1; C(ndf) without norm, then norm + LeakyReLU(0.2) layers
  with channel multiplier min(2^n, 8), the last at stride 1; a final conv to 1 channel.
  Returns raw float32 scores (no sigmoid)."""
  ndf: int = 64
  n_layers: int = 3
  norm: str = 'instance'
  init_type: str = 'normal'
  init_gain: float = 0.02
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.n_layers < 1:
      raise ValueError(f'n_layers must be >= 1, got {self.n_layers}')
    layer = _normed_layer(self.norm, self.init_type, self.init_gain, self.dtype)
    plain = partial(ConvNormAct, kernel_size=4, padding=ZERO_PAD_1, norm='none', use_bias=True,
                    init_type=self.init_type, init_gain=self.init_gain, dtype=self.dtype)
    x = x.astype(self.dtype)
    x = plain(self.ndf, strides=2, activation=leaky_relu, name='layer_0')(x)
    for n in range(1, self.n_layers + 1):
      stride = 2 if n < self.n_layers else 1
      x = layer(self.ndf * min(2**n, 8), 4, strides=stride, padding=ZERO_PAD_1,
                activation=leaky_relu, name=f'layer_{n}')(x)
    x = plain(1, strides=1, name='head')(x)
    return x.astype(jnp.float32)


ResnetGenerator9 = partial(ResnetGenerator, num_blocks=9)
ResnetGenerator6 = partial(ResnetGenerator, num_blocks=6)
PatchGANDiscriminator = partial(NLayerDiscriminator, n_layers=3)


def generator_num_blocks(name: str) -> int:
  """'resnet_9blocks' -> 9; any 'resnet_<n>blocks' with n >= 1."""
  match = re.fullmatch(r'resnet_(\d+)blocks', name)
  if match is None or int(match.group(1)) < 1:
    raise ValueError(f"Unknown generator {name!r}: expected 'resnet_<n>blocks' with n >= 1, "
                     "e.g. 'resnet_9blocks' or 'resnet_6blocks'")
  return int(match.group(1))


def build_generator(model_config, out_channels: int, dtype: Dtype = jnp.float32) -> ResnetGenerator:
  """Generator from the `model` config; input channels are taken from the input."""
  return ResnetGenerator(
      output_nc=out_channels,
      ngf=model_config.ngf,
      num_blocks=generator_num_blocks(model_config.generator),
      norm=model_config.norm,
      init_type=model_config.init_type,
      init_gain=model_config.init_gain,
      dtype=dtype,
      fast_convs=model_config.get('fast_convs', True),
  )


def build_discriminator(model_config, dtype: Dtype = jnp.float32) -> NLayerDiscriminator:
  """'basic' is the 70x70 PatchGAN (3 layers); 'n_layers' uses `n_layers_D`."""
  if model_config.discriminator == 'basic':
    n_layers = 3
  elif model_config.discriminator == 'n_layers':
    n_layers = model_config.n_layers_D
  else:
    raise ValueError(f"Unknown discriminator {model_config.discriminator!r}: expected 'basic' "
                     "or 'n_layers'")
  return NLayerDiscriminator(
      ndf=model_config.ndf,
      n_layers=n_layers,
      norm=model_config.norm,
      init_type=model_config.init_type,
      init_gain=model_config.init_gain,
      dtype=dtype,
  )


def count_params(params) -> int:
  """Number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
  return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))
