"""Import official PyTorch CycleGAN state_dicts into the Flax networks of `models` (numpy only).

A state_dict here is a mapping of key -> array in PyTorch layout, keys as the official
`networks.py` names them (`model.1.weight`, `model.10.conv_block.5.bias`, ...), optionally with
the `module.` prefix that DataParallel adds. The converters return the inner parameter dict
(numpy float32 arrays), to be used as

    params, arch = generator_params_from_state_dict(state_dict)
    ResnetGenerator(output_nc=arch['output_nc'], ngf=arch['ngf'], num_blocks=arch['num_blocks'],
                    norm=arch['norm']).apply({'params': params}, x)

Architecture and norm type are inferred from the keys and shapes: convs followed by a norm have a
bias only with InstanceNorm, and BatchNorm layers have their own weight/bias. Norm buffers
(`running_mean`, `running_var`, `num_batches_tracked`, e.g. the InstanceNorm statistics saved by
PyTorch < 0.4) are ignored; every other key must be used, and every expected key must be present.
"""

from typing import Mapping, NamedTuple, Optional

import numpy as np

from cyclegan_jax import errors

NORM_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')
DATA_PARALLEL_PREFIX = 'module.'
FIRST_BLOCK_INDEX = 10  # pad, conv, norm, relu, then two (conv, norm, relu) downsamplings


def strip_data_parallel_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {key.removeprefix(DATA_PARALLEL_PREFIX): value for key, value in state_dict.items()}


class _Layer(NamedTuple):
  """One official conv and the norm slot after it (None: no norm layer follows)."""
  torch_conv: str
  norm_slot: Optional[str]
  flax_path: tuple[str, ...]
  weight_shape: tuple[int, ...]  # PyTorch layout
  transposed: bool = False  # ConvTranspose2d weights are (in, out, kH, kW)

  @property
  def out_channels(self) -> int:
    return self.weight_shape[1] if self.transposed else self.weight_shape[0]


def _expected_entries(layer: _Layer, norm: str) -> dict:
  """Expected torch key -> (flax path, torch shape) for one conv and the norm that follows it.

  Convs followed by a norm slot have a bias only with instance norm (official `use_bias` rule).
  """
  path, channels = layer.flax_path, (layer.out_channels,)
  entries = {f'{layer.torch_conv}.weight': ((*path, 'conv', 'kernel'), layer.weight_shape)}
  if layer.norm_slot is None or norm == 'instance':
    entries[f'{layer.torch_conv}.bias'] = ((*path, 'conv', 'bias'), channels)
  if layer.norm_slot is not None and norm == 'batch':
    entries[f'{layer.norm_slot}.weight'] = ((*path, 'norm', 'scale'), channels)
    entries[f'{layer.norm_slot}.bias'] = ((*path, 'norm', 'bias'), channels)
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


def _convert(state_dict: Mapping, layers: list[_Layer], norm: str, what: str) -> dict:
  """Checks keys and shapes against `layers`, then builds the nested Flax param dict."""
  expected = {}
  for layer in layers:
    expected.update(_expected_entries(layer, norm))
  norm_slots = [layer.norm_slot for layer in layers if layer.norm_slot is not None]
  for key, (_, shape) in expected.items():
    if key not in state_dict:
      raise errors.InvalidValueError(
          f'{what} state_dict is missing key {key!r} (expected shape {shape})')
    actual = tuple(np.shape(state_dict[key]))
    if actual != shape:
      raise errors.InvalidValueError(
          f'{what} state_dict key {key!r} has shape {actual}, expected {shape}')
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


