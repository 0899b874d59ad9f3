"""Trained generators for inference: loaded from a run's workdir or an official `.pth` file.

    generator = load_generator(workdir='runs/monet', direction='BtoA')
    generator = load_generator(torch_checkpoint='horse2zebra.pth')
    y = translate_any_size(generator, x)  # x: float32 NHWC in [-1, 1], any height and width

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
from cyclegan_jax.torch_io import pth
from cyclegan_jax.torch_io import mapping

DIRECTIONS = {'AtoB': 'G', 'BtoA': 'F'}
SIZE_MULTIPLE = 4  # Two stride-2 downsamplings and two upsamplings.
MIN_SIDE = 8  # The residual blocks' reflection padding needs at least 2x2 maps.


class Generator(NamedTuple):
  module: models.ResnetGenerator
  params: dict[str, Any]  # For module.apply({'params': params}, x).
  in_channels: int
  out_channels: int
  description: str  # Where it came from, for logs and file metadata.


def _build(config: ml_collections.ConfigDict, out_channels: int,
           fast_convs: bool) -> models.ResnetGenerator:
  model_config = config.model.copy_and_resolve_references()
  model_config.fast_convs = fast_convs
  return models.build_generator(model_config, out_channels)


def load_generator(workdir: str | Path | None = None,
                   torch_checkpoint: str | Path | None = None,
                   direction: str = 'AtoB',
                   step: int | None = None,
                   fast_convs: bool = True) -> Generator:
  """The generator of `direction` ('AtoB' = G, 'BtoA' = F) from a workdir, or the one generator
  that an official `.pth` file holds (then `direction` only labels it).

  fast_convs=False gives plain lax convolutions (for exporters); both compute the same function.
  """
  if (workdir is None) == (torch_checkpoint is None):
    raise ValueError('Give exactly one of a workdir and a PyTorch checkpoint.')
  if direction not in DIRECTIONS:
    raise errors.InvalidValueError(
        f'Unknown direction {direction!r}: expected one of {", ".join(DIRECTIONS)}')
  if torch_checkpoint is not None:
    return generator_from_torch(torch_checkpoint, fast_convs)

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
  return Generator(module=_build(config, out_channels, fast_convs),
                   params=state.params[network],
                   in_channels=in_channels,
                   out_channels=out_channels,
                   description=f'{direction} generator {network} of {workdir} at step '
                   f'{restored_step}')


def generator_from_torch(path: str | Path, fast_convs: bool = True) -> Generator:
  """An official ResnetGenerator `.pth` (zip or legacy format), architecture from its keys."""
  state_dict = pth.load_state_dict(path)
  try:
    params, arch = mapping.generator_params_from_state_dict(state_dict)
  except ValueError as error:
    raise errors.InvalidValueError(
        f'{path} is not an official ResnetGenerator state_dict: {error}') from None
  module = models.ResnetGenerator(output_nc=arch['output_nc'],
                                  ngf=arch['ngf'],
                                  num_blocks=arch['num_blocks'],
                                  norm=arch['norm'],
                                  fast_convs=fast_convs)
  return Generator(module=module,
                   params=jax.tree.map(jnp.asarray, params),
                   in_channels=arch['input_nc'],
                   out_channels=arch['output_nc'],
                   description=f'{path} (resnet_{arch["num_blocks"]}blocks, ngf {arch["ngf"]}, '
                   f'{arch["norm"]} norm)')


def padding_for(size: int) -> int:
  """Rows (or columns) of reflection padding that make `size` a multiple of SIZE_MULTIPLE."""
  return -size % SIZE_MULTIPLE


def check_size(height: int, width: int, name: str = 'image') -> None:
  if min(height, width) < MIN_SIDE:
    raise errors.InvalidValueError(
        f'{name} is {width}x{height} pixels; the generator needs at least '
        f'{MIN_SIDE} pixels on each side')


def pad_to_multiple(x: jax.Array) -> jax.Array:
  """Reflection-pads NHWC `x` at the bottom and right to multiples of SIZE_MULTIPLE."""
  pad_h, pad_w = padding_for(x.shape[1]), padding_for(x.shape[2])
  if pad_h == pad_w == 0:
    return x
  return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode='reflect')


def apply_any_size(module: nn.Module, params: dict[str, Any], x: jax.Array) -> jax.Array:
  """G(x) for any height and width: padded to multiples of 4, translated, cropped back."""
  height, width = x.shape[1:3]
  check_size(height, width)
  return module.apply({'params': params}, pad_to_multiple(x))[:, :height, :width]


@functools.lru_cache(maxsize=8)
def _jitted_apply(module: models.ResnetGenerator):
  return jax.jit(functools.partial(apply_any_size, module))


def translate_any_size(generator: Generator, x: np.ndarray | jax.Array) -> np.ndarray:
  """The translated float32 NHWC batch in [-1, 1], the size of `x` (one compile per shape)."""
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 4 or x.shape[-1] != generator.in_channels:
    raise ValueError(f'expected a float NHWC batch with {generator.in_channels} channels, got '
                     f'shape {tuple(x.shape)}')
  return np.asarray(_jitted_apply(generator.module)(generator.params, x))
