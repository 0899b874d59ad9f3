"""One declarative description of a network's layers, walked by everything that needs them.

A layout is a tuple of layers in the official network's order, with each conv's PyTorch
state_dict names: `Conv` (a conv with its norm and activations), `Residual` (x + body(x)), `Skip`
(concat([x, body(x)]) on channels) and `Dropout`. Three things walk it:

- the Flax modules (`apply_layout`, inside `ResnetGenerator`, `UnetGenerator`,
  `NLayerDiscriminator`, `PixelDiscriminator` or the generic `LayoutNetwork`): parameters
  `<name>/conv/{kernel,bias}` and, with batch norm, `<name>/norm/{scale,bias}`, nested under the
  names of the `Residual` and `Skip` blocks that hold them;
- the PyTorch key mapping (`torch_io.mapping.params_from_state_dict`);
- the ONNX emitter (`export.onnx`).

A new architecture is a new layout function: the three follow without code of their own.
"""

import dataclasses
from typing import Any, Callable, Iterator, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from cyclegan_jax.models.layers import ConvNormAct
from cyclegan_jax.models.layers import Dtype
from cyclegan_jax.models.layers import leaky_relu

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'relu': nn.relu,
    'leaky_relu': leaky_relu,  # Slope 0.2, as every official network.
}


@dataclasses.dataclass(frozen=True)
class Conv:
  """[pre-activation] -> [reflection pad] -> conv (or transposed conv) -> [norm] -> [activation].

  Padding, stride and output padding mean what they mean in PyTorch's Conv2d / ConvTranspose2d.
  `torch` is the conv's state_dict prefix (`model.1`), `torch_norm` that of the norm layer after
  it, where the official network has one (its own parameters with batch norm, running
  statistics in old checkpoints).
  """
  name: str
  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  reflect: int = 0
  transpose: bool = False
  output_padding: int = 0
  norm: str = 'none'
  bias: bool = True
  activation: str | None = None  # A key of ACTIVATIONS, 'tanh' (computed in float32) or None.
  pre_activation: str | None = None  # A key of ACTIVATIONS applied to the input, or None.
  torch: str = ''
  torch_norm: str = ''

  @property
  def lax_padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
    """The explicit padding of the equivalent Flax conv (of the dilated input, if transposed)."""
    if not self.transpose:
      return ((self.padding, self.padding),) * 2
    before = self.kernel - 1 - self.padding
    return ((before, before + self.output_padding),) * 2


@dataclasses.dataclass(frozen=True)
class Residual:
  """x + body(x), no activation after the sum (the official ResnetBlock)."""
  name: str
  body: tuple['Layer', ...]


@dataclasses.dataclass(frozen=True)
class Skip:
  """concat([x, body(x)]) on channels, input first (the official UnetSkipConnectionBlock)."""
  name: str
  body: tuple['Layer', ...]


@dataclasses.dataclass(frozen=True)
class Dropout:
  """Zeroes each activation with probability `rate` and scales the rest by 1 / (1 - rate), as
  PyTorch's Dropout in train mode; the identity when the network is deterministic."""
  name: str = 'dropout'
  rate: float = 0.5


Layer = Union[Conv, Residual, Skip, Dropout]
Layout = tuple[Layer, ...]
BLOCKS = (Residual, Skip)  # The layers that hold a body of layers.


def walk(layers: Layout, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Conv]]:
  """(parameter path, conv) of every conv, in order, block bodies included."""
  for layer in layers:
    if isinstance(layer, BLOCKS):
      yield from walk(layer.body, (*prefix, layer.name))
    elif isinstance(layer, Conv):
      yield (*prefix, layer.name), layer


def has_parameters(layer: Layer) -> bool:
  """Whether the layer holds parameters (a subtree of the network's parameters, under its name)."""
  return isinstance(layer, (Conv, *BLOCKS))


def conv_channels(layers: Layout, in_channels: int) -> list[tuple[tuple[str, ...], Conv, int]]:
  """(path, conv, its input channels) of every conv, for an input of `in_channels`."""
  result = []

  def visit(layers, prefix, channels):
    for layer in layers:
      if isinstance(layer, Residual):
        visit(layer.body, (*prefix, layer.name), channels)
      elif isinstance(layer, Skip):
        channels += visit(layer.body, (*prefix, layer.name), channels)
      elif isinstance(layer, Conv):
        result.append(((*prefix, layer.name), layer, channels))
        channels = layer.features
    return channels

  visit(layers, (), in_channels)
  return result


def size_multiple(layers: Layout) -> int:
  """What height and width must be multiples of: 2 ** (downsamplings)."""
  return 2**sum(conv.stride == 2 and not conv.transpose for _, conv in walk(layers))


def check_size_multiple(x: jax.Array, layers: Layout, network: str) -> None:
  """Raises ValueError unless the height and width of NHWC `x` are multiples of what `layers`
  need (`size_multiple`)."""
  height, width = x.shape[1:3]
  multiple = size_multiple(layers)
  if height % multiple or width % multiple:
    raise ValueError(f'{network} needs H and W divisible by {multiple}, got {height}x{width}')


def has_norm(layers: Layout, norm: str) -> bool:
  return any(conv.norm == norm for _, conv in walk(layers))


def has_dropout(layers: Layout) -> bool:
  return any(
      isinstance(layer, Dropout) or (isinstance(layer, BLOCKS) and has_dropout(layer.body))
      for layer in layers)


