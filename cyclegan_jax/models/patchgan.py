"""The PatchGAN discriminator, as the official `NLayerDiscriminator` (Flax linen, NHWC).

Parameter tree: layer_0/conv ... layer_<n_layers>/conv, head/conv (and `norm` beside the normed
convs with norm='batch'); `patchgan_layout` lists them with their state_dict names.
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
