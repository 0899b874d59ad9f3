"""The ResNet generator of Johnson et al., as the official `ResnetGenerator` (Flax linen, NHWC).

Parameter tree (B = num_blocks):

    stem/conv            reflect-pad 3, 7x7 conv, norm, ReLU
    down_0/conv, down_1/conv   3x3 stride-2 convs, norm, ReLU
    block_<i>/conv_0/conv, block_<i>/conv_1/conv   residual blocks, i < B
    up_0/conv, up_1/conv       3x3 stride-2 transposed convs, norm, ReLU
    head/conv            reflect-pad 3, 7x7 conv to output_nc (tanh applied after)
"""

from functools import partial
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from cyclegan_jax.models.layers import ConvNormAct
from cyclegan_jax.models.layers import Dtype
from cyclegan_jax.models.layers import TRANSPOSED_PAD
from cyclegan_jax.models.layers import ZERO_PAD_1
from cyclegan_jax.models.layers import _normed_layer

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


ResnetGenerator9 = partial(ResnetGenerator, num_blocks=9)
ResnetGenerator6 = partial(ResnetGenerator, num_blocks=6)


def generator_num_blocks(name: str) -> int:
  """'resnet_9blocks' -> 9; any 'resnet_<n>blocks' with n >= 1."""
  match = re.fullmatch(r'resnet_(\d+)blocks', name)
  if match is None or int(match.group(1)) < 1:
    raise ValueError(f"Unknown generator {name!r}: expected 'resnet_<n>blocks' with n >= 1, "
                     "e.g. 'resnet_9blocks' or 'resnet_6blocks'")
  return int(match.group(1))
