"""Trained generators for inference: loaded from a run's workdir or an official `.pth` file.

    generator = load_generator(workdir='runs/monet', direction='BtoA')
    generator = load_generator(torch_checkpoint='horse2zebra.pth')
    y = translate_any_size(generator, x)  # x: float32 NHWC in [-1, 1], any height and width
    y = translate(generator, x, max_memory='2G')  # In tiles if the whole image needs more.

`translate` runs the whole image at once when XLA's compiled program for it fits the memory
budget, and otherwise in tiles (`tiling`): the same output, in memory bounded by the tile size.

Generators run as the official test.py runs them (`models.for_test`): batch norm normalises each
image by its own statistics, so every image gets the output it gets alone, however images are
batched; dropout layers (generators trained with `model.use_dropout`) stay on, their masks drawn
from `seed`. In `eval_mode` (test.py --eval) dropout is off and batch norm uses the running
statistics kept in training, which the generator's params then hold. Tiles keep this: batch-norm
statistics are each image's own over all its tiles; a generator with dropout on is only
translated whole, since its masks are drawn for the whole image.

A workdir written by `python -m cyclegan_jax.convert` holds only the networks it was converted
from; `workdir.IMPORTED_FILE` lists them, and asking for another direction is an error.
"""

import functools
import os
from pathlib import Path
import re
from typing import Any, Callable, NamedTuple, Optional

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cyclegan_jax import checkpointing
from cyclegan_jax import errors
from cyclegan_jax import models
from cyclegan_jax import state as state_lib
from cyclegan_jax.inference import tiling
from cyclegan_jax.models import layout as layout_lib
from cyclegan_jax.torch_io import pth
from cyclegan_jax.torch_io import mapping

DIRECTIONS = {'AtoB': 'G', 'BtoA': 'F'}


class Generator(NamedTuple):
  module: nn.Module  # A network with a `layout(in_channels)`, e.g. models.ResnetGenerator.
  params: dict[str, Any]  # For module.apply({'params': params}, x).
  in_channels: int
  out_channels: int
  description: str  # Where it came from, for logs and file metadata.

  @property
  def layout(self) -> layout_lib.Layout:
    return self.module.layout(self.in_channels)

  @property
  def min_side(self) -> int:
    """The smallest height and width it translates (any size from there on: see apply_any_size)."""
    return layout_lib.min_side(self.layout)


def _build(config: ml_collections.ConfigDict, out_channels: int,
           fast_convs: bool) -> layout_lib.LayoutModule:
  model_config = config.model.copy_and_resolve_references()
  model_config.fast_convs = fast_convs
  return models.build_generator(model_config, out_channels)


def load_generator(workdir: str | Path | None = None,
                   torch_checkpoint: str | Path | None = None,
                   direction: str = 'AtoB',
                   step: int | None = None,
                   fast_convs: bool = True,
                   eval_mode: bool | None = None,
                   weights: str | None = None) -> Generator:
  """The generator of `direction` ('AtoB' = G, 'BtoA' = F) from a workdir, or the one generator
  that an official `.pth` file holds (then `direction` only labels it).

  fast_convs=False gives plain lax convolutions (for exporters); both compute the same function.
  eval_mode: dropout off and batch norm with running statistics (test.py --eval); None: the
  workdir's config.model.eval_mode, or off for a `.pth` file (whose dropout layers only a
  ResNet's keys reveal).
  weights: 'ema' (the moving average of a run with config.ema_decay > 0) or 'raw' (the trained
  weights); None: the average if the run keeps one (`state.generator_weights`).
  """
  if (workdir is None) == (torch_checkpoint is None):
    raise ValueError('Give exactly one of a workdir and a PyTorch checkpoint.')
  if direction not in DIRECTIONS:
    raise errors.InvalidValueError(
        f'Unknown direction {direction!r}: expected one of {", ".join(DIRECTIONS)}')
  if torch_checkpoint is not None:
    if weights == 'ema':
      raise errors.InvalidValueError(
          f'{torch_checkpoint} holds one set of generator weights, no moving average: leave '
          '--weights unset')
    generator = generator_from_torch(torch_checkpoint, fast_convs, eval_mode=bool(eval_mode))
    return generator

  network = DIRECTIONS[direction]
  imported = checkpointing.imported_networks(workdir)
  if imported is not None and network not in imported:
    raise errors.InvalidValueError(
        f'{workdir} was converted from {", ".join(sorted(set(imported.values())))}, which holds '
        f'no {direction} generator ({network}); it has {", ".join(sorted(imported))}.')
  config = checkpointing.saved_config(workdir)
  state, restored_step = checkpointing.restore_train_state(workdir, step)
  in_channels, out_channels = config.model.channels_A, config.model.channels_B
  if direction == 'BtoA':
    in_channels, out_channels = out_channels, in_channels
  if eval_mode is None:
    eval_mode = config.model.eval_mode
  module = _build(config, out_channels, fast_convs)
  average = state_lib.generator_weights(state.params, network, weights) is not state.params[network]
  params = state_lib.translation_params(state.params, weights,
                                        state.batch_stats if eval_mode else None)[network]
  if eval_mode:
    module = models.for_test(module, eval_mode=True)
    _check_running_statistics(params, f'{workdir} (step {restored_step})')
  return Generator(module=module,
                   params=params,
                   in_channels=in_channels,
                   out_channels=out_channels,
                   description=f'{direction} generator {network} of {workdir} at step '
                   f'{restored_step}' + (' (moving average)' if average else ''))


