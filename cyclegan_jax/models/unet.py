"""The U-Net generator, as the official `UnetGenerator` (Flax linen, NHWC).

`unet_<n>` has num_downs = log2(n) levels, so an n x n input reaches 1 x 1 at the innermost one
(`unet_128`: 7, `unet_256`: 8). Each level is one official `UnetSkipConnectionBlock`, outermost
first (`unet_layout`); every level but the outermost returns concat([x, up(down(x))]) on
channels. Parameter tree (level i nested in level i - 1):

    down, up                          the outermost level: input -> ngf, 2 ngf -> output_nc, tanh
    level_1/down, level_1/up          ngf -> 2 ngf, 4 ngf -> ngf
    level_1/level_2/...               and so on to the innermost level, num_downs - 1

with `<conv>/conv/{kernel,bias}` and, with batch norm, `<conv>/norm/{scale,bias}`.
"""

from cyclegan_jax import config_lib
from cyclegan_jax.models import layout as layout_lib
from cyclegan_jax.models.layout import Conv
from cyclegan_jax.models.layout import Dropout
from cyclegan_jax.models.layout import Skip

_DOWN = dict(kernel=4, stride=2, padding=1)
_UP = dict(kernel=4, stride=2, padding=1, transpose=True)

TORCH_OUTERMOST = 'model.model'  # The state_dict prefix of the outermost level's Sequential.


def torch_prefix(level: int) -> str:
  """The state_dict prefix of level `level`'s Sequential (0 = the outermost; each level sits in
  slot 1 of the outermost's Sequential or in slot 3 of its parent's)."""
  if level == 0:
    return TORCH_OUTERMOST
  return f'{TORCH_OUTERMOST}.1{".model.3" * (level - 1)}.model'


def level_features(ngf: int, level: int) -> int:
  """Filters of a level's down conv: ngf, 2 ngf, 4 ngf, then 8 ngf."""
  return ngf * min(2**level, 8)


def unet_layout(output_nc: int,
                ngf: int,
                num_downs: int,
                norm: str,
                use_dropout: bool = False) -> layout_lib.Layout:
  """The official UnetGenerator's layers, with their state_dict names.

  A level: [LeakyReLU 0.2 (not the outermost)] -> 4x4 conv, stride 2, pad 1 -> [norm (not the
  innermost, not the outermost)] -> the next level -> ReLU -> 4x4 transposed conv, stride 2,
  pad 1 -> [norm; tanh on the outermost] -> [Dropout 0.5 on the middle levels 4 .. num_downs - 2
  with use_dropout]. Convs have a bias only with instance norm (the official `use_bias` rule,
  whether or not a norm follows them), except the outermost up conv, which always has one.
  Official Sequential indices: outermost [down 0, next level 1, ReLU 2, up 3, Tanh 4]; middle
  [LeakyReLU 0, down 1, norm 2, next level 3, ReLU 4, up 5, norm 6, (Dropout 7)]; innermost
  [LeakyReLU 0, down 1, ReLU 2, up 3, norm 4].
  """
  if num_downs < config_lib.UNET_MIN_DOWNS:
    raise ValueError(f'num_downs must be >= {config_lib.UNET_MIN_DOWNS} (the official '
                     f'UnetGenerator always has that many levels), got {num_downs}')
  bias = norm == 'instance'
  body: layout_lib.Layout = ()
  for level in range(num_downs - 1, 0, -1):  # Innermost first: each level wraps the next one.
    torch = torch_prefix(level)
    innermost = level == num_downs - 1
    up_index = 3 if innermost else 5
    layers = [
        Conv('down',
             level_features(ngf, level),
             **_DOWN,
             norm='none' if innermost else norm,
             bias=bias,
             pre_activation='leaky_relu',
             torch=f'{torch}.1',
             torch_norm='' if innermost else f'{torch}.2'),
        *body,
        Conv('up',
             level_features(ngf, level - 1),
             **_UP,
             norm=norm,
             bias=bias,
             pre_activation='relu',
             torch=f'{torch}.{up_index}',
             torch_norm=f'{torch}.{up_index + 1}'),
    ]
    if use_dropout and 4 <= level <= num_downs - 2:
      layers.append(Dropout())
    inner = (Skip(f'level_{level}', tuple(layers)),)
    body = inner
  return (
      Conv('down', ngf, **_DOWN, bias=bias, torch=f'{TORCH_OUTERMOST}.0'),
      *body,
      Conv('up',
           output_nc,
           **_UP,
           pre_activation='relu',
           activation='tanh',
           torch=f'{TORCH_OUTERMOST}.3'),
  )


class UnetGenerator(layout_lib.GeneratorModule):
  """The official U-Net generator with num_downs levels (`unet_layout`). Input H, W must be
  multiples of 2 ** num_downs; output is float32 in [-1, 1]."""
  num_downs: int = 8
  norm: str = 'batch'  # The official UnetGenerator's default.

  @property
  def architecture(self) -> str:
    return f'unet_{2**self.num_downs}'

  def layout(self, in_channels: int) -> layout_lib.Layout:
    del in_channels  # The first conv takes whatever comes.
    return unet_layout(self.output_nc, self.ngf, self.num_downs, self.norm, self.use_dropout)
