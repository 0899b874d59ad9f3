"""One declarative description of a network's layers, walked by everything that needs them.

A layout is a tuple of `Conv` and `Residual` layers in the official network's order, with each
conv's PyTorch state_dict names. Three things walk it:

- the Flax modules (`apply_layout`, inside `ResnetGenerator`, `NLayerDiscriminator` or the generic
  `LayoutNetwork`): parameters `<name>/conv/{kernel,bias}` and, with batch norm,
  `<name>/norm/{scale,bias}`;
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
  """[reflection pad] -> conv (or the official transposed conv) -> [norm] -> [activation].

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


Layer = Union[Conv, Residual]
Layout = tuple[Layer, ...]


def walk(layers: Layout, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Conv]]:
  """(parameter path, conv) of every conv, in order, residual bodies included."""
  for layer in layers:
    if isinstance(layer, Residual):
      yield from walk(layer.body, (*prefix, layer.name))
    else:
      yield (*prefix, layer.name), layer


def conv_channels(layers: Layout, in_channels: int) -> list[tuple[tuple[str, ...], Conv, int]]:
  """(path, conv, its input channels) of every conv, for an input of `in_channels`."""
  result = []

  def visit(layers, prefix, channels):
    for layer in layers:
      if isinstance(layer, Residual):
        visit(layer.body, (*prefix, layer.name), channels)
      else:
        result.append(((*prefix, layer.name), layer, channels))
        channels = layer.features
    return channels

  visit(layers, (), in_channels)
  return result


def size_multiple(layers: Layout) -> int:
  """What height and width must be multiples of: 2 ** (downsamplings)."""
  return 2**sum(conv.stride == 2 and not conv.transpose for _, conv in walk(layers))


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


class LayoutModule(nn.Module):
  """A network that runs a layout (`layout`, defined by each subclass) on a float input cast to
  `dtype`; returns float32. The settings every layer of the network shares are its fields."""
  init_type: str = 'normal'
  init_gain: float = 0.02
  dtype: Dtype = jnp.float32
  fast_convs: bool = True

  def layout(self, in_channels: int) -> Layout:
    """The layers this network runs on an input of `in_channels` channels."""
    return ()

  def check_input(self, x: jax.Array, layers: Layout) -> None:
    """Raises ValueError for an input the network does not take (nothing to check by default)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    layers = self.layout(x.shape[-1])
    self.check_input(x, layers)
    y = apply_layout(layers,
                     x.astype(self.dtype),
                     init_type=self.init_type,
                     init_gain=self.init_gain,
                     dtype=self.dtype,
                     fast_convs=self.fast_convs)
    return y.astype(jnp.float32)


class ResidualBlock(LayoutModule):
  """A `Residual` layer: x + body(x), its body's parameters under its name."""
  body: tuple[Any, ...] = ()

  def layout(self, in_channels: int) -> Layout:
    del in_channels
    return self.body

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return x + apply_layout(self.body, x, init_type=self.init_type, init_gain=self.init_gain,
                            dtype=self.dtype, fast_convs=self.fast_convs)


def apply_layout(layers: Layout, x: jax.Array, *, init_type: str, init_gain: float, dtype: Dtype,
                 fast_convs: bool) -> jax.Array:
  """Runs `layers` on `x`; call it inside a compact method (the layers become submodules)."""
  for layer in layers:
    if isinstance(layer, Residual):
      x = ResidualBlock(body=layer.body,
                        init_type=init_type,
                        init_gain=init_gain,
                        dtype=dtype,
                        fast_convs=fast_convs,
                        name=layer.name)(x)
      continue
    x = ConvNormAct(layer.features,
                    layer.kernel,
                    strides=layer.stride,
                    padding=layer.lax_padding,
                    reflect_pad=layer.reflect,
                    transpose=layer.transpose,
                    norm=layer.norm,
                    activation=ACTIVATIONS.get(layer.activation),
                    use_bias=layer.bias,
                    init_type=init_type,
                    init_gain=init_gain,
                    dtype=dtype,
                    fast_convs=fast_convs,
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
