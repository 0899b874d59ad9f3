"""Import official PyTorch CycleGAN / pix2pix state_dicts into the Flax networks of `models`
(numpy only).

A state_dict here is a mapping of key -> array in PyTorch layout, keys as the official
`networks.py` names them (`model.1.weight`, `model.10.conv_block.5.bias`,
`model.model.1.model.3.model.1.weight`, `net.0.weight`, ...), optionally with the `module.`
prefix that DataParallel adds. The converters return the inner parameter dict (numpy float32
arrays) and the architecture, to be used as

    params, arch = generator_params_from_state_dict(state_dict)
    models.build_generator(<a model config with arch's fields>, arch['output_nc'])
        .apply({'params': params}, x)

Architecture (ResnetGenerator or UnetGenerator; NLayerDiscriminator or PixelDiscriminator) and
norm type are inferred from the keys and shapes; the keys and shapes expected then are those of
the network's layout (`models.layout`), walked by `params_from_state_dict`. Norm buffers
(`running_mean`, `running_var`, `num_batches_tracked`: the batch-norm running statistics, which
the official test.py does not use without --eval, and the InstanceNorm statistics saved by
PyTorch < 0.4) are ignored unless batch norm's running statistics are asked for (eval mode);
every other key must be used, and every expected key must be present.
Dropout has no parameters: a ResNet's block indices show it, a U-Net's keys do not (its
`use_dropout` is then False: dropout off, as test.py --no_dropout or --eval).
"""

from typing import Mapping, Optional

import ml_collections
import numpy as np

from cyclegan_jax import config_lib
from cyclegan_jax import errors
from cyclegan_jax import models
from cyclegan_jax.models import layout as layout_lib
from cyclegan_jax.models import resnet
from cyclegan_jax.models import unet

NORM_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')
DATA_PARALLEL_PREFIX = 'module.'


def strip_data_parallel_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {key.removeprefix(DATA_PARALLEL_PREFIX): value for key, value in state_dict.items()}


def _expected_entries(layers: layout_lib.Layout,
                      in_channels: int,
                      running_statistics: bool = False) -> dict:
  """Expected torch key -> (flax path, torch shape) of every conv of `layers` and the norm after
  it, for an input of `in_channels`. Conv weights are (out, in, kH, kW), transposed convs'
  (in, out, kH, kW). `running_statistics`: batch norms' running mean and var too, as `mean` and
  `var` beside the scale and bias (the params of an eval-mode network, `models.for_test`)."""
  entries = {}
  for path, conv, channels in layout_lib.conv_channels(layers, in_channels):
    pair = (channels, conv.features) if conv.transpose else (conv.features, channels)
    entries[f'{conv.torch}.weight'] = ((*path, 'conv', 'kernel'), (*pair, conv.kernel, conv.kernel))
    if conv.bias:
      entries[f'{conv.torch}.bias'] = ((*path, 'conv', 'bias'), (conv.features,))
    if conv.norm == 'batch':
      entries[f'{conv.torch_norm}.weight'] = ((*path, 'norm', 'scale'), (conv.features,))
      entries[f'{conv.torch_norm}.bias'] = ((*path, 'norm', 'bias'), (conv.features,))
      if running_statistics:
        entries[f'{conv.torch_norm}.running_mean'] = ((*path, 'norm', 'mean'), (conv.features,))
        entries[f'{conv.torch_norm}.running_var'] = ((*path, 'norm', 'var'), (conv.features,))
  return entries


def _infer_norm(state_dict: Mapping, first_norm_slot: str, first_normed_conv: str) -> str:
  if f'{first_norm_slot}.weight' in state_dict:
    return 'batch'
  if f'{first_normed_conv}.bias' in state_dict:
    return 'instance'
  return 'none'


def _require(state_dict: Mapping, key: str, ndim: int, what: str) -> tuple[int, ...]:
  if key not in state_dict:
    raise errors.InvalidValueError(f'{what} state_dict is missing key {key!r}')
  shape = tuple(np.shape(state_dict[key]))
  if len(shape) != ndim:
    raise errors.InvalidValueError(
        f'{what} state_dict key {key!r} has shape {shape}, expected {ndim} dims')
  return shape