def min_side(layers: Layout) -> int:
  """The smallest height and width the network takes: every reflection pad needs a map larger
  than the pad (numpy's 'reflect' does not repeat the edge), at its depth."""
  side, scale = size_multiple(layers), 1
  for _, conv in walk(layers):
    if conv.reflect:
      side = max(side, (conv.reflect + 1) * scale)
    if conv.stride == 2:
      scale = scale // 2 if conv.transpose else scale * 2
  multiple = size_multiple(layers)
  return -(-side // multiple) * multiple


# The LayoutModule fields that every layer of a network shares (`apply_layout`'s settings).
SHARED_FIELDS = ('init_type', 'init_gain', 'dtype', 'fast_convs', 'deterministic', 'norm_per_image',
                 'norm_running_average', 'spectral_norm')


class LayoutModule(nn.Module):
  """A network that runs a layout (`layout`, defined by each subclass) on a float input cast to
  `dtype`; returns float32. The settings every layer of the network shares are its fields:

  deterministic: dropout layers are the identity (the official test.py with --eval); otherwise
    they draw from the 'dropout' RNG stream, which `apply` must then be given.
  norm_per_image: batch norm normalises each image by its own statistics, as the official test.py
    does at batch size 1; otherwise by the statistics of the whole batch (training).
  norm_running_average: batch norm normalises by the running statistics that training kept
    (test.py --eval), given in 'params' beside each norm's scale and bias.
  spectral_norm: every conv kernel is divided by its largest singular value
    (`layers.spectral_norm`).
  """
  init_type: str = 'normal'
  init_gain: float = 0.02
  dtype: Dtype = jnp.float32
  fast_convs: bool = True
  deterministic: bool = False
  norm_per_image: bool = False
  norm_running_average: bool = False
  spectral_norm: bool = False

  def layout(self, in_channels: int) -> Layout:
    """The layers this network runs on an input of `in_channels` channels."""
    return ()

  def check_input(self, x: jax.Array, layers: Layout) -> None:
    """Raises ValueError for an input the network does not take (nothing to check by default)."""

  def maps_examples_independently(self, in_channels: int) -> bool:
    """Whether each example's output depends on that example alone (no batch norm over the
    batch, no active dropout): then one call on a concatenation of batches gives what separate
    calls give, up to float rounding."""
    layers = self.layout(in_channels)
    batch_statistics = has_norm(layers, 'batch') and not (self.norm_per_image or
                                                          self.norm_running_average)
    return not batch_statistics and (self.deterministic or not has_dropout(layers))

  def settings(self) -> dict[str, Any]:
    """The shared settings, for `apply_layout`. Initialisation runs dropout as the identity, so
    that `init` needs no dropout RNG."""
    settings = {name: getattr(self, name) for name in SHARED_FIELDS}
    settings['deterministic'] = self.deterministic or self.is_initializing()
    return settings

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    layers = self.layout(x.shape[-1])
    self.check_input(x, layers)
    y = apply_layout(layers, x.astype(self.dtype), **self.settings())
    return y.astype(jnp.float32)


class GeneratorModule(LayoutModule):
  """A generator of `output_nc` channels, `ngf` filters in its first conv: input height and
  width must be multiples of what its layout needs."""
  output_nc: int = 3
  ngf: int = 64
  norm: str = 'instance'
  use_dropout: bool = False

  def check_input(self, x: jax.Array, layers: Layout) -> None:
    check_size_multiple(x, layers, type(self).__name__)


class Block(LayoutModule):
  """A `Residual` (x + body(x)) or `Skip` (concat([x, body(x)])) layer, its body's parameters
  under its name."""
  body: tuple[Any, ...] = ()
  concat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = apply_layout(self.body, x, **self.settings())
    return jnp.concatenate([x, y.astype(x.dtype)], axis=-1) if self.concat else x + y


def apply_layout(layers: Layout, x: jax.Array, **settings) -> jax.Array:
  """Runs `layers` on `x` with a LayoutModule's shared settings (`SHARED_FIELDS`); call it inside
  a compact method (the layers become submodules)."""
  for layer in layers:
    if isinstance(layer, BLOCKS):
      x = Block(body=layer.body, concat=isinstance(layer, Skip), name=layer.name, **settings)(x)
    elif isinstance(layer, Dropout):
      x = nn.Dropout(layer.rate, deterministic=settings['deterministic'], name=layer.name)(x)
    else:
      x = ConvNormAct(layer.features,
                      layer.kernel,
                      strides=layer.stride,
                      padding=layer.lax_padding,
                      reflect_pad=layer.reflect,
                      transpose=layer.transpose,
                      norm=layer.norm,
                      activation=ACTIVATIONS.get(layer.activation),
                      pre_activation=ACTIVATIONS.get(layer.pre_activation),
                      use_bias=layer.bias,
                      init_type=settings['init_type'],
                      init_gain=settings['init_gain'],
                      dtype=settings['dtype'],
                      fast_convs=settings['fast_convs'],
                      norm_per_image=settings['norm_per_image'],
                      norm_running_average=settings['norm_running_average'],
                      spectral_norm=settings['spectral_norm'],
                      name=layer.name)(x)
      if layer.activation == 'tanh':  # Outside the module, as the official Tanh layer.
        x = jnp.tanh(x.astype(jnp.float32))
  return x


class LayoutNetwork(LayoutModule):
  """Any layout as a network (e.g. a new architecture, written as its layers)."""
  layers: tuple[Any, ...] = ()
  architecture: str = 'custom'

  def layout(self, in_channels: int) -> Layout:
    del in_channels  # Fixed when the layers were written.
    return self.layers
