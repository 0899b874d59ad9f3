"""Tiled inference: a generator's output computed tile by tile, equal to whole-image inference.

    settings = Settings.of_module(models.for_test(module))  # Test mode, as inference runs.
    plan = plan_tiles(module.layout(in_channels), x.shape, tile=512, settings=settings)
    y = run_tiles(plan, params, x)  # x: float NHWC, sides multiples of the size multiple

The executor reads only the layout (`models.layout`), so every network written as a layout is
tiled the same way: ResNet and U-Net generators, any norm. The layout becomes a graph of feature
maps (`build_graph`): the input, each conv's output (before its norm; a pre-activation is part
of the conv), each norm's output (norm and activation), each residual sum and each skip block's
concatenation. Dropout layers are the identity in eval mode (`Settings.deterministic`, test.py
--eval); dropout that stays on draws one mask for the whole map, which tiles cannot reproduce,
so such a network is not tiled.

**Statistics.** Instance and batch norm use statistics of the whole map, so a norm is a barrier:
no tile can be normalised before every tile of its input has been seen. The network therefore
runs as a sequence of passes over a grid of tiles, one per normalised conv (it accumulates the
conv output's per-image, per-channel count, mean and sum of squared deviations over all tiles,
merged in float64, and keeps the output on the host if the plan says so) and one per other kept
map (a residual sum, the output). A norm inside a pass uses the global statistics of its own
earlier pass. Batch norm in test mode (`models.for_test`, `Settings.norm_per_image`) uses each
image's own statistics, as instance norm, so images never interact; in training mode
(norm_per_image False) it merges them over the batch.

**Halos.** A pass computes its target tile from kept maps (host arrays). The window each layer
needs is derived backwards from the tile (kernel, stride, padding; for a transposed conv the
input pixels that reach the tile), so a tile sees exactly the context whole-image inference sees.
Inside a window, positions beyond the true border of a map are set as the whole-image network
pads there (reflected for reflection padding; zero for zero padding and for the implicit zeros
of a transposed conv); interior tile edges take real neighbour pixels.

**Memory.** A map is kept on the host (`_kept`) if it is the input or the output, a residual sum
(one map instead of the two it adds), or a conv output that would cost more than
`RECOMPUTE_MACS_PER_VALUE` multiply-adds per value to recompute from the kept maps it depends on;
then also every other conv output whose keeping does not raise the most host memory the plan
holds at once. The others are recomputed inside each pass that needs them, and a kept map is
freed after the last pass that reads it. For resnet_9blocks with ngf 64 only the stem and up_1
are recomputed (in two passes each, ~4% more multiply-adds), and the kept maps alive at once
never hold more than three quarter-resolution maps of 256 channels: 192 bytes per input pixel in
float32 (2.1 GiB for a 4000x3000 photo), plus the caller's input and output. Device memory is
that of one pass over one tile: its windows and the maps computed from them, bounded by the
tile size plus margins (a few pixels), not by the image.

**Shapes.** Every tile of a pass has the same shape: a map is cut into as few tiles as the tile
size allows, of equal length, and where they do not divide it the last one is moved back to end
at the border (overlapping its neighbour, whose values it recomputes; statistics count each
pixel once). So a pass compiles once per image size, and passes with equal programs (the
residual blocks after the first) share one compilation: 11 programs for resnet_9blocks.
"""

import dataclasses
from fractions import Fraction
import functools
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cyclegan_jax.models import layout as layout_lib
from cyclegan_jax.models.layers import ConvNormAct
from cyclegan_jax.models.layers import NORM_EPS
from cyclegan_jax.models.layers import VALID