def _check_running_statistics(params: dict[str, Any], source: str) -> None:
  """An InvalidValueError if eval-mode `params` lack a batch norm's running statistics."""
  if models.has_batch_norm(params) and not models.split_running_statistics(params)[1]:
    raise errors.InvalidValueError(
        f'{source} keeps no batch-norm running statistics, which eval mode (--eval, '
        'config.model.eval_mode) normalises with: translate without --eval (each image by its '
        'own statistics, as the official test.py)')


def generator_from_torch(path: str | Path,
                         fast_convs: bool = True,
                         eval_mode: bool = False) -> Generator:
  """An official ResnetGenerator or UnetGenerator `.pth` (zip or legacy format), architecture
  from its keys. `eval_mode`: dropout off and batch norm with the file's running statistics
  (test.py --eval)."""
  state_dict = pth.load_state_dict(path)
  try:
    params, arch = mapping.generator_params_from_state_dict(state_dict, eval_mode)
  except ValueError as error:
    raise errors.InvalidValueError(
        f'{path} is not an official ResnetGenerator or UnetGenerator state_dict: {error}') from None
  model_config = ml_collections.ConfigDict({**arch, 'fast_convs': fast_convs})
  module = models.build_generator(model_config, arch['output_nc'])
  if eval_mode:
    module = models.for_test(module, eval_mode=True)
    _check_running_statistics(params, str(path))
  return Generator(module=module,
                   params=jax.tree.map(jnp.asarray, params),
                   in_channels=arch['input_nc'],
                   out_channels=arch['output_nc'],
                   description=f'{path} ({arch["generator"]}, ngf {arch["ngf"]}, '
                   f'{arch["norm"]} norm)')


def check_size(height: int, width: int, min_side: int, name: str = 'image') -> None:
  if min(height, width) < min_side:
    raise errors.InvalidValueError(
        f'{name} is {width}x{height} pixels; the generator needs at least '
        f'{min_side} pixels on each side')