def generator_params_from_state_dict(state_dict: Mapping) -> tuple[dict, dict]:
  """Official `ResnetGenerator` state_dict -> (params, arch).

  params: the inner dict for `ResnetGenerator.apply({'params': params}, x)`.
  arch: {'ngf', 'num_blocks', 'input_nc', 'output_nc', 'norm'}.
  """
  state_dict = strip_data_parallel_prefix(state_dict)
  block_indices = sorted(
      _layer_index(key)
      for key in state_dict
      if _layer_index(key) is not None and key.endswith('.conv_block.1.weight'))
  if not block_indices:
    raise errors.InvalidValueError('Generator state_dict has no residual blocks '
                                   '(no key model.<i>.conv_block.1.weight)')
  num_blocks = block_indices[-1] - FIRST_BLOCK_INDEX + 1
  up_0 = FIRST_BLOCK_INDEX + num_blocks  # then norm, relu; up_1; norm, relu; pad; head conv
  ngf, input_nc = _require(state_dict, 'model.1.weight', 4, 'Generator')[:2]
  output_nc = _require(state_dict, f'model.{up_0 + 7}.weight', 4, 'Generator')[0]
  norm = _infer_norm(state_dict, 'model.2', 'model.1')

  layers = [
      _Layer('model.1', 'model.2', ('stem',), (ngf, input_nc, 7, 7)),
      _Layer('model.4', 'model.5', ('down_0',), (2 * ngf, ngf, 3, 3)),
      _Layer('model.7', 'model.8', ('down_1',), (4 * ngf, 2 * ngf, 3, 3)),
  ]
  for i in range(num_blocks):
    block = f'model.{FIRST_BLOCK_INDEX + i}.conv_block'
    layers += [
        _Layer(f'{block}.1', f'{block}.2', (f'block_{i}', 'conv_0'), (4 * ngf, 4 * ngf, 3, 3)),
        _Layer(f'{block}.5', f'{block}.6', (f'block_{i}', 'conv_1'), (4 * ngf, 4 * ngf, 3, 3)),
    ]
  layers += [
      _Layer(f'model.{up_0}', f'model.{up_0 + 1}', ('up_0',), (4 * ngf, 2 * ngf, 3, 3), True),
      _Layer(f'model.{up_0 + 3}', f'model.{up_0 + 4}', ('up_1',), (2 * ngf, ngf, 3, 3), True),
      _Layer(f'model.{up_0 + 7}', None, ('head',), (output_nc, ngf, 7, 7)),
  ]
  params = _convert(state_dict, layers, norm, 'Generator')
  arch = dict(ngf=ngf, num_blocks=num_blocks, input_nc=input_nc, output_nc=output_nc, norm=norm)
  return params, arch


def discriminator_params_from_state_dict(state_dict: Mapping) -> tuple[dict, dict]:
  """Official `NLayerDiscriminator` state_dict -> (params, arch).

  params: the inner dict for `NLayerDiscriminator.apply({'params': params}, x)`.
  arch: {'ndf', 'n_layers', 'input_nc', 'norm'}.
  """
  state_dict = strip_data_parallel_prefix(state_dict)
  conv_indices = sorted(
      _layer_index(key)
      for key, value in state_dict.items()
      if _layer_index(key) is not None and key.endswith('.weight') and np.ndim(value) == 4)
  # Convs sit at 0, 2, 5, ..., 3 * n_layers + 2 (each normed conv is followed by norm, LeakyReLU).
  if not conv_indices or (conv_indices[-1] - 2) % 3 or conv_indices[-1] < 5:
    raise errors.InvalidValueError(
        f'Discriminator state_dict conv layers at indices {conv_indices} do not fit '
        'an NLayerDiscriminator (convs at 0, 2, 5, ..., 3 * n_layers + 2)')
  n_layers = (conv_indices[-1] - 2) // 3
  ndf, input_nc = _require(state_dict, 'model.0.weight', 4, 'Discriminator')[:2]
  norm = _infer_norm(state_dict, 'model.3', 'model.2')

  layers = [_Layer('model.0', None, ('layer_0',), (ndf, input_nc, 4, 4))]
  channels = ndf
  for n in range(1, n_layers + 1):
    conv = 2 + 3 * (n - 1)
    out_channels = ndf * min(2**n, 8)
    layers.append(
        _Layer(f'model.{conv}', f'model.{conv + 1}', (f'layer_{n}',),
               (out_channels, channels, 4, 4)))
    channels = out_channels
  layers.append(_Layer(f'model.{3 * n_layers + 2}', None, ('head',), (1, channels, 4, 4)))
  params = _convert(state_dict, layers, norm, 'Discriminator')
  return params, dict(ndf=ndf, n_layers=n_layers, input_nc=input_nc, norm=norm)
