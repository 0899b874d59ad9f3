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
"""

from functools import partial
import re
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

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
    if self.transpose:
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

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    layer = _normed_layer(self.norm, self.init_type, self.init_gain, self.dtype)
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

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    height, width = x.shape[1:3]
    if height % 4 or width % 4:
      raise ValueError(f'ResnetGenerator needs H and W divisible by 4, got {height}x{width}')
    layer = _normed_layer(self.norm, self.init_type, self.init_gain, self.dtype)
    x = x.astype(self.dtype)
    x = layer(self.ngf, 7, reflect_pad=3, activation=nn.relu, name='stem')(x)
    for i in range(2):
      x = layer(self.ngf * 2**(i + 1), 3, strides=2, padding=ZERO_PAD_1, activation=nn.relu,
                name=f'down_{i}')(x)
    for i in range(self.num_blocks):
      x = ResnetBlock(self.norm, self.init_type, self.init_gain, self.dtype, name=f'block_{i}')(x)
    for i in range(2):
      x = layer(self.ngf * 2**(1 - i), 3, strides=2, padding=TRANSPOSED_PAD, transpose=True,
                activation=nn.relu, name=f'up_{i}')(x)
    x = ConvNormAct(self.output_nc, 7, reflect_pad=3, init_type=self.init_type,
                    init_gain=self.init_gain, dtype=self.dtype, name='head')(x)
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