# Recomputing a map costs its multiply-adds again in every pass that needs it; keeping it costs
# host memory. A conv output is kept when recomputing it would cost more than this per value
# (resnet_9blocks, ngf 64, per value: the stem 147, down_0 870, up_0 and up_1 576, all below;
# down_1 2892 and the residual convs 2304, above).
RECOMPUTE_MACS_PER_VALUE = 1024


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What every layer of the network shares (fields of the module, `of_module`). By default
  batch norm normalises each image by its own statistics, as in test mode (`models.for_test`),
  and dropout is on, as in the official test.py without --eval; dropout that is on has no tiled
  form (its masks are drawn for the whole map), so a layout with dropout layers is tiled only
  when `deterministic`."""
  dtype: str = 'float32'
  fast_convs: bool = True
  norm_per_image: bool = True
  deterministic: bool = False
  norm_running_average: bool = False  # Eval mode: batch norm is a per-channel affine map.

  @classmethod
  def of_module(cls, module) -> 'Settings':
    """The settings of a `layout.LayoutModule` (as `models.for_test(module)` for test mode)."""
    return cls(
        jnp.dtype(module.dtype).name, module.fast_convs, module.norm_per_image,
        module.deterministic, module.norm_running_average)


def _activation(name: Optional[str], x: jax.Array) -> jax.Array:
  if name == 'tanh':  # In float32, as apply_layout does.
    return jnp.tanh(x.astype(jnp.float32))
  if name is None:
    return x
  return layout_lib.ACTIVATIONS[name](x)


# --- windows ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Span:
  """Along one axis, positions [scale * a + offset, ... + length) of a map, for the tile of the
  pass's target that starts at position a (scale: this map's side over the target's)."""
  scale: Fraction
  offset: int
  length: int

  def start(self, a: int) -> int:
    start = self.scale * a + self.offset
    assert start.denominator == 1, (self, a)  # The tile alignment makes every start whole.
    return int(start)

  def hull(self, other: Optional['Span']) -> 'Span':
    if other is None:
      return self
    assert other.scale == self.scale, (self, other)
    offset = min(self.offset, other.offset)
    end = max(self.offset + self.length, other.offset + other.length)
    return Span(self.scale, offset, end - offset)


# --- the network as a graph of feature maps -----------------------------------------------------
# Each op says what its inputs' windows must hold for a window of its output (`input_span`), may
# widen its own window (`align`), and computes its output window from its inputs' (`apply`).


@dataclasses.dataclass(frozen=True)
class Load:
  """A kept map (or the input): its window is read from the host; `args` is that window."""

  def apply(self, inputs, args, settings: Settings) -> jax.Array:
    del inputs, settings
    return args


@dataclasses.dataclass(frozen=True)
class ConvOp:
  """A layout `Conv` up to its norm (the activation too if it has none): [reflection pad] ->
  conv or transposed conv with zero padding. In a pass, `border` holds per axis how many
  positions at the start and end of its input window may lie beyond the map's true border, and
  `crop` where its output window starts in what a transposed conv computes (of `out_lengths`)."""
  conv: layout_lib.Conv  # Without its names: equal convs give equal programs.
  in_channels: int
  border: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
  crop: tuple[int, int] = (0, 0)
  out_lengths: tuple[int, int] = (0, 0)  # A transposed conv's output window, in a pass.
  # Batch norm with running statistics (eval mode): pointwise, so part of the conv's op, with
  # the layer's activation.
  running_norm: bool = False

  def macs_per_pixel(self, scale: Fraction) -> Fraction:
    """Multiply-adds per input-image pixel, for an output map `scale` times the input's side."""
    conv = self.conv
    macs = conv.kernel**2 * self.in_channels * conv.features * scale**2
    return macs / conv.stride**2 if conv.transpose else macs

  def _transposed_inputs(self, span: Span) -> tuple[int, int]:
    """The first and last input positions that reach `span` (aligned to the stride)."""
    conv = self.conv
    assert span.offset % conv.stride == 0, span
    base = span.offset // conv.stride
    first = base + _ceil_div(conv.padding - conv.kernel + 1, conv.stride)
    last = base + (span.length - 1 + conv.padding) // conv.stride
    return first, last

  def align(self, span: Span) -> Span:
    """A transposed conv computes whole stride periods: its window starts at a multiple."""
    if not self.conv.transpose:
      return span
    stride = self.conv.stride
    offset = span.offset // stride * stride
    end = _ceil_div(span.offset + span.length, stride) * stride
    return Span(span.scale, offset, end - offset)

  def input_span(self, span: Span, index: int) -> Span:
    del index
    conv = self.conv
    if not conv.transpose:
      pad = conv.reflect + conv.padding
      return Span(span.scale * conv.stride, span.offset * conv.stride - pad,
                  conv.stride * (span.length - 1) + conv.kernel)
    first, last = self._transposed_inputs(span)
    return Span(span.scale / conv.stride, first, last - first + 1)

  def crop_offset(self, span: Span) -> int:
    """Where the output window starts in a transposed conv's output of its input window."""
    return span.offset - self.conv.stride * self._transposed_inputs(span)[0]

  def apply(self, inputs, args, settings: Settings) -> jax.Array:
    (x,) = inputs
    params, borders = args
    conv = self.conv
    if conv.pre_activation is not None:  # Elementwise: before or after the borders alike.
      x = layout_lib.ACTIVATIONS[conv.pre_activation](x)
    x = _set_borders(x, borders, self.border)
    module = ConvNormAct(conv.features,
                         conv.kernel,
                         strides=conv.stride,
                         padding=conv.lax_padding if conv.transpose else VALID,
                         transpose=conv.transpose,
                         use_bias=conv.bias,
                         dtype=jnp.dtype(settings.dtype),
                         fast_convs=settings.fast_convs)
    y = module.apply({'params': {'conv': params['conv']}}, x)
    if conv.transpose:
      (crop_h, crop_w), (length_h, length_w) = self.crop, self.out_lengths
      y = y[:, crop_h:crop_h + length_h, crop_w:crop_w + length_w]
    if self.running_norm:  # The formula of layers.BatchStatsNorm with running statistics.
      norm = params['norm']
      y32 = ((y.astype(jnp.float32) - norm['mean']) * jax.lax.rsqrt(norm['var'] + NORM_EPS) *
             norm['scale'] + norm['bias'])
      return _activation(conv.activation, y32.astype(y.dtype))
    return y if conv.norm != 'none' else _activation(conv.activation, y)