def pad_to_multiple(x: jax.Array, multiple: int) -> jax.Array:
  """Reflection-pads NHWC `x` at the bottom and right to multiples of `multiple`; also for the
  symbolic sizes of an export (needs sides of at least `multiple`).

  With symbolic sizes the padding is by `multiple - 1` and the first `multiple * ceil(size /
  multiple)` rows are kept: reflection padding by fewer rows is a prefix of it.
  """
  height, width = x.shape[1:3]
  if isinstance(height, int) and isinstance(width, int):
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == pad_w == 0:
      return x
    return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode='reflect')
  padded_height = multiple * ((height + multiple - 1) // multiple)
  padded_width = multiple * ((width + multiple - 1) // multiple)
  x = jnp.pad(x, ((0, 0), (0, multiple - 1), (0, multiple - 1), (0, 0)), mode='reflect')
  return jax.lax.slice(x, (0, 0, 0, 0), (x.shape[0], padded_height, padded_width, x.shape[3]))


def apply_any_size(module: nn.Module,
                   params: dict[str, Any],
                   x: jax.Array,
                   seed: int | jax.Array = 0) -> jax.Array:
  """G(x) for any height and width (at least the layout's min_side), in test mode
  (`models.for_test`; dropout as `module.deterministic` says, masks from `seed`):
  reflection-padded at the bottom and right to multiples of what the layout needs, translated,
  cropped back."""
  layers = module.layout(x.shape[-1])
  height, width = x.shape[1:3]
  if isinstance(height, int) and isinstance(width, int):
    check_size(height, width, layout_lib.min_side(layers))
  module = models.for_test(module)
  y = module.apply({'params': params},
                   pad_to_multiple(x, layout_lib.size_multiple(layers)),
                   rngs={'dropout': jax.random.PRNGKey(seed)})
  return jax.lax.slice(y, (0, 0, 0, 0), (y.shape[0], height, width, y.shape[3]))


@functools.lru_cache(maxsize=8)
def _jitted_apply(module: nn.Module):
  return jax.jit(functools.partial(apply_any_size, module))


def translate_any_size(generator: Generator,
                       x: np.ndarray | jax.Array,
                       seed: int = 0) -> np.ndarray:
  """The translated float32 NHWC batch in [-1, 1], the size of `x` (one compile per shape); each
  image as it is translated alone. `seed` draws the dropout masks of a generator that keeps
  dropout on."""
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 4 or x.shape[-1] != generator.in_channels:
    raise ValueError(f'expected a float NHWC batch with {generator.in_channels} channels, got '
                     f'shape {tuple(x.shape)}')
  return np.asarray(_jitted_apply(generator.module)(generator.params, x, seed))


# --- whole image or tiles -----------------------------------------------------------------------

# Tile sides tried, largest first, when images must be tiled. At 512 input pixels the margins
# cost a few percent and a tile's buffers are ~0.3 GB for resnet_9blocks with ngf 64.
TILE_SIZES = (512, 384, 256, 192, 128, 96, 64)
DEFAULT_TILE = TILE_SIZES[0]
_UNITS = {'': 1, 'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}


def parse_memory(value: int | str) -> int:
  """Bytes from an int or a string such as '2G', '512M', '1.5GiB' or '3000000000' (K, M, G and
  T are powers of 1024); InvalidValueError for anything else."""
  if isinstance(value, int) and not isinstance(value, bool) and value > 0:
    return value
  match = re.fullmatch(r'\s*(\d+\.?\d*|\.\d+)\s*([kmgt]?)(i?b)?\s*', str(value), re.IGNORECASE)
  if match is None or float(match.group(1)) <= 0:
    raise errors.InvalidValueError(
        f'max_memory {value!r} is not a memory size: give bytes, or a number with K, M, G or T '
        "(powers of 1024), e.g. '2G' or '512M'")
  return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def default_memory_budget() -> int:
  """90% of the accelerator's free memory; on CPU, 80% of the host memory available now."""
  stats = jax.local_devices()[0].memory_stats()
  if stats and stats.get('bytes_limit'):
    return int(0.9 * (stats['bytes_limit'] - stats.get('bytes_in_use', 0)))
  try:
    with open('/proc/meminfo', encoding='ascii') as meminfo:
      fields = dict(line.split(':', 1) for line in meminfo)
    available = int(fields['MemAvailable'].split()[0]) * 1024
  except (OSError, KeyError, ValueError):
    available = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  return int(0.8 * available)


def _gib(size: float) -> str:
  return f'{size / 2**30:.2f} GiB' if size >= 2**30 else f'{size / 2**20:.0f} MiB'


def _has_dropout(layers: layout_lib.Layout) -> bool:
  return any(
      isinstance(layer, layout_lib.Dropout) or
      (isinstance(layer, layout_lib.BLOCKS) and _has_dropout(layer.body)) for layer in layers)


def dropout_on(module: nn.Module, channels: int) -> bool:
  """Whether the generator keeps dropout on at test time (dropout layers, not eval mode): its
  masks are drawn for the whole batch, so it is translated whole, each batch in one call."""
  return not models.for_test(module).deterministic and _has_dropout(module.layout(channels))


def _refuse_dropout(module: nn.Module, channels: int, why: str) -> None:
  if dropout_on(module, channels):
    raise errors.InvalidValueError(
        f'{why}, but this generator keeps dropout on (as test.py without --eval) and its masks '
        'are drawn for the whole image, which tiles cannot reproduce: translate with --eval '
        '(dropout off), or whole images (no --tile, or a larger --max_memory)')


@functools.lru_cache(maxsize=8)
def _param_shapes(module: nn.Module, channels: int):
  side = layout_lib.min_side(module.layout(channels))
  x = jax.ShapeDtypeStruct((1, side, side, channels), jnp.float32)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), x)['params']


@functools.lru_cache(maxsize=32)
def whole_image_bytes(module: nn.Module, shape: tuple[int, ...]) -> Optional[int]:
  """Device bytes of `translate_any_size` for a float32 NHWC input of `shape`: arguments, output
  and temporaries of its compiled program, as XLA reports them (None where it does not). The
  program is compiled (not run), and a later call of that shape reuses it."""
  params = _param_shapes(module, shape[-1])
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  compiled = _jitted_apply(module).lower(params, x, 0).compile()
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes +
          analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def _padded(shape: tuple[int, ...], layers: layout_lib.Layout) -> tuple[int, ...]:
  multiple = layout_lib.size_multiple(layers)
  return (shape[0], *(-(-side // multiple) * multiple for side in shape[1:3]), shape[3])


@functools.lru_cache(maxsize=32)
def _tile_plan(module: nn.Module, shape: tuple[int, ...], tile: int) -> tiling.TilePlan:
  settings = tiling.Settings.of_module(models.for_test(module))  # As apply_any_size runs it.
  return tiling.plan_tiles(module.layout(shape[-1]), shape, tile, settings)


def smallest_tile(module: nn.Module, channels: int) -> int:
  """The smallest tile a generator takes: a multiple of its size multiple, at least its
  `min_side` and the widest context that one pass of its tiled plan reads around a tile."""
  layers = module.layout(channels)
  multiple, side = layout_lib.size_multiple(layers), layout_lib.min_side(layers)
  nominal = 4 * max(DEFAULT_TILE, side)
  margin = _tile_plan(module, (1, nominal, nominal, channels), DEFAULT_TILE).margin
  return -(-max(side, margin) // multiple) * multiple


def check_tile(module: nn.Module, channels: int, tile: int) -> None:
  """InvalidValueError unless `tile` suits the generator (`smallest_tile`) and the generator can
  be tiled (not with dropout on: `dropout_on`)."""
  _refuse_dropout(module, channels, f'tiles of {tile} pixels were asked for')
  layers = module.layout(channels)
  multiple, smallest = layout_lib.size_multiple(layers), smallest_tile(module, channels)
  if tile < smallest or tile % multiple:
    raise errors.InvalidValueError(
        f'tile {tile} does not suit this generator: tiles must be multiples of {multiple} pixels '
        f'(its downsampling) and at least {smallest} pixels (its smallest input and the context '
        f'each tile reads around it), e.g. the default {DEFAULT_TILE}')


class Translation(NamedTuple):
  """How a batch of one shape is translated: whole (plan None) or in tiles, `per_call` images
  at a time (all of them, or one by one: in test mode images never interact)."""
  per_call: int
  plan: Optional[tiling.TilePlan]
  why: str  # For the log.


def plan_translation(generator: Generator,
                     shape: tuple[int, ...],
                     tile: Optional[int] = None,
                     max_memory: int | str | None = None) -> Translation:
  """Whole images when `tile` is None and XLA's program for them fits `max_memory` (bytes or a
  string for `parse_memory`; default `default_memory_budget()`); else one image at a time if
  that fits, else tiles of `tile` or of the largest size up to DEFAULT_TILE whose buffers (and
  on CPU the kept maps) fit, one image at a time. A generator with dropout on (`dropout_on`) is
  only translated whole, all images in one call (the masks they get without a budget);
  InvalidValueError where that does not fit or tiles are asked for."""
  budget = None if tile is not None else (
      default_memory_budget() if max_memory is None else parse_memory(max_memory))
  return _plan_translation(generator.module, tuple(shape), tile, budget)


@functools.lru_cache(maxsize=32)
def _plan_translation(module: nn.Module, shape: tuple[int, ...], tile: Optional[int],
                      budget: Optional[int]) -> Translation:
  layers = module.layout(shape[-1])
  size = f'{shape[0]} image(s) of {shape[2]}x{shape[1]}'
  if tile is not None:
    check_tile(module, shape[-1], tile)
    plan = _tile_plan(module, _padded((1, *shape[1:]), layers), tile)
    return _logged(Translation(1, plan, f'{size}: in tiles (tile {tile}): {plan.describe()}'))
  need = whole_image_bytes(module, shape)
  if need is None or need <= budget:
    return _logged(
        Translation(shape[0], None, f'{size}: whole ({_gib(need or 0)} of {_gib(budget)})'))
  _refuse_dropout(module, shape[-1], f'{size} need {_gib(need)}, more than the memory budget of '
                  f'{_gib(budget)}')
  if shape[0] > 1:
    single = whole_image_bytes(module, (1, *shape[1:]))
    if single is not None and single <= budget:
      return _logged(Translation(1, None, f'{size}: whole, one by one ({_gib(single)} each)'))
  per_pixel = need / (shape[0] * shape[1] * shape[2])
  padded = _padded((1, *shape[1:]), layers)
  smallest = smallest_tile(module, shape[-1])
  multiple = layout_lib.size_multiple(layers)
  sizes = sorted({max(smallest, size // multiple * multiple) for size in TILE_SIZES}, reverse=True)
  for tile_size in sizes:
    plan = _tile_plan(module, padded, tile_size)
    device = per_pixel * (tile_size + 2 * plan.margin)**2
    host = plan.peak_host_bytes if jax.default_backend() == 'cpu' else 0
    if device + host <= budget:
      break
  else:
    logging.warning(
        '%s: tiles need about %s, more than the memory budget of %s; translating in '
        'the smallest tiles.', size, _gib(device + host), _gib(budget))
  return _logged(
      Translation(
          1, plan, f'{size}: in tiles, the whole image would need '
          f'{_gib(need)} of {_gib(budget)}: {plan.describe()}'))


def _logged(translation: Translation) -> Translation:
  logging.info('Translating %s.', translation.why)
  return translation


def translate(generator: Generator,
              x: np.ndarray | jax.Array,
              *,
              tile: Optional[int] = None,
              max_memory: int | str | None = None,
              seed: int = 0,
              tile_progress: Optional[Callable[[int, int], Callable[[int], None]]] = None,
              translation: Optional[Translation] = None) -> np.ndarray:
  """G(x) for a float NHWC batch in [-1, 1] of any size, whole or in tiles (`plan_translation`,
  or as `translation` says); both give the same result up to float rounding, each image as it is
  translated alone (`translate_any_size`, whose dropout masks `seed` draws).

  tile_progress(first, tiles), if given, is called before each tiled call (of images first,
  first + 1, ...) with its number of tiles, and returns a function called with each number of
  tiles done.
  """
  x = np.asarray(x, np.float32)
  if x.ndim != 4 or x.shape[-1] != generator.in_channels:
    raise ValueError(f'expected a float NHWC batch with {generator.in_channels} channels, got '
                     f'shape {tuple(x.shape)}')
  if translation is None:
    translation = plan_translation(generator, x.shape, tile, max_memory)
  per_call = translation.per_call
  outputs = []
  for first in range(0, len(x), per_call):
    chunk = x[first:first + per_call]
    if translation.plan is None:
      outputs.append(translate_any_size(generator, chunk, seed))
      continue
    check_size(*chunk.shape[1:3], generator.min_side)
    height, width = chunk.shape[1:3]
    _, padded_height, padded_width, _ = translation.plan.shape
    padded = np.pad(chunk, ((0, 0), (0, padded_height - height), (0, padded_width - width), (0, 0)),
                    mode='reflect')
    progress = None if tile_progress is None else tile_progress(first, translation.plan.steps)
    y = tiling.run_tiles(translation.plan, generator.params, padded, progress)
    outputs.append(y[:, :height, :width])
  return np.concatenate(outputs) if len(outputs) > 1 else outputs[0]