def _layer_index(key: str) -> Optional[int]:
  """`model.<i>.…` -> i; None for any other key."""
  parts = key.split('.')
  if len(parts) > 2 and parts[0] == 'model' and parts[1].isdigit():
    return int(parts[1])
  return None


def params_from_state_dict(state_dict: Mapping,
                           layers: layout_lib.Layout,
                           in_channels: int,
                           what: str,
                           running_statistics: bool = False) -> dict:
  """The Flax params of `layers` from an official state_dict: every expected key must be there
  with its shape, and every other key must be a norm buffer (ignored). `running_statistics`:
  with the batch norms' running statistics (`_expected_entries`), if the state_dict has any."""
  running_statistics = running_statistics and any(
      key.endswith('.running_mean') for key in state_dict)
  expected = _expected_entries(layers, in_channels, running_statistics)
  for key, (_, shape) in expected.items():
    if key not in state_dict:
      raise errors.InvalidValueError(
          f'{what} state_dict is missing key {key!r} (expected shape {shape})')
    actual = tuple(np.shape(state_dict[key]))
    if actual != shape:
      raise errors.InvalidValueError(
          f'{what} state_dict key {key!r} has shape {actual}, expected {shape}')
  norm_slots = [conv.torch_norm for _, conv in layout_lib.walk(layers) if conv.torch_norm]
  ignorable = {f'{slot}.{buffer}' for slot in norm_slots for buffer in NORM_BUFFERS}
  unexpected = sorted(set(state_dict) - set(expected) - ignorable)
  if unexpected:
    raise errors.InvalidValueError(f'{what} state_dict has unexpected keys {unexpected}')

  params: dict = {}
  for key, (path, _) in expected.items():
    value = np.asarray(state_dict[key], dtype=np.float32)
    if value.ndim == 4:  # OIHW (or in, out, kH, kW for ConvTranspose2d) -> HWIO / HW(out)(in)
      value = value.transpose(2, 3, 1, 0)
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return params


def generator_params_from_state_dict(state_dict: Mapping,
                                     running_statistics: bool = False) -> tuple[dict, dict]:
  """Official `ResnetGenerator` or `UnetGenerator` state_dict -> (params, arch).

  params: the inner dict for `module.apply({'params': params}, x)`; with `running_statistics`,
  those of the network in eval mode (`models.for_test`): batch norms' running statistics too.
  arch: {'generator' ('resnet_<n>blocks' or 'unet_<n>'), 'ngf', 'norm', 'use_dropout' (the
  config.model fields of those names), 'input_nc', 'output_nc'}.
  """
  state_dict = strip_data_parallel_prefix(state_dict)
  if f'{unet.TORCH_OUTERMOST}.0.weight' in state_dict:
    arch = _unet_arch(state_dict)
  else:
    arch = _resnet_arch(state_dict)
  module = models.build_generator(ml_collections.ConfigDict(arch), arch['output_nc'])
  return params_from_state_dict(state_dict, module.layout(arch['input_nc']), arch['input_nc'],
                                'Generator', running_statistics), arch


def _resnet_arch(state_dict: Mapping) -> dict:
  block_indices = sorted(
      _layer_index(key)
      for key in state_dict
      if _layer_index(key) is not None and key.endswith('.conv_block.1.weight'))
  if not block_indices:
    raise errors.InvalidValueError('Generator state_dict has no residual blocks (no key '
                                   'model.<i>.conv_block.1.weight) and no U-Net levels (no key '
                                   f'{unet.TORCH_OUTERMOST}.0.weight)')
  num_blocks = block_indices[-1] - resnet.FIRST_BLOCK_INDEX + 1
  up_0 = resnet.FIRST_BLOCK_INDEX + num_blocks  # then norm, relu; up_1; norm, relu; pad; head conv
  ngf, input_nc = _require(state_dict, 'model.1.weight', 4, 'Generator')[:2]
  output_nc = _require(state_dict, f'model.{up_0 + 7}.weight', 4, 'Generator')[0]
  # With dropout each block's second conv moves from conv_block.5 to conv_block.6 (where batch
  # norm's 1-d weight sits otherwise).
  use_dropout = np.ndim(state_dict.get(f'model.{block_indices[0]}.conv_block.6.weight')) == 4
  return dict(generator=f'resnet_{num_blocks}blocks',
              ngf=ngf,
              input_nc=input_nc,
              output_nc=output_nc,
              norm=_infer_norm(state_dict, 'model.2', 'model.1'),
              use_dropout=use_dropout)