@dataclasses.dataclass(frozen=True)
class NormOp:
  """Instance or batch norm with given statistics (mean and variance per image and channel,
  `args`), then the layer's activation; the formulas of `layers.instance_norm` and
  `layers.BatchStatsNorm`."""
  norm: str
  activation: Optional[str]

  def input_span(self, span: Span, index: int) -> Span:
    del index
    return span

  def apply(self, inputs, args, settings: Settings) -> jax.Array:
    del settings
    (x,) = inputs
    params, mean, var = args
    x32 = x.astype(jnp.float32)
    y = (x32 - mean[:, None, None, :]) * jax.lax.rsqrt(var[:, None, None, :] + NORM_EPS)
    if self.norm == 'batch':
      y = y * params['norm']['scale'] + params['norm']['bias']
    return _activation(self.activation, y.astype(x.dtype))


@dataclasses.dataclass(frozen=True)
class AddOp:
  """The sum of a residual block: input + body."""

  def input_span(self, span: Span, index: int) -> Span:
    del index
    return span

  def apply(self, inputs, args, settings: Settings) -> jax.Array:
    del args, settings
    return inputs[0] + inputs[1]


@dataclasses.dataclass(frozen=True)
class ConcatOp:
  """The output of a skip block (a U-Net level): concat([input, body]) on channels."""

  def input_span(self, span: Span, index: int) -> Span:
    del index
    return span

  def apply(self, inputs, args, settings: Settings) -> jax.Array:
    del args, settings
    return jnp.concatenate([inputs[0], inputs[1].astype(inputs[0].dtype)], axis=-1)


@dataclasses.dataclass(frozen=True)
class Node:
  """One feature map of the network: `op` of the maps `inputs`, with `channels` channels and
  sides `scale` times the input's; `path` names the layer's parameters."""
  op: Any
  inputs: tuple[int, ...]
  channels: int
  scale: Fraction
  path: tuple[str, ...] = ()

  @property
  def name(self) -> str:
    kind = {
        ConvOp: 'conv',
        NormOp: 'norm',
        AddOp: 'sum',
        ConcatOp: 'concat',
        Load: 'input'
    }[type(self.op)]
    return '/'.join(self.path) + f' ({kind})' if self.path else kind


def build_graph(layers: layout_lib.Layout,
                in_channels: int,
                deterministic: bool = False,
                running_average: bool = False) -> list[Node]:
  """The layout's feature maps in computation order; node 0 is the input, the last the output.
  Dropout layers are the identity if `deterministic`, else a ValueError (no tiled form). With
  `running_average` (eval mode) a batch norm is pointwise and part of its conv's op.

  A new kind of layout node is one more case here, with an op that defines `input_span` and
  `apply` (and, if it must be kept on the host, a rule in `_kept`).
  """
  nodes = [Node(Load(), (), in_channels, Fraction(1))]

  def add(node: Node) -> int:
    nodes.append(node)
    return len(nodes) - 1

  def visit(layers, prefix, v):
    for layer in layers:
      if isinstance(layer, layout_lib.Residual):
        body = visit(layer.body, (*prefix, layer.name), v)
        v = add(Node(AddOp(), (v, body), nodes[v].channels, nodes[v].scale, (*prefix, layer.name)))
      elif isinstance(layer, layout_lib.Skip):
        body = visit(layer.body, (*prefix, layer.name), v)
        channels = nodes[v].channels + nodes[body].channels
        v = add(Node(ConcatOp(), (v, body), channels, nodes[v].scale, (*prefix, layer.name)))
      elif isinstance(layer, layout_lib.Dropout):
        if not deterministic:
          raise ValueError(
              'dropout that stays on draws its masks for the whole map: tiles cannot reproduce '
              'them (tile the network in eval mode, with deterministic dropout)')
      elif isinstance(layer, layout_lib.Conv):
        path = (*prefix, layer.name)
        factor = Fraction(layer.stride) if layer.transpose else Fraction(1, layer.stride)
        scale = nodes[v].scale * factor
        conv = dataclasses.replace(layer, name='', torch='', torch_norm='')
        running_norm = running_average and layer.norm == 'batch'
        v = add(
            Node(ConvOp(conv, nodes[v].channels, running_norm=running_norm), (v,), layer.features,
                 scale, path))
        if layer.norm != 'none' and not running_norm:
          v = add(Node(NormOp(layer.norm, layer.activation), (v,), layer.features, scale, path))
      else:
        raise TypeError(f'Tiled inference has no rule for the layout node {layer!r}')
    return v

  visit(layers, (), 0)
  return nodes


