"""The PatchGAN discriminators, as the official `NLayerDiscriminator` and `PixelDiscriminator`
(Flax linen, NHWC).

Parameter trees: layer_0/conv ... layer_<n_layers>/conv, head/conv (n layers), layer_0/conv,
layer_1/conv, head/conv (pixel), and `norm` beside the normed convs with norm='batch';
`patchgan_layout` and `pixel_layout` list them with their state_dict names. A conditional
discriminator (pix2pix's, on concat(A, B)) is the same network on 6 input channels.
"""

from functools import partial

from cyclegan_jax.models import layout as layout_lib
from cyclegan_jax.models.layout import Conv


def patchgan_layout(ndf: int, n_layers: int, norm: str) -> layout_lib.Layout:
  """C(ndf) without norm, then conv + norm + LeakyReLU(0.2) layers with channel multiplier
  min(2^n, 8), the last at stride 1, then a conv to 1 channel; 4x4 convs with zero padding 1.
  Official index of the n-th normed conv: 2 + 3 (n - 1) (each is followed by norm and LeakyReLU)."""
  layers = [Conv('layer_0', ndf, 4, stride=2, padding=1, activation='leaky_relu', torch='model.0')]
  for n in range(1, n_layers + 1):
    index = 2 + 3 * (n - 1)
    layers.append(
        Conv(f'layer_{n}',
             ndf * min(2**n, 8),
             4,
             stride=2 if n < n_layers else 1,
             padding=1,
             norm=norm,
             bias=norm == 'instance',
             activation='leaky_relu',
             torch=f'model.{index}',
             torch_norm=f'model.{index + 1}'))
  layers.append(Conv('head', 1, 4, padding=1, torch=f'model.{3 * n_layers + 2}'))
  return tuple(layers)


def pixel_layout(ndf: int, norm: str) -> layout_lib.Layout:
  """The official 1x1 PatchGAN: 1x1 convs ndf -> 2 ndf (norm) -> 1, LeakyReLU(0.2) between.
  Its last conv follows the InstanceNorm bias rule too (official `net.5`)."""
  bias = norm == 'instance'
  return (
      Conv('layer_0', ndf, 1, activation='leaky_relu', torch='net.0'),
      Conv('layer_1',
           2 * ndf,
           1,
           norm=norm,
           bias=bias,
           activation='leaky_relu',
           torch='net.2',
           torch_norm='net.3'),
      Conv('head', 1, 1, bias=bias, torch='net.5'),
  )


class NLayerDiscriminator(layout_lib.LayoutModule):
  """PatchGAN: 4x4 convs, zero pad 1; C(ndf) without norm, then norm + LeakyReLU(0.2) layers
  with channel multiplier min(2^n, 8), the last at stride 1; a final conv to 1 channel.
  Returns raw float32 scores (no sigmoid); takes any input size."""
  ndf: int = 64
  n_layers: int = 3
  norm: str = 'instance'

  def layout(self, in_channels: int) -> layout_lib.Layout:
    del in_channels  # The first conv takes whatever comes.
    if self.n_layers < 1:
      raise ValueError(f'n_layers must be >= 1, got {self.n_layers}')
    return patchgan_layout(self.ndf, self.n_layers, self.norm)


PatchGANDiscriminator = partial(NLayerDiscriminator, n_layers=3)


class PixelDiscriminator(layout_lib.LayoutModule):
  """PixelGAN: one score per pixel from 1x1 convs (`pixel_layout`). Raw float32 scores."""
  ndf: int = 64
  norm: str = 'instance'

  def layout(self, in_channels: int) -> layout_lib.Layout:
    del in_channels  # The first conv takes whatever comes.
    return pixel_layout(self.ndf, self.norm)
