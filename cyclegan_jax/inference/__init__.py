"""Trained generators for inference: loaded from a run's workdir or an official `.pth` file.

    generator = load_generator(workdir='runs/monet', direction='BtoA')
    generator = load_generator(torch_checkpoint='horse2zebra.pth')
    y = translate_any_size(generator, x)  # x: float32 NHWC in [-1, 1], any height and width

Generators run as the official test.py runs them (`models.for_test`): batch norm normalises each
image by its own statistics, so every image gets the output it gets alone, however images are
batched; dropout layers (generators trained with `model.use_dropout`) stay on unless `eval_mode`
(test.py --eval), their masks drawn from `seed`.

A workdir written by `python -m cyclegan_jax.convert` holds only the networks it was converted
from; `workdir.IMPORTED_FILE` lists them, and asking for another direction is an error.
"""

import functools
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cyclegan_jax import checkpointing
from cyclegan_jax import errors
from cyclegan_jax import models
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
                   eval_mode: bool | None = None) -> Generator:
  """The generator of `direction` ('AtoB' = G, 'BtoA' = F) from a workdir, or the one generator
  that an official `.pth` file holds (then `direction` only labels it).

  fast_convs=False gives plain lax convolutions (for exporters); both compute the same function.
  eval_mode: dropout off (test.py --eval); None: the workdir's config.model.eval_mode, or off for
  a `.pth` file (whose dropout layers only a ResNet's keys reveal).
  """
  if (workdir is None) == (torch_checkpoint is None):
    raise ValueError('Give exactly one of a workdir and a PyTorch checkpoint.')
  if direction not in DIRECTIONS:
    raise errors.InvalidValueError(
        f'Unknown direction {direction!r}: expected one of {", ".join(DIRECTIONS)}')
  if torch_checkpoint is not None:
    generator = generator_from_torch(torch_checkpoint, fast_convs)
    return generator._replace(module=generator.module.clone(deterministic=bool(eval_mode)))

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
  module = _build(config, out_channels, fast_convs).clone(deterministic=eval_mode)
  return Generator(module=module,
                   params=state.params[network],
                   in_channels=in_channels,
                   out_channels=out_channels,
                   description=f'{direction} generator {network} of {workdir} at step '
                   f'{restored_step}')


def generator_from_torch(path: str | Path, fast_convs: bool = True) -> Generator:
  """An official ResnetGenerator or UnetGenerator `.pth` (zip or legacy format), architecture
  from its keys."""
  state_dict = pth.load_state_dict(path)
  try:
    params, arch = mapping.generator_params_from_state_dict(state_dict)
  except ValueError as error:
    raise errors.InvalidValueError(
        f'{path} is not an official ResnetGenerator or UnetGenerator state_dict: {error}') from None
  model_config = ml_collections.ConfigDict({**arch, 'fast_convs': fast_convs})
  return Generator(module=models.build_generator(model_config, arch['output_nc']),
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