def _map_sides(nodes: list[Node], height: int, width: int) -> list[tuple[int, int]]:
  """(height, width) of every map for an input of height x width."""
  sides = []
  for node in nodes:
    if not node.inputs:
      sides.append((height, width))
      continue
    side = sides[node.inputs[0]]
    if isinstance(node.op, ConvOp):
      conv = node.op.conv
      if conv.transpose:
        side = tuple((n - 1) * conv.stride - 2 * conv.padding + conv.kernel + conv.output_padding
                     for n in side)
      else:
        pad = conv.reflect + conv.padding
        side = tuple((n + 2 * pad - conv.kernel) // conv.stride + 1 for n in side)
    if side != (height * node.scale, width * node.scale):
      raise ValueError(f'{node.name} is {side[0]}x{side[1]} for a {height}x{width} input, not '
                       f'{node.scale} times its sides: tiling needs sides that scale exactly')
    sides.append(side)
  return sides


def _feeds_norm(nodes: list[Node], index: int) -> bool:
  return any(isinstance(node.op, NormOp) and index in node.inputs for node in nodes)


def _members(nodes: list[Node], kept: set[int], target: int) -> list[int]:
  """The maps the pass for `target` computes or loads: back from it until kept maps."""
  members, stack = set(), [target]
  while stack:
    index = stack.pop()
    if index not in members:
      members.add(index)
      if index == target or index not in kept:
        stack.extend(nodes[index].inputs)
  return sorted(members)


def _pass_targets(nodes: list[Node], kept: set[int]) -> list[int]:
  """One pass per normalised conv (its statistics) and per other kept map, in network order."""
  return [index for index in range(1, len(nodes)) if _feeds_norm(nodes, index) or index in kept]


def _last_reads(nodes: list[Node], kept: set[int], targets: list[int]) -> dict[int, int]:
  """For each kept map, the number of the last pass that reads it."""
  last = {}
  for number, target in enumerate(targets):
    for index in _members(nodes, kept, target):
      if index != target and index in kept:
        last[index] = number
  return last


def _live_peak(nodes: list[Node], kept: set[int], size: Callable[[int], Any]):
  """The most that the kept maps alive at once hold, by `size(map)`: each from the pass that
  computes it (the input from the start) to the last pass that reads it (the output to the end)."""
  targets = _pass_targets(nodes, kept)
  last = _last_reads(nodes, kept, targets)
  live, peak = {0}, 0
  for number, target in enumerate(targets):
    if target in kept:
      live.add(target)
    peak = max(peak, sum(size(i) for i in live))
    live -= {i for i in live if last.get(i, number) <= number and i != len(nodes) - 1}
  return peak


def _values(node: Node) -> Fraction:
  """Values per input pixel."""
  return node.channels * node.scale**2


def _kept(nodes: list[Node], threshold: float, within_peak: bool) -> set[int]:
  """The maps kept on the host (see the module docstring): the input, the output, residual sums
  and conv outputs that cost more than `threshold` multiply-adds per value to recompute; then,
  if `within_peak`, every other conv output (the costliest to recompute first) whose keeping
  does not raise the most host memory that the plan holds at once."""
  kept = {0, len(nodes) - 1}
  macs: dict[int, Fraction] = {}  # Per input pixel, to recompute the map from kept maps.
  per_value: dict[int, Fraction] = {}
  for index, node in enumerate(nodes):
    own = node.op.macs_per_pixel(node.scale) if isinstance(node.op, ConvOp) else 0
    macs[index] = own + sum(macs[i] for i in node.inputs if i not in kept)
    per_value[index] = macs[index] / _values(node)
    if isinstance(node.op, AddOp) or (isinstance(node.op, ConvOp) and per_value[index] > threshold):
      kept.add(index)
  if within_peak:
    values = lambda index: _values(nodes[index])  # pylint: disable=unnecessary-lambda-assignment
    peak = _live_peak(nodes, kept, values)
    candidates = [i for i, node in enumerate(nodes) if isinstance(node.op, ConvOp)]
    for index in sorted(set(candidates) - kept, key=lambda i: -per_value[i]):
      trial = _live_peak(nodes, kept | {index}, values)
      if trial <= peak:
        kept.add(index)
        peak = trial
  return kept


# --- the plan ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Step:
  """One map computed in a pass program: `op` of the registers `inputs`, each with the static
  slice (offset, length) per axis of its window that the op reads."""
  op: Any
  inputs: tuple[tuple[int, tuple[int, int], tuple[int, int]], ...]


@dataclasses.dataclass(frozen=True)
class Program:
  """What one tile of a pass computes (static under jit): the steps, the last one the target."""
  steps: tuple[Step, ...]
  settings: Settings
  store: bool
  stats: bool


@dataclasses.dataclass
class Pass:
  """One sweep over the tiles of `target`'s map; `nodes[i]` is the map step i computes."""
  target: int
  program: Program
  nodes: tuple[int, ...]
  spans: tuple[tuple[Span, Span], ...]  # Step i's window, per axis.
  needs: tuple[tuple[Span, Span], ...]  # For a conv step, the window it reads of its input.
  starts: tuple[list[int], list[int]]  # The tiles' first positions, per axis.
  lengths: tuple[int, int]  # The tile, per axis.
  free: tuple[int, ...] = ()  # Kept maps that no later pass reads.

  @property
  def tiles(self) -> int:
    return len(self.starts[0]) * len(self.starts[1])


@dataclasses.dataclass
class TilePlan:
  """How an input of `shape` (NHWC, sides multiples of the size multiple) is translated in
  tiles of at most `tile` x `tile` input pixels."""
  shape: tuple[int, ...]
  tile: int
  nodes: list[Node]
  sides: list[tuple[int, int]]
  kept: set[int]
  passes: list[Pass]

  @property
  def steps(self) -> int:
    """Tiles over all passes (what a progress bar counts)."""
    return sum(p.tiles for p in self.passes)

  def map_bytes(self, index: int, itemsize: int = 4) -> int:
    height, width = self.sides[index]
    return self.shape[0] * height * width * self.nodes[index].channels * itemsize

  @property
  def peak_host_bytes(self) -> int:
    """The most bytes of kept maps alive at once (float32), input and output included."""
    return _live_peak(self.nodes, self.kept, self.map_bytes)

  @property
  def margin(self) -> int:
    """The widest context a pass reads around its tile, in input pixels."""
    widest = 0
    for p in self.passes:
      for step, node, spans in zip(p.program.steps, p.nodes, p.spans):
        if node == p.target or not isinstance(step.op, Load):
          continue
        for span, length in zip(spans, p.lengths):
          outside = max(-span.offset, span.offset + span.length - length * span.scale)
          widest = max(widest, math.ceil(outside / self.nodes[node].scale))
    return widest

  def describe(self) -> str:
    programs = len({p.program for p in self.passes})
    return (f'{self.tile}-pixel tiles, {len(self.passes)} passes of {self.steps} tiles in all '
            f'({programs} programs), {len(self.kept)} maps kept on the host, at most '
            f'{self.peak_host_bytes / 2**20:.0f} MiB at once')


def _tile_starts(size: int, length: int) -> list[int]:
  """Starts of tiles of `length` covering [0, size); the last one moved back to end at size."""
  return [min(start, size - length) for start in range(0, size, length)]


def _owned(starts: list[int], length: int, size: int) -> list[tuple[int, int]]:
  """Per tile, the part [begin, end) of it (tile coordinates) that no earlier tile covers."""
  owned = []
  for index, start in enumerate(starts):
    begin = index * length - start
    owned.append((begin, min(start + length, size) - start))
  return owned


def _plan_pass(nodes, sides, kept, target, tile, settings, stats) -> Pass:
  """The program and windows of the pass that computes map `target` in tiles."""
  order = _members(nodes, kept, target)
  loads = {i for i in order if i != target and i in kept}

  # Tile starts must make every window start whole (and a transposed conv's output window start
  # on its stride): a multiple of `align` in the target's pixels.
  scales = {i: nodes[i].scale / nodes[target].scale for i in order}
  align = 1
  for i in order:
    align = math.lcm(align, scales[i].denominator)
    op = nodes[i].op
    if isinstance(op, ConvOp) and op.conv.transpose and i not in loads:
      align = math.lcm(align, (scales[i] / op.conv.stride).denominator)
  target_side = sides[target]
  if any(side % align for side in target_side):
    raise ValueError(f'{nodes[target].name}: sides {target_side} are not multiples of {align}')
  # As few tiles as `tile` allows, of equal length (a multiple of `align`), so that the last
  # one overlaps its neighbour as little as possible.
  longest = max(align, int(tile * nodes[target].scale) // align * align)
  lengths = tuple(
      min(side,
          _ceil_div(_ceil_div(side, _ceil_div(side, longest)), align) * align)
      for side in target_side)

  # Windows, back from the target tile; a map read by several steps computes their hull.
  spans: dict[int, list[Optional[Span]]] = {i: [None, None] for i in order}
  needs: dict[int, tuple[Span, Span]] = {}
  spans[target] = [Span(Fraction(1), 0, length) for length in lengths]
  for i in reversed(order):
    node = nodes[i]
    if i in loads:
      continue
    if isinstance(node.op, ConvOp):
      spans[i] = [node.op.align(span) for span in spans[i]]
    for k, j in enumerate(node.inputs):
      need = [node.op.input_span(span, k) for span in spans[i]]
      spans[j] = [n.hull(s) for n, s in zip(need, spans[j])]
      if isinstance(node.op, ConvOp):
        needs[i] = tuple(need)

  starts = tuple(_tile_starts(side, length) for side, length in zip(target_side, lengths))
  register = {node: r for r, node in enumerate(order)}
  steps = []
  for i in order:
    node = nodes[i]
    if i in loads:
      steps.append(Step(Load(), ()))
      continue
    op = node.op
    inputs = []
    for k, j in enumerate(node.inputs):
      need = [op.input_span(span, k) for span in spans[i]]
      inputs.append(
          (register[j], *((n.offset - s.offset, n.length) for n, s in zip(need, spans[j]))))
    if isinstance(op, ConvOp):
      borders = []
      for axis in range(2):
        need, side = needs[i][axis], sides[node.inputs[0]][axis]
        head = max(0, -need.start(0))
        tail = max(0, need.start(starts[axis][-1]) + need.length - side)
        if head + tail >= need.length:
          head, tail = need.length, 0
        borders.append((head, tail))
      crop = tuple(op.crop_offset(span) if op.conv.transpose else 0 for span in spans[i])
      op = dataclasses.replace(op,
                               border=tuple(borders),
                               crop=crop,
                               out_lengths=tuple(span.length for span in spans[i]))
    steps.append(Step(op, tuple(inputs)))
  program = Program(tuple(steps), settings, store=target in kept, stats=stats)
  return Pass(target=target,
              program=program,
              nodes=tuple(order),
              spans=tuple(tuple(spans[i]) for i in order),
              needs=tuple(needs.get(i, (None, None)) for i in order),
              starts=starts,
              lengths=lengths)


def plan_tiles(layers: layout_lib.Layout,
               shape: tuple[int, ...],
               tile: int,
               settings: Settings = Settings(),
               threshold: float = RECOMPUTE_MACS_PER_VALUE,
               within_peak: bool = True) -> TilePlan:
  """The passes that translate an NHWC input of `shape` in tiles of at most `tile` x `tile`
  input pixels.

  `threshold` and `within_peak` choose the maps kept on the host (`_kept`; threshold 0 keeps
  every conv output, inf and within_peak=False recompute every one that can be).
  """
  nodes = build_graph(layers, shape[3], settings.deterministic, settings.norm_running_average)
  sides = _map_sides(nodes, shape[1], shape[2])
  kept = _kept(nodes, threshold, within_peak)
  targets = _pass_targets(nodes, kept)
  passes = [
      _plan_pass(nodes, sides, kept, target, tile, settings, stats=_feeds_norm(nodes, target))
      for target in targets
  ]
  for index, number in _last_reads(nodes, kept, targets).items():
    passes[number].free += (index,)
  return TilePlan(tuple(shape), tile, nodes, sides, kept, passes)


# --- running a plan ---------------------------------------------------------------------------


def _border_indices(start: int, length: int, side: int, reflect: int, head: int,
                    tail: int) -> tuple[np.ndarray, np.ndarray]:
  """For the first `head` and last `tail` positions of a window [start, start + length) of a
  map of `side` positions: where in the window their value is (reflected across the border
  within `reflect`), or `length` where it is zero."""

  def local(position):
    if -reflect <= position < 0:
      position = -position
    elif side <= position < side + reflect:
      position = 2 * (side - 1) - position
    if not 0 <= position < side:
      return length  # Out of range: jnp.take fills it with 0.
    index = position - start
    assert 0 <= index < length, (start, length, side, reflect, position)
    return index

  head_indices = [local(start + i) for i in range(head)]
  tail_indices = [local(start + length - tail + i) for i in range(tail)]
  return np.asarray(head_indices, np.int32), np.asarray(tail_indices, np.int32)


def _set_borders(x: jax.Array, indices, counts) -> jax.Array:
  """Replaces the border positions of a window (per axis: its first and last `counts`) by the
  values `_border_indices` names."""
  for axis, (head, tail), (head_indices, tail_indices) in zip((1, 2), counts, indices):
    length = x.shape[axis]
    parts = []
    if head:
      parts.append((0, jnp.take(x, head_indices, axis=axis, mode='fill', fill_value=0)))
    if tail:
      parts.append((length - tail, jnp.take(x, tail_indices, axis=axis, mode='fill', fill_value=0)))
    for start, values in parts:
      x = jax.lax.dynamic_update_slice_in_dim(x, values.astype(x.dtype), start, axis)
  return x


def _tile_moments(y: jax.Array, owned_h: jax.Array, owned_w: jax.Array):
  """Count, mean and sum of squared deviations per image and channel over the tile's own part
  (0/1 masks per axis), in float32."""
  mask = (owned_h[:, None] * owned_w[None, :])[None, :, :, None]
  y32 = y.astype(jnp.float32)
  count = jnp.sum(mask)
  mean = jnp.sum(y32 * mask, axis=(1, 2)) / count
  m2 = jnp.sum(jnp.square(y32 - mean[:, None, None, :]) * mask, axis=(1, 2))
  return count, mean, m2


def _run_program(program: Program, args, owned_h, owned_w):
  registers = []
  for step, step_args in zip(program.steps, args):
    inputs = tuple(registers[r][:, oh:oh + lh, ow:ow + lw] for r, (oh, lh), (ow, lw) in step.inputs)
    registers.append(step.op.apply(inputs, step_args, program.settings))
  y = registers[-1]
  return (y if program.store else None,
          _tile_moments(y, owned_h, owned_w) if program.stats else None)


@functools.lru_cache(maxsize=64)
def _compiled(program: Program) -> Callable:
  return jax.jit(functools.partial(_run_program, program))


class Moments:
  """Per image and channel: count, mean and sum of squared deviations, merged across tiles in
  float64 (Chan et al.'s pairwise update)."""

  def __init__(self):
    self.count, self.mean, self.m2 = 0.0, 0.0, 0.0

  def add(self, count, mean, m2) -> None:
    count, mean, m2 = float(count), np.asarray(mean, np.float64), np.asarray(m2, np.float64)
    total = self.count + count
    delta = mean - self.mean
    self.mean = self.mean + delta * (count / total)
    self.m2 = self.m2 + m2 + np.square(delta) * (self.count * count / total)
    self.count = total

  def statistics(self, over_batch: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Float32 (mean, biased variance), (images, channels): each image's, or with `over_batch`
    (batch norm in training mode) those of the whole batch, for every image."""
    mean, m2 = self.mean, self.m2
    if over_batch:
      batch_mean = mean.mean(axis=0)
      m2 = (m2 + self.count * np.square(mean - batch_mean)).sum(axis=0) / mean.shape[0]
      mean = batch_mean
      mean, m2 = np.broadcast_to(mean, self.mean.shape), np.broadcast_to(m2, self.mean.shape)
    return mean.astype(np.float32), (m2 / self.count).astype(np.float32)


def _read_window(array: np.ndarray, start_h: int, length_h: int, start_w: int,
                 length_w: int) -> np.ndarray:
  """array[:, start_h:+length_h, start_w:+length_w], zeros where that is outside the array."""
  _, height, width, _ = array.shape
  h0, h1 = max(start_h, 0), min(start_h + length_h, height)
  w0, w1 = max(start_w, 0), min(start_w + length_w, width)
  if (h0, h1, w0, w1) == (start_h, start_h + length_h, start_w, start_w + length_w):
    return array[:, h0:h1, w0:w1]
  window = np.zeros((array.shape[0], length_h, length_w, array.shape[3]), array.dtype)
  window[:, h0 - start_h:h1 - start_h, w0 - start_w:w1 - start_w] = array[:, h0:h1, w0:w1]
  return window


def _layer_params(params, path: tuple[str, ...]):
  return functools.reduce(lambda tree, key: tree[key], path, params)


def _tile_args(plan: TilePlan, p: Pass, maps, constants, start_h: int, start_w: int) -> list:
  """The arguments of each step of pass `p`'s program for the tile at (start_h, start_w)."""
  args = []
  for step, node, spans, needs, constant in zip(p.program.steps, p.nodes, p.spans, p.needs,
                                                constants):
    if isinstance(step.op, Load):
      (span_h, span_w) = spans
      args.append(
          _read_window(maps[node], span_h.start(start_h), span_h.length, span_w.start(start_w),
                       span_w.length))
    elif isinstance(step.op, ConvOp):
      source_sides = plan.sides[plan.nodes[node].inputs[0]]
      borders = tuple(
          _border_indices(need.start(start), need.length, side, step.op.conv.reflect, *counts)
          for need, start, side, counts in zip(needs, (start_h,
                                                       start_w), source_sides, step.op.border))
      args.append((constant, borders))
    else:
      args.append(constant)
  return args


def _owned_masks(p: Pass, sides: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
  """Per tile, 0/1 masks per axis of the part of it that no earlier tile covers (where its
  statistics are taken), in the order of the tiles."""
  per_axis = []
  for starts, length, side in zip(p.starts, p.lengths, sides):
    masks = []
    for begin, end in _owned(starts, length, side):
      mask = np.zeros(length, np.float32)
      mask[begin:end] = 1
      masks.append(mask)
    per_axis.append(masks)
  return [(mask_h, mask_w) for mask_h in per_axis[0] for mask_w in per_axis[1]]


def run_tiles(plan: TilePlan,
              params: dict[str, Any],
              x: np.ndarray,
              progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
  """The network's float32 output for `x` (NHWC, of `plan.shape`), computed as `plan` says.

  `progress(n)` is called after every n tiles (plan.steps in all).
  """
  if tuple(x.shape) != plan.shape:
    raise ValueError(f'the plan is for inputs of shape {plan.shape}, got {x.shape}')
  nodes = plan.nodes
  maps: dict[int, np.ndarray] = {0: np.asarray(x)}
  statistics: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # Of each normalised conv's output.
  for p in plan.passes:
    constants = []  # Per step: the parameters and statistics that every tile shares.
    for step, node in zip(p.program.steps, p.nodes):
      if isinstance(step.op, ConvOp):
        constants.append(_layer_params(params, nodes[node].path))
      elif isinstance(step.op, NormOp):
        norm_params = _layer_params(params, nodes[node].path) if step.op.norm == 'batch' else None
        constants.append((norm_params, *statistics[nodes[node].inputs[0]]))
      else:
        constants.append(None)
    sides = plan.sides[p.target]
    if p.program.store:
      is_output = p.target == len(nodes) - 1
      dtype = np.float32 if is_output else jnp.dtype(p.program.settings.dtype)
      maps[p.target] = np.empty((plan.shape[0], *sides, nodes[p.target].channels), dtype)
    moments = Moments() if p.program.stats else None
    run = _compiled(p.program)

    def finish(start_h, start_w, result, p=p, moments=moments):
      out, tile_moments = result
      if out is not None:
        maps[p.target][:, start_h:start_h + p.lengths[0],
                       start_w:start_w + p.lengths[1]] = np.asarray(out)
      if tile_moments is not None:
        moments.add(*tile_moments)
      if progress is not None:
        progress(1)

    pending = None
    tiles = [(h, w) for h in p.starts[0] for w in p.starts[1]]
    for (start_h, start_w), masks in zip(tiles, _owned_masks(p, sides)):
      result = run(_tile_args(plan, p, maps, constants, start_h, start_w), *masks)
      if pending is not None:  # The tile just dispatched runs while this one is stored.
        finish(*pending)
      pending = (start_h, start_w, result)
    finish(*pending)
    if moments is not None:
      over_batch = nodes[p.target].op.conv.norm == 'batch' and not p.program.settings.norm_per_image
      statistics[p.target] = moments.statistics(over_batch)
    for node in p.free:
      maps.pop(node, None)
  return maps[len(nodes) - 1]