def _unet_arch(state_dict: Mapping) -> dict:
  levels = 1
  while f'{unet.torch_prefix(levels)}.1.weight' in state_dict:
    levels += 1
  if levels < config_lib.UNET_MIN_DOWNS:
    raise errors.InvalidValueError(
        f'Generator state_dict has a U-Net of {levels} levels; the official UnetGenerator has '
        f'at least {config_lib.UNET_MIN_DOWNS}')
  ngf, input_nc = _require(state_dict, f'{unet.TORCH_OUTERMOST}.0.weight', 4, 'Generator')[:2]
  output_nc = _require(state_dict, f'{unet.TORCH_OUTERMOST}.3.weight', 4, 'Generator')[1]
  level_1 = unet.torch_prefix(1)
  return dict(generator=f'unet_{2**levels}',
              ngf=ngf,
              input_nc=input_nc,
              output_nc=output_nc,
              norm=_infer_norm(state_dict, f'{level_1}.2', f'{level_1}.1'),
              use_dropout=False)


def discriminator_params_from_state_dict(state_dict: Mapping,
                                         running_statistics: bool = False) -> tuple[dict, dict]:
  """Official `NLayerDiscriminator` or `PixelDiscriminator` state_dict -> (params, arch).

  params: the inner dict for `module.apply({'params': params}, x)` (`running_statistics`: as
  for generators).
  arch: {'discriminator' ('basic', 'n_layers' or 'pixel'), 'ndf', 'n_layers_D' (0 for 'pixel'),
  'input_nc', 'norm'}.
  """
  state_dict = strip_data_parallel_prefix(state_dict)
  if 'net.0.weight' in state_dict:
    ndf, input_nc = _require(state_dict, 'net.0.weight', 4, 'Discriminator')[:2]
    arch = dict(discriminator='pixel',
                ndf=ndf,
                n_layers_D=0,
                input_nc=input_nc,
                norm=_infer_norm(state_dict, 'net.3', 'net.2'))
  else:
    conv_indices = sorted(
        _layer_index(key)
        for key, value in state_dict.items()
        if _layer_index(key) is not None and key.endswith('.weight') and np.ndim(value) == 4)
    # Convs sit at 0, 2, 5, ..., 3 * n_layers + 2 (each normed conv is followed by norm and
    # LeakyReLU).
    if not conv_indices or (conv_indices[-1] - 2) % 3 or conv_indices[-1] < 5:
      raise errors.InvalidValueError(
          f'Discriminator state_dict conv layers at indices {conv_indices} do not fit '
          'an NLayerDiscriminator (convs at 0, 2, 5, ..., 3 * n_layers + 2) nor is it a '
          'PixelDiscriminator (net.0.weight)')
    n_layers = (conv_indices[-1] - 2) // 3
    ndf, input_nc = _require(state_dict, 'model.0.weight', 4, 'Discriminator')[:2]
    arch = dict(discriminator='basic' if n_layers == 3 else 'n_layers',
                ndf=ndf,
                n_layers_D=n_layers,
                input_nc=input_nc,
                norm=_infer_norm(state_dict, 'model.3', 'model.2'))
  module = models.build_discriminator(ml_collections.ConfigDict(arch))
  return params_from_state_dict(state_dict, module.layout(input_nc), input_nc, 'Discriminator',
                                running_statistics), arch
