"""The ResNet generator of Johnson et al., as the official `ResnetGenerator` (Flax linen, NHWC).

`c7s1-ngf, d2ngf, d4ngf, R4ngf x num_blocks, u2ngf, ungf, c7s1-output_nc, tanh`
(`resnet_layout`). Parameter tree (B = num_blocks):

    stem/conv            reflect-pad 3, 7x7 conv, norm, ReLU
    down_0/conv, down_1/conv   3x3 stride-2 convs, norm, ReLU
    block_<i>/conv_0/conv, block_<i>/conv_1/conv   residual blocks, i < B
    up_0/conv, up_1/conv       3x3 stride-2 transposed convs, norm, ReLU
    head/conv            reflect-pad 3, 7x7 conv to output_nc, tanh
"""

from functools import partial

from cyclegan_jax import config_lib
from cyclegan_jax.models import layout as layout_lib
from cyclegan_jax.models.layout import Conv
from cyclegan_jax.models.layout import Dropout
from cyclegan_jax.models.layout import Residual

FIRST_BLOCK_INDEX = 10  # In the official Sequential: pad, conv, norm, relu, 2 x (conv, norm, relu).


def resnet_layout(output_nc: int,
                  ngf: int,
                  num_blocks: int,
                  norm: str,
                  use_dropout: bool = False) -> layout_lib.Layout:
  """The official ResnetGenerator's layers, with their state_dict names. Convs followed by a norm
  have a bias only with instance norm (the official `use_bias` rule; with norm='none' the
  official code puts an Identity there). With use_dropout each block has Dropout(0.5) between
  its convs, which moves the second conv from `conv_block.5` to `conv_block.6`."""
  normed = dict(norm=norm, bias=norm == 'instance')
  second = 6 if use_dropout else 5
  dropout = (Dropout(),) if use_dropout else ()
  layers = [
      Conv('stem',
           ngf,
           7,
           reflect=3,
           activation='relu',
           torch='model.1',
           torch_norm='model.2',
           **normed)
  ]
  for i in range(2):
    index = 4 + 3 * i
    layers.append(
        Conv(f'down_{i}',
             ngf * 2**(i + 1),
             3,
             stride=2,
             padding=1,
             activation='relu',
             torch=f'model.{index}',
             torch_norm=f'model.{index + 1}',
             **normed))
  for i in range(num_blocks):
    block = f'model.{FIRST_BLOCK_INDEX + i}.conv_block'
    layers.append(
        Residual(f'block_{i}', (
            Conv('conv_0',
                 4 * ngf,
                 3,
                 reflect=1,
                 activation='relu',
                 torch=f'{block}.1',
                 torch_norm=f'{block}.2',
                 **normed),
            *dropout,
            Conv('conv_1',
                 4 * ngf,
                 3,
                 reflect=1,
                 torch=f'{block}.{second}',
                 torch_norm=f'{block}.{second + 1}',
                 **normed),
        )))
  up = FIRST_BLOCK_INDEX + num_blocks
  for i in range(2):
    index = up + 3 * i
    layers.append(
        Conv(f'up_{i}',
             ngf * 2**(1 - i),
             3,
             stride=2,
             padding=1,
             output_padding=1,
             transpose=True,
             activation='relu',
             torch=f'model.{index}',
             torch_norm=f'model.{index + 1}',
             **normed))
  layers.append(Conv('head', output_nc, 7, reflect=3, activation='tanh', torch=f'model.{up + 7}'))
  return tuple(layers)


class ResnetGenerator(layout_lib.GeneratorModule):
  """Johnson et al. ResNet generator: c7s1-ngf, d2ngf, d4ngf, R4ngf x num_blocks, u2ngf, ungf,
  c7s1-output_nc, tanh. Input H, W must be multiples of 4; output is float32 in [-1, 1]."""
  num_blocks: int = 9

  @property
  def architecture(self) -> str:
    return f'resnet_{self.num_blocks}blocks'

  def layout(self, in_channels: int) -> layout_lib.Layout:
    del in_channels  # The first conv takes whatever comes.
    return resnet_layout(self.output_nc, self.ngf, self.num_blocks, self.norm, self.use_dropout)



ResnetGenerator9 = partial(ResnetGenerator, num_blocks=9)
ResnetGenerator6 = partial(ResnetGenerator, num_blocks=6)


def generator_num_blocks(name: str) -> int:
  """'resnet_9blocks' -> 9; any 'resnet_<n>blocks' with n >= 1."""
  kind, number = config_lib.parse_generator(name)
  if kind != 'resnet':
    raise ValueError(f"Unknown ResNet generator {name!r}: expected 'resnet_<n>blocks' with "
                     "n >= 1, e.g. 'resnet_9blocks' or 'resnet_6blocks'")
  return number
