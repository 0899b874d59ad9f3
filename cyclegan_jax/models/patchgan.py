"""The PatchGAN discriminator, as the official `NLayerDiscriminator` (Flax linen, NHWC).

Parameter tree: layer_0/conv ... layer_<n_layers>/conv, head/conv (and `norm` beside the normed
convs with norm='batch').
"""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from cyclegan_jax.models.layers import ConvNormAct
from cyclegan_jax.models.layers import Dtype
from cyclegan_jax.models.layers import leaky_relu
from cyclegan_jax.models.layers import ZERO_PAD_1
from cyclegan_jax.models.layers import _normed_layer

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


PatchGANDiscriminator = partial(NLayerDiscriminator, n_layers=3)
