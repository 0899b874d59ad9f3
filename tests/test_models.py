"""Networks: shapes, exact parameter counts, parity with the official PyTorch networks, the
checkpoint converter, init and norm options, bfloat16 compute."""

from functools import partial
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import load_npz_state_dict
from cyclegan_jax import config_lib
from cyclegan_jax import models
from cyclegan_jax.models import fast_convs
from cyclegan_jax.models import layers
from cyclegan_jax.torch_io import mapping

PARITY_DIR = Path(__file__).resolve().parents[1].parent / 'shared' / 'reference' / 'torch_parity'
# The reference files of the networks this project builds (the folder also holds others).
PARITY_STEMS = (
    'G_resnet_9blocks_ngf8_64_randbias',
    'G_resnet_6blocks_ngf8_32_randbias',
    'G_resnet_6blocks_ngf8_batchnorm_b2_randbias',
    'G_unet_128_ngf8_128_randbias',
    'G_unet_256_ngf8_256_randbias',
    'G_unet_256_ngf8_batchnorm_b2_randbias',
    'D_basic_ndf8_64_randbias',
    'D_n_layers5_ndf8_128_randbias',
    'D_basic_cond6_ndf8_batchnorm_64_randbias',
    'D_pixel_ndf8_32_randbias',
)
# The counts the official networks report for the files of issue 16 (their meta_json has them too).
OFFICIAL_PARAM_COUNTS = {
    'G_unet_128_ngf8_128_randbias': 655_027,
    'G_unet_256_ngf8_256_randbias': 851_763,
    'G_unet_256_ngf8_batchnorm_b2_randbias': 852_307,
    'G_resnet_6blocks_ngf8_batchnorm_b2_randbias': 125_395,
    'D_pixel_ndf8_32_randbias': 193,
    'D_n_layers5_ndf8_128_randbias': 175_737,
    'D_basic_cond6_ndf8_batchnorm_64_randbias': 45_033,
}
PARITY_FILES = [PARITY_DIR / f'{stem}.npz' for stem in PARITY_STEMS] if PARITY_DIR.is_dir() else []
PARITY_TOL = 1e-4
needs_parity_files = pytest.mark.skipif(
    not PARITY_FILES, reason=f'reference tensors not found: {PARITY_DIR} is absent')


def param_shapes(module, image_size, channels=3, batch=1):
  x = jax.ShapeDtypeStruct((batch, image_size, image_size, channels), jnp.float32)
  return jax.eval_shape(module.init, jax.random.key(0), x)['params']


def output_shape(module, image_size):
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(module.apply, {'params': param_shapes(module, image_size)}, x).shape


def nchw(x):
  return np.asarray(x, np.float32).transpose(0, 3, 1, 2)


# --- shapes and parameter counts -------------------------------------------------------------


@pytest.mark.parametrize('generator, size, expected_params', [
    (models.ResnetGenerator9(), 256, 11_378_179),
    (models.ResnetGenerator6(), 128, 7_837_699),
])
def test_generator_shape_and_param_count(generator, size, expected_params):
  assert models.count_params(param_shapes(generator, size)) == expected_params
  assert output_shape(generator, size) == (1, size, size, 3)


@pytest.mark.parametrize('size, patches', [(256, 30), (128, 14), (64, 6)])
def test_discriminator_shape_and_param_count(size, patches):
  discriminator = models.PatchGANDiscriminator()
  assert models.count_params(param_shapes(discriminator, size)) == 2_764_737
  assert output_shape(discriminator, size) == (1, patches, patches, 1)


def test_generator_maps_channels_and_rejects_sizes_not_divisible_by_4():
  generator = models.ResnetGenerator(output_nc=1, ngf=8, num_blocks=1)
  params = param_shapes(generator, 16, channels=4)
  x = jax.ShapeDtypeStruct((2, 16, 12, 4), jnp.float32)
  assert jax.eval_shape(generator.apply, {'params': params}, x).shape == (2, 16, 12, 1)
  with pytest.raises(ValueError, match='divisible by 4'):
    param_shapes(generator, 18)


# --- parity with the official PyTorch networks ------------------------------------------------


def generator_activation_names(num_blocks):
  """Official `net.model` index -> captured intermediate path in our ResnetGenerator."""
  up = 10 + num_blocks
  names = {1: 'stem/conv', 3: 'stem', 4: 'down_0/conv', 6: 'down_0', 7: 'down_1/conv', 9: 'down_1',
           up: 'up_0/conv', up + 2: 'up_0', up + 3: 'up_1/conv', up + 5: 'up_1', up + 7: 'head'}
  names.update({10 + i: f'block_{i}' for i in range(num_blocks)})
  return names


def discriminator_activation_names(n_layers):
  if n_layers == 0:  # The pixel discriminator: net.0 conv, LeakyReLU, conv, norm, LeakyReLU, conv.
    return {0: 'layer_0/conv', 1: 'layer_0', 2: 'layer_1/conv', 4: 'layer_1', 5: 'head'}
  names = {0: 'layer_0/conv', 1: 'layer_0', 3 * n_layers + 2: 'head'}
  for n in range(1, n_layers + 1):
    conv = 2 + 3 * (n - 1)
    names.update({conv: f'layer_{n}/conv', conv + 2: f'layer_{n}'})
  return names


def activation_names(arch):
  """Official top-level module index -> our module path, where the official top module is a
  flat Sequential (the U-Net's nests, so only its output is compared)."""
  if 'discriminator' in arch:
    return discriminator_activation_names(arch['n_layers_D'])
  kind, number = config_lib.parse_generator(arch['generator'])
  return generator_activation_names(number) if kind == 'resnet' else {}


def network_from_state_dict(state_dict, is_generator, dtype=jnp.float32):
  if is_generator:
    params, arch = mapping.generator_params_from_state_dict(state_dict)
    network = models.build_generator(ml_collections.ConfigDict(arch), arch['output_nc'], dtype)
  else:
    params, arch = mapping.discriminator_params_from_state_dict(state_dict)
    network = models.build_discriminator(ml_collections.ConfigDict(arch), dtype)
  return network, params, arch


def run_with_activations(network, params, x):
  with jax.default_matmul_precision('highest'):
    y, state = network.apply({'params': params}, x, capture_intermediates=True,
                             mutable=['intermediates'])
  activations = {}
  for path, value in jax.tree_util.tree_leaves_with_path(state['intermediates']):
    keys = [entry.key for entry in path if isinstance(entry, jax.tree_util.DictKey)]
    activations['/'.join(keys[:-1])] = value  # drop the trailing '__call__'
  return y, activations


@needs_parity_files
@pytest.mark.parametrize('npz_path', PARITY_FILES, ids=lambda path: path.stem)
def test_parity_with_official_networks(npz_path):
  """Output and every activation that maps onto one of our module boundaries, within 1e-4."""
  reference = np.load(npz_path, allow_pickle=False)
  is_generator = npz_path.name.startswith('G_')
  network, params, arch = network_from_state_dict(load_npz_state_dict(npz_path), is_generator)
  count = models.count_params(params)
  assert count == json.loads(str(reference['meta_json']))['num_params']
  assert count == OFFICIAL_PARAM_COUNTS.get(npz_path.stem, count)
  y, activations = run_with_activations(network, params, reference['input'].transpose(0, 2, 3, 1))
  names = activation_names(arch)
  errors = {'output': np.abs(nchw(y) - reference['output']).max()}
  for index, name in names.items():
    error = np.abs(nchw(activations[name]) - reference[f'act.{index}']).max()
    errors[f'act.{index} ({name})'] = error
  print(npz_path.stem, {name: f'{error:.2e}' for name, error in errors.items()})
  assert max(errors.values()) < PARITY_TOL, errors


# --- converter -------------------------------------------------------------------------------


def official_generator_shapes(ngf, num_blocks, norm, input_nc=3, output_nc=3):
  """Keys and shapes of an official ResnetGenerator state_dict, written out independently."""
  shapes = {}

  def conv(index, weight_shape, norm_index, out_channels=None):
    out_channels = out_channels or weight_shape[0]
    shapes[f'model.{index}.weight'] = weight_shape
    if norm_index is None or norm == 'instance':
      shapes[f'model.{index}.bias'] = (out_channels,)
    if norm_index is not None and norm == 'batch':
      shapes[f'model.{norm_index}.weight'] = shapes[f'model.{norm_index}.bias'] = (out_channels,)

  conv(1, (ngf, input_nc, 7, 7), 2)
  conv(4, (2 * ngf, ngf, 3, 3), 5)
  conv(7, (4 * ngf, 2 * ngf, 3, 3), 8)
  for i in range(10, 10 + num_blocks):
    conv(f'{i}.conv_block.1', (4 * ngf, 4 * ngf, 3, 3), f'{i}.conv_block.2')
    conv(f'{i}.conv_block.5', (4 * ngf, 4 * ngf, 3, 3), f'{i}.conv_block.6')
  up = 10 + num_blocks
  conv(up, (4 * ngf, 2 * ngf, 3, 3), up + 1, out_channels=2 * ngf)  # (in, out, kH, kW)
  conv(up + 3, (2 * ngf, ngf, 3, 3), up + 4, out_channels=ngf)
  conv(up + 7, (output_nc, ngf, 7, 7), None)
  return shapes


def official_discriminator_shapes(ndf, n_layers, norm, input_nc=3):
  shapes = {'model.0.weight': (ndf, input_nc, 4, 4), 'model.0.bias': (ndf,)}
  channels = ndf
  for n in range(1, n_layers + 1):
    index, out = 2 + 3 * (n - 1), ndf * min(2**n, 8)
    shapes[f'model.{index}.weight'] = (out, channels, 4, 4)
    if norm == 'instance':
      shapes[f'model.{index}.bias'] = (out,)
    if norm == 'batch':
      shapes[f'model.{index + 1}.weight'] = shapes[f'model.{index + 1}.bias'] = (out,)
    channels = out
  final = 3 * n_layers + 2
  shapes.update({f'model.{final}.weight': (1, channels, 4, 4), f'model.{final}.bias': (1,)})
  return shapes


def random_state_dict(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return {key: rng.normal(size=shape).astype(np.float32) for key, shape in shapes.items()}


def tree_shapes(tree):
  return jax.tree_util.tree_map(lambda leaf: tuple(leaf.shape), tree)


@pytest.mark.parametrize('ngf, num_blocks, norm', [
    (4, 3, 'instance'), (8, 1, 'batch'), (4, 2, 'none'), (64, 9, 'instance')])
def test_generator_converter_infers_architecture(ngf, num_blocks, norm):
  state_dict = random_state_dict(official_generator_shapes(ngf, num_blocks, norm, output_nc=1))
  params, arch = mapping.generator_params_from_state_dict(state_dict)
  assert arch == dict(generator=f'resnet_{num_blocks}blocks',
                      ngf=ngf,
                      input_nc=3,
                      output_nc=1,
                      norm=norm,
                      use_dropout=False)
  generator = models.ResnetGenerator(output_nc=1, ngf=ngf, num_blocks=num_blocks, norm=norm)
  assert tree_shapes(params) == tree_shapes(param_shapes(generator, 16))
  assert models.count_params(params) == sum(np.prod(s) for s in map(np.shape, state_dict.values()))
  np.testing.assert_array_equal(params['up_0']['conv']['kernel'],
                                state_dict[f'model.{10 + num_blocks}.weight'].transpose(2, 3, 1, 0))
  if norm == 'batch':
    np.testing.assert_array_equal(params['stem']['norm']['scale'], state_dict['model.2.weight'])


@pytest.mark.parametrize('ndf, n_layers, norm', [(8, 3, 'instance'), (4, 5, 'batch'),
                                                 (4, 1, 'none')])
def test_discriminator_converter_infers_architecture(ndf, n_layers, norm):
  state_dict = random_state_dict(official_discriminator_shapes(ndf, n_layers, norm))
  params, arch = mapping.discriminator_params_from_state_dict(state_dict)
  assert arch == dict(discriminator='basic' if n_layers == 3 else 'n_layers',
                      ndf=ndf,
                      n_layers_D=n_layers,
                      input_nc=3,
                      norm=norm)
  discriminator = models.NLayerDiscriminator(ndf=ndf, n_layers=n_layers, norm=norm)
  assert tree_shapes(params) == tree_shapes(param_shapes(discriminator, 64))


def test_converter_rejects_missing_key():
  state_dict = random_state_dict(official_generator_shapes(4, 2, 'instance'))
  del state_dict['model.11.conv_block.5.bias']
  with pytest.raises(ValueError, match=r'missing key .*model\.11\.conv_block\.5\.bias'):
    mapping.generator_params_from_state_dict(state_dict)


def test_converter_rejects_wrong_shape():
  state_dict = random_state_dict(official_generator_shapes(4, 2, 'instance'))
  state_dict['model.15.weight'] = np.zeros((16, 4, 3, 3), np.float32)  # up_1 wants (8, 4, 3, 3)
  with pytest.raises(ValueError, match=r'model\.15\.weight.*\(16, 4, 3, 3\).*\(8, 4, 3, 3\)'):
    mapping.generator_params_from_state_dict(state_dict)
  state_dict = random_state_dict(official_discriminator_shapes(4, 3, 'instance'))
  state_dict['model.5.bias'] = np.zeros((7,), np.float32)
  with pytest.raises(ValueError, match=r'model\.5\.bias'):
    mapping.discriminator_params_from_state_dict(state_dict)


def test_converter_rejects_unexpected_keys():
  state_dict = random_state_dict(official_generator_shapes(4, 2, 'instance'))
  state_dict['model.1.running_mean'] = np.zeros((4,), np.float32)  # a conv, not a norm slot
  with pytest.raises(ValueError, match=r'unexpected keys .*model\.1\.running_mean'):
    mapping.generator_params_from_state_dict(state_dict)
  state_dict = random_state_dict(official_discriminator_shapes(4, 3, 'instance'))
  state_dict['model.1.weight'] = np.zeros((4,), np.float32)
  with pytest.raises(ValueError, match=r'unexpected keys .*model\.1\.weight'):
    mapping.discriminator_params_from_state_dict(state_dict)


def with_instance_norm_buffers(state_dict, num_blocks):
  """Adds the InstanceNorm running stats that PyTorch < 0.4 checkpoints carry."""
  up = 10 + num_blocks
  norm_after_conv = [(2, 1), (5, 4), (8, 7), (up + 1, up), (up + 4, up + 3)]
  norm_after_conv += [(f'{10 + i}.conv_block.{j + 1}', f'{10 + i}.conv_block.{j}')
                      for i in range(num_blocks) for j in (1, 5)]
  extended = dict(state_dict)
  for slot, conv in norm_after_conv:
    channels = state_dict[f'model.{conv}.bias'].shape
    extended[f'model.{slot}.running_mean'] = np.full(channels, 5.0, np.float32)
    extended[f'model.{slot}.running_var'] = np.full(channels, 9.0, np.float32)
    extended[f'model.{slot}.num_batches_tracked'] = np.array(3, np.int64)
  return extended


def test_converter_ignores_norm_buffers_and_strips_data_parallel_prefix():
  state_dict = random_state_dict(official_generator_shapes(4, 2, 'instance'))
  params, arch = mapping.generator_params_from_state_dict(state_dict)
  legacy = {f'module.{key}': value
            for key, value in with_instance_norm_buffers(state_dict, num_blocks=2).items()}
  legacy_params, legacy_arch = mapping.generator_params_from_state_dict(legacy)
  assert legacy_arch == arch
  jax.tree_util.tree_map(np.testing.assert_array_equal, legacy_params, params)


@needs_parity_files
def test_legacy_checkpoint_with_running_stats_keeps_parity():
  npz_path = PARITY_DIR / 'G_resnet_6blocks_ngf8_32_randbias.npz'
  reference = np.load(npz_path, allow_pickle=False)
  state_dict = with_instance_norm_buffers(load_npz_state_dict(npz_path), 6)
  state_dict = {f'module.{key}': value for key, value in state_dict.items()}
  network, params, _ = network_from_state_dict(state_dict, is_generator=True)
  with jax.default_matmul_precision('highest'):
    y = network.apply({'params': params}, reference['input'].transpose(0, 2, 3, 1))
  assert np.abs(nchw(y) - reference['output']).max() < PARITY_TOL


# --- init options ----------------------------------------------------------------------------


# Tests that run networks use these shapes (those of the 6-block parity file), eagerly, so that
# XLA's per-op compilations are shared between tests: compiling is what costs time on CPU.
# Keys use XLA's RngBitGenerator: the same init distributions, but threefry takes seconds to
# compile per parameter shape on CPU.
INIT_KEY = jax.random.key(0, impl='rbg')
SMALL_BATCH = jnp.asarray(
    np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32))


def init_generator(**kwargs):
  generator = models.ResnetGenerator(ngf=8, num_blocks=1, **kwargs)
  return generator.init(INIT_KEY, SMALL_BATCH)['params']


@pytest.mark.parametrize('init_type', config_lib.INIT_TYPES)
def test_init_types_match_official_statistics(init_type):
  params = init_generator(init_type=init_type)
  kernel = np.asarray(params['block_0']['conv_0']['conv']['kernel'])  # (3, 3, 32, 32)
  up_kernel = np.asarray(params['up_0']['conv']['kernel'])  # (3, 3, out 16, in 32)
  gain, fan = 0.02, 3 * 3 * 32
  if init_type == 'normal':
    np.testing.assert_allclose(kernel.std(), gain, rtol=0.04)
  elif init_type == 'xavier':
    np.testing.assert_allclose(kernel.std(), gain * np.sqrt(2 / (fan + fan)), rtol=0.04)
  elif init_type == 'kaiming':
    np.testing.assert_allclose(kernel.std(), np.sqrt(2 / fan), rtol=0.04)
    # PyTorch's fan_in of a ConvTranspose2d weight (in, out, kH, kW) is out * kH * kW.
    np.testing.assert_allclose(up_kernel.std(), np.sqrt(2 / (16 * 9)), rtol=0.05)
  else:
    columns = kernel.reshape(-1, kernel.shape[-1])
    np.testing.assert_allclose(columns.T @ columns, gain**2 * np.eye(32), atol=1e-8)
  assert abs(kernel.mean()) < 0.1 * kernel.std()
  biases = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
            if path[-1].key == 'bias']
  assert biases and all(not np.any(bias) for bias in biases)


def test_batch_norm_scale_init():
  params = init_generator(norm='batch')
  scales = np.concatenate([np.asarray(leaf) for path, leaf in
                           jax.tree_util.tree_leaves_with_path(params) if path[-1].key == 'scale'])
  assert len(scales) == 8 + 16 + 32 + 2 * 32 + 16 + 8
  assert abs(scales.mean() - 1) < 0.01 and 0.015 < scales.std() < 0.025


# --- norm options ----------------------------------------------------------------------------


# Official rule: convs followed by a norm layer have a bias only with InstanceNorm; BatchNorm2d
# adds weight + bias per channel. Normed convs at ngf 64: 64 + 128 + 256 + 9 * 2 * 256 + 128 + 64.
G9_NORMED_CHANNELS = 64 + 128 + 256 + 9 * 2 * 256 + 128 + 64
G9_WEIGHTS = (7 * 7 * 3 * 64 + 3 * 3 * 64 * 128 + 3 * 3 * 128 * 256 + 9 * 2 * 3 * 3 * 256 * 256
              + 3 * 3 * 256 * 128 + 3 * 3 * 128 * 64 + 7 * 7 * 64 * 3)
G9_HEAD_BIAS = 3
D_NORMED_CHANNELS = 128 + 256 + 512
D_WEIGHTS = 4 * 4 * (3 * 64 + 64 * 128 + 128 * 256 + 256 * 512 + 512 * 1)
D_UNNORMED_BIASES = 64 + 1


def test_hand_counts_reproduce_published_counts():
  assert G9_WEIGHTS + G9_HEAD_BIAS + G9_NORMED_CHANNELS == 11_378_179
  assert D_WEIGHTS + D_UNNORMED_BIASES + D_NORMED_CHANNELS == 2_764_737


@pytest.mark.parametrize('norm, generator_params, discriminator_params', [
    ('instance', G9_WEIGHTS + G9_HEAD_BIAS + G9_NORMED_CHANNELS,
     D_WEIGHTS + D_UNNORMED_BIASES + D_NORMED_CHANNELS),
    ('batch', G9_WEIGHTS + G9_HEAD_BIAS + 2 * G9_NORMED_CHANNELS,
     D_WEIGHTS + D_UNNORMED_BIASES + 2 * D_NORMED_CHANNELS),
    ('none', G9_WEIGHTS + G9_HEAD_BIAS, D_WEIGHTS + D_UNNORMED_BIASES),
])
def test_param_counts_per_norm_match_official(norm, generator_params, discriminator_params):
  generator = models.ResnetGenerator9(norm=norm)
  discriminator = models.PatchGANDiscriminator(norm=norm)
  assert models.count_params(param_shapes(generator, 256)) == generator_params
  assert models.count_params(param_shapes(discriminator, 256)) == discriminator_params


@pytest.mark.parametrize('norm', ['batch', 'none'])
def test_other_norms_run(norm):
  generator = models.ResnetGenerator(ngf=8, num_blocks=1, norm=norm)
  discriminator = models.NLayerDiscriminator(ndf=8, norm=norm)
  x = SMALL_BATCH
  g_vars = generator.init(INIT_KEY, x)
  d_vars = discriminator.init(INIT_KEY, x)
  # Batch norm keeps running statistics (for eval mode); no other norm has state.
  assert set(g_vars) == set(d_vars) == ({'params', 'batch_stats'}
                                        if norm == 'batch' else {'params'})
  y = generator.apply({'params': g_vars['params']}, x)
  scores = discriminator.apply({'params': d_vars['params']}, y)
  assert y.shape == x.shape and scores.shape == (1, 2, 2, 1)
  assert np.all(np.isfinite(y)) and np.all(np.abs(y) <= 1) and np.all(np.isfinite(scores))


@pytest.mark.parametrize('norm, depends_on_batch', [('instance', False), ('batch', True)])
def test_batch_norm_uses_current_batch_statistics(norm, depends_on_batch):
  discriminator = models.NLayerDiscriminator(ndf=8, norm=norm)
  x = jnp.concatenate([SMALL_BATCH, -SMALL_BATCH])
  variables = discriminator.init(INIT_KEY, x)
  alone = discriminator.apply(variables, x[:1])
  in_batch = discriminator.apply(variables, x)[:1]
  assert (np.abs(alone - in_batch).max() > 1e-3) == depends_on_batch


def test_unknown_norm_and_init_are_rejected():
  with pytest.raises(ValueError, match="'group'"):
    param_shapes(models.ResnetGenerator(ngf=8, num_blocks=1, norm='group'), 16)
  with pytest.raises(ValueError, match="'uniform'"):
    param_shapes(models.ResnetGenerator(ngf=8, num_blocks=1, init_type='uniform'), 16)


# --- bfloat16 compute ------------------------------------------------------------------------


@needs_parity_files
@pytest.mark.parametrize('name', ['G_resnet_9blocks_ngf8_64_randbias', 'D_basic_ndf8_64_randbias'])
def test_bfloat16_compute_stays_close_to_float32(name):
  npz_path = PARITY_DIR / f'{name}.npz'
  reference = np.load(npz_path, allow_pickle=False)
  network, params, _ = network_from_state_dict(load_npz_state_dict(npz_path),
                                               name.startswith('G_'),
                                               dtype=jnp.bfloat16)
  apply = jax.jit(partial(network.apply, capture_intermediates=True, mutable=['intermediates']))
  y, state = apply({'params': params}, reference['input'].transpose(0, 2, 3, 1))
  assert state['intermediates']['head']['conv']['__call__'][0].dtype == jnp.bfloat16
  assert y.dtype == jnp.float32
  error = np.abs(nchw(y) - reference['output']).max()
  print(name, f'bfloat16 vs float32 reference: {error:.2e}')
  assert error < 0.05 * max(1.0, np.abs(reference['output']).max())


# --- factories -------------------------------------------------------------------------------


def test_generator_num_blocks():
  assert models.generator_num_blocks('resnet_9blocks') == 9
  assert models.generator_num_blocks('resnet_6blocks') == 6
  assert models.generator_num_blocks('resnet_12blocks') == 12
  for bad in ['unet_256', 'resnet_0blocks', 'resnet_blocks', 'resnet_9blocks_x']:
    with pytest.raises(ValueError, match=repr(bad)):
      models.generator_num_blocks(bad)


def model_config(**overrides):
  config = ml_collections.ConfigDict(
      dict(generator='resnet_6blocks',
           discriminator='basic',
           n_layers_D=3,
           ngf=8,
           ndf=8,
           norm='instance',
           init_type='normal',
           init_gain=0.02,
           channels_A=3,
           channels_B=3))
  config.update(overrides)
  return config


def test_factories_and_presets():
  generator = models.build_generator(model_config(), out_channels=1, dtype=jnp.bfloat16)
  assert (generator.num_blocks, generator.ngf, generator.output_nc) == (6, 8, 1)
  assert generator.dtype == jnp.bfloat16
  assert models.build_discriminator(model_config()).n_layers == 3
  discriminator = models.build_discriminator(model_config(discriminator='n_layers', n_layers_D=5))
  assert (discriminator.n_layers, discriminator.ndf) == (5, 8)
  assert isinstance(models.build_discriminator(model_config(discriminator='pixel')),
                    models.PixelDiscriminator)
  with pytest.raises(ValueError, match="'pixels'"):
    models.build_discriminator(model_config(discriminator='pixels'))
  unet = models.build_generator(model_config(generator='unet_128', use_dropout=True), 3)
  assert (unet.num_downs, unet.use_dropout, unet.architecture) == (7, True, 'unet_128')
  assert models.ResnetGenerator9().num_blocks == 9
  assert models.ResnetGenerator6().num_blocks == 6
  assert models.PatchGANDiscriminator().n_layers == 3


# The exact reformulations behind model.fast_convs, against the plain convolutions.


def values_and_grads(fn, x, kernel):
  """fn's output and the gradients of a non-linear function of it w.r.t. x and kernel."""
  loss = lambda x, kernel: jnp.sum(jnp.sin(fn(x, kernel)))
  return jax.jit(fn)(x, kernel), jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)


def assert_relatively_close(expected, actual, tolerance):
  """Each top-level part (output, each gradient, or the whole gradient tree) within `tolerance` of
  its largest magnitude: float32 sums in another order, not another function."""
  for part_expected, part_actual in zip(expected, actual):
    leaves = list(zip(jax.tree.leaves(part_expected), jax.tree.leaves(part_actual)))
    scale = max(float(jnp.max(jnp.abs(a))) for a, _ in leaves)
    difference = max(float(jnp.max(jnp.abs(a - b))) for a, b in leaves)
    assert difference <= tolerance * scale, (difference, scale)


# The sub-pixel form, and the same without its zero taps (forward and gradients), for the ResNet's
# 3x3 kernel (PyTorch padding 1, output_padding 1) and the U-Net's 4x4 (padding 1).
@pytest.mark.parametrize('conv', ['subpixel_conv_transpose', 'conv_transpose_2x',
                                  '_conv_transpose_by_products'])
@pytest.mark.parametrize('in_channels, out_channels, kernel_size', [(16, 8, 3), (8, 4, 3),
                                                                    (6, 5, 4)])
def test_subpixel_conv_transpose_equals_conv_transpose(conv, in_channels, out_channels,
                                                       kernel_size):
  x = jax.random.normal(jax.random.key(0), (2, 6, 5, in_channels))
  plain = jax.nn.initializers.normal(1.0)(jax.random.key(1),
                                          (kernel_size, kernel_size, out_channels, in_channels))
  lax_padding = layers.TRANSPOSED_PAD if kernel_size == 3 else ((2, 2), (2, 2))
  module = nn.ConvTranspose(out_channels, (kernel_size, kernel_size),
                            strides=(2, 2),
                            padding=lax_padding,
                            transpose_kernel=True,
                            use_bias=False)
  reference = lambda x, kernel: module.apply({'params': {'kernel': kernel}}, x)
  expected = values_and_grads(reference, x, plain)
  actual = values_and_grads(partial(getattr(fast_convs, conv), padding=1), x, plain)
  assert actual[0].shape == (2, 12, 10, out_channels)
  assert_relatively_close(expected, actual, 1e-5)


def test_large_transposed_convs_take_their_gradients_without_the_zero_taps():
  # The 128 px ResNet's up convs, not the offline default's.
  assert fast_convs.conv_transpose_by_products((2, 64, 64, 128))
  assert not fast_convs.conv_transpose_by_products((4, 32, 32, 16))
  x = jax.random.normal(jax.random.key(0), (1, 64, 64, 32))
  layer = layers.ConvNormAct(32, 3, strides=2, padding=layers.TRANSPOSED_PAD, transpose=True)
  params = layer.init(jax.random.key(1), x)
  assert 'conv_transpose_2x' in str(jax.make_jaxpr(layer.apply)(params, x))


# Few output channels: tap sums forward, the kernel gradient by the output gradient's patches; few
# input channels: the input gradient by tap sums; an output no larger than the kernel: patches
# backward; a large map: both.
@pytest.mark.parametrize('kernel_shape, size', [((7, 7, 16, 3), 13), ((7, 7, 3, 16), 20),
                                                ((4, 4, 8, 16), 6), ((3, 3, 8, 8), 52)])
def test_valid_conv_equals_the_plain_conv(kernel_shape, size):
  forward, backward = fast_convs._conv_formulations((2, size, size, 0), kernel_shape)
  assert (forward, backward) != (fast_convs._plain_conv, fast_convs._plain_conv)
  x = jax.random.normal(jax.random.key(0), (2, size, size - 2, kernel_shape[2]))
  kernel = jax.random.normal(jax.random.key(1), kernel_shape)
  expected = values_and_grads(fast_convs._plain_conv, x, kernel)
  assert_relatively_close(expected, values_and_grads(fast_convs.valid_conv, x, kernel), 1e-4)


def test_instance_norm_and_its_gradient_equal_the_definition():
  # With fast_convs on CPU the statistics are matrix-vector products with a closed-form VJP; the
  # definition, differentiated by autodiff, is the truth.
  def definition(x):
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) / jnp.sqrt(jnp.square(x - mean).mean(axis=(1, 2), keepdims=True) + 1e-5)

  x = 3 * jax.random.normal(jax.random.key(0), (2, 5, 7, 3)) + 1
  weights = jax.random.normal(jax.random.key(1), x.shape)
  loss = lambda norm: lambda x: jnp.sum(weights * jnp.sin(norm(x)))
  expected = jax.jit(definition)(x), jax.jit(jax.grad(loss(definition)))(x)
  by_matmuls = partial(layers.instance_norm, by_matmuls=True)
  actual = jax.jit(by_matmuls)(x), jax.jit(jax.grad(loss(by_matmuls)))(x)
  assert_relatively_close(expected, actual, 1e-5)
  assert jnp.abs(actual[0].mean(axis=(1, 2))).max() < 1e-6
  # A large photo's map far from zero mean: as accurate as XLA's reduction, against float64.
  x = np.random.default_rng(0).normal(5, 3, (1, 768, 1024, 2)).astype(np.float32)
  centred = x - x.mean(axis=(1, 2), keepdims=True, dtype=np.float64)
  expected = centred / np.sqrt(np.square(centred).mean(axis=(1, 2), keepdims=True) + 1e-5)
  assert np.abs(jax.jit(by_matmuls)(x) - expected).max() < 1e-5


def test_bias_gradient_is_the_sum_of_the_output_gradient():
  # On CPU add_bias sums the output gradient by matrix-vector products; the truth is the float64
  # sum over batch, rows and columns, here of a large map far from zero mean, where one long
  # float32 sum of its 4.7 million terms loses 2-4e-5 relative.
  output_grad = np.random.default_rng(0).normal(5, 3, (2, 768, 1024, 3)).astype(np.float32)
  y, bias = jnp.zeros(output_grad.shape), jnp.zeros(3)
  y_grad, bias_grad = jax.jit(jax.vjp(fast_convs.add_bias, y, bias)[1])(output_grad)
  np.testing.assert_array_equal(y_grad, output_grad)
  np.testing.assert_allclose(bias_grad, output_grad.sum(axis=(0, 1, 2), dtype=np.float64),
                             rtol=2e-6)
  assert jnp.array_equal(fast_convs.add_bias(y + 1, bias + 2), jnp.full(y.shape, 3.0))
  # Only on large maps (the 128 px ResNet's residual blocks): the offline default's convs keep
  # XLA's reduction, and with it their rounding.
  assert fast_convs.bias_gradient_by_matmuls((2, 32, 32, 256))
  assert not fast_convs.bias_gradient_by_matmuls((4, 32, 32, 16))


def test_patchgan_on_small_images_differentiates_its_stride_1_convs_as_patches():
  # On 32 px images the last two convs (4x4, zero pad 1) give 3x3 and 2x2 outputs: their input
  # gradients are patch matmuls, not XLA's operand-swapped convolutions.
  assert fast_convs.reformulates((4, 6, 6, 64), (4, 4, 64, 128))
  assert not fast_convs.reformulates((1, 34, 34, 256), (4, 4, 256, 512))
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  fast = models.NLayerDiscriminator(ndf=8)
  plain = models.NLayerDiscriminator(ndf=8, fast_convs=False)
  params = fast.init(jax.random.key(1), x)
  jaxpr = lambda network: str(jax.make_jaxpr(network.apply)(params, x))
  reformulated = lambda network: jaxpr(network).count('name=valid_conv')
  assert (reformulated(fast), reformulated(plain)) == (2, 0)

  def values_and_grads_of(network):
    loss = lambda params, x: jnp.sum(jnp.sin(network.apply(params, x)))
    return network.apply(params, x), jax.grad(loss, argnums=(0, 1))(params, x)

  fast_result = jax.jit(lambda: values_and_grads_of(fast))()
  assert fast_result[0].shape == (2, 2, 2, 1)
  assert_relatively_close(jax.jit(lambda: values_and_grads_of(plain))(), fast_result, 1e-5)


# Small maps; large ones, whose input gradient is taken image by image (4x4), as the sub-pixel
# transposed conv (3x3 on 256 x 256), or not where that would not give x's shape (257 columns).
@pytest.mark.parametrize('kernel_size, shape', [(3, (2, 10, 9, 3)), (4, (1, 9, 12, 2)),
                                                (4, (2, 128, 128, 64)), (3, (2, 256, 256, 64)),
                                                (3, (2, 256, 257, 64))])
def test_stride_2_conv_equals_the_plain_conv(kernel_size, shape):
  x = jax.random.normal(jax.random.key(0), shape)
  kernel = jax.random.normal(jax.random.key(1), (kernel_size, kernel_size, shape[-1], 5))
  plain = lambda x, kernel: jax.lax.conv_general_dilated(
      x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  expected = values_and_grads(plain, x, kernel)
  actual = values_and_grads(partial(fast_convs.stride_2_conv, padding=1), x, kernel)
  assert actual[0].shape == expected[0].shape
  assert_relatively_close(expected, actual, 1e-5)


def test_stride_2_convs_with_mid_sized_taps_take_their_kernel_gradient_as_a_matmul():
  # The 128 px ResNet's down convs (kernel gradient by taps), the 256 px one's first (input
  # gradient as the sub-pixel conv), not the offline default's.
  assert fast_convs._taps_in_range((2, 128, 128, 64), (3, 3, 64, 128), 1)
  assert fast_convs.stride_2_reformulates((1, 64, 64, 128), (3, 3, 128, 256), 1)
  assert not fast_convs._taps_in_range((1, 256, 256, 64), (3, 3, 64, 128), 1)
  assert fast_convs.stride_2_reformulates((1, 256, 256, 64), (3, 3, 64, 128), 1)
  assert not fast_convs.stride_2_reformulates((8, 32, 32, 16), (3, 3, 16, 32), 1)
  x = jax.random.normal(jax.random.key(0), (2, 128, 128, 3))
  fast = models.NLayerDiscriminator(ndf=16)
  plain = models.NLayerDiscriminator(ndf=16, fast_convs=False)
  params = fast.init(jax.random.key(1), x)
  jaxpr = lambda network: str(jax.make_jaxpr(network.apply)(params, x))
  # layer_1 (16 -> 32 channels, 1 MiB of taps an image); layer_0 and layer_2 have fewer.
  assert 'stride_2_conv' in jaxpr(fast) and 'stride_2_conv' not in jaxpr(plain)

  def values_and_grads_of(network):
    loss = lambda params, x: jnp.sum(jnp.sin(network.apply(params, x)))
    return network.apply(params, x), jax.grad(loss, argnums=(0, 1))(params, x)

  assert_relatively_close(jax.jit(lambda: values_and_grads_of(plain))(),
                          jax.jit(lambda: values_and_grads_of(fast))(), 1e-5)


@pytest.mark.parametrize('tile', sorted(fast_convs.WINOGRAD_POINTS))
def test_winograd_transforms_compute_the_correlation(tile):
  output_transform, kernel_transform, input_transform = fast_convs._winograd_transforms(
      fast_convs.WINOGRAD_POINTS[tile])
  assert output_transform.shape == (tile, tile + 2) and input_transform.shape == (tile + 2,) * 2
  rng = np.random.default_rng(0)
  d, g = rng.normal(size=tile + 2), rng.normal(size=3)
  expected = [d[i:i + 3] @ g for i in range(tile)]
  np.testing.assert_allclose(output_transform @ ((kernel_transform @ g) * (input_transform @ d)),
                             expected,
                             rtol=1e-12,
                             atol=1e-12)


@pytest.mark.parametrize('tile', sorted(fast_convs.WINOGRAD_POINTS))
def test_winograd_block_transform_transpose_is_its_adjoint(tile):
  # <T x, y> = <x, T^T y> in float64 for the input transform on blocks of a 2-image map, the
  # transpose the input gradient adds its blocks back with (overlapping windows).
  _, _, input_transform = fast_convs._winograd_transforms(fast_convs.WINOGRAD_POINTS[tile])
  tiles_h, tiles_w = 3, 2
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, tiles_h * tile + 2, tiles_w * tile + 2, 5))
  y = rng.normal(size=((tile + 2)**2, 2 * tiles_h * tiles_w, 5))
  with jax.enable_x64(True):
    forward = fast_convs._transform_2d(jnp.asarray(x), input_transform, tile, tiles_h, tiles_w)
    transpose = fast_convs._transform_2d_transpose(jnp.asarray(y), input_transform, tile, tiles_h,
                                                   tiles_w)
  assert forward.shape == y.shape and transpose.shape == x.shape
  np.testing.assert_allclose(np.sum(np.asarray(forward) * y), np.sum(x * np.asarray(transpose)),
                             rtol=1e-12)


def correlate64(x, kernel):
  """A VALID stride-1 NHWC conv in float64, tap by tap."""
  x, kernel = np.float64(x), np.float64(kernel)
  kh, kw = kernel.shape[:2]
  height, width = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  return sum(
      np.einsum('nhwc,co->nhwo', x[:, i:i + height, j:j + width], kernel[i, j])
      for i in range(kh)
      for j in range(kw))


def conv_and_gradients64(x, kernel, output_grad):
  """correlate64 and its input and kernel gradients for `output_grad`, in float64."""
  output_grad = np.float64(output_grad)
  height, width = output_grad.shape[1:3]
  x_grad = correlate64(np.pad(output_grad, ((0, 0), (2, 2), (2, 2), (0, 0))),
                       kernel[::-1, ::-1].transpose(0, 1, 3, 2))
  kernel_grad = np.array([[
      np.einsum('nhwc,nhwo->co', np.float64(x[:, i:i + height, j:j + width]), output_grad)
      for j in range(3)
  ]
                          for i in range(3)])
  return correlate64(x, kernel), x_grad, kernel_grad


# Sizes that are not multiples of the tile (cropped blocks), down to a single output column.
@pytest.mark.parametrize('tile', sorted(fast_convs.WINOGRAD_POINTS))
@pytest.mark.parametrize('shape', [(2, 13, 11, 16, 8), (1, 7, 3, 8, 16)])
def test_winograd_conv_and_gradients_within_their_rounding_bound(tile, shape):
  """Winograd's conv and both gradients against float64, within a bound derived from the
  computation. Each computed value is a sum of products of data and transform constants; to first
  order, rounding changes it by at most k * eps times the same computation with the absolute
  values of the data and of the transform matrices (the standard bound for sums and bilinear
  algorithms, Higham, Accuracy and Stability of Numerical Algorithms, sections 3.1 and 3.5), k
  being the longest chain of roundings on any path: 2 * 3 + 1 for the kernel transform (two passes
  of up to 3 products and sums, and the rounded constants of G), 2 * (tile + 2) + 1 for the
  input (or output-gradient) transform, 1 for the product, the matmul's sum (the input channels,
  or for the kernel gradient the blocks), and 2 * (tile + 2) for the output transform. The float32
  conv itself rounds the same way with smaller constants, so equality within its tolerance is
  no substitute: this bound is what Winograd guarantees, and it is checked to be tight enough to
  mean something (under 1% of the result's largest magnitude, where a wrong sum is off by ~100%)."""
  batch, height, width, in_channels, out_channels = shape
  rng = np.random.default_rng(1)
  x = rng.normal(size=(batch, height, width, in_channels)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, in_channels, out_channels)).astype(np.float32)
  output_grad = rng.normal(size=(batch, height - 2, width - 2, out_channels)).astype(np.float32)
  y, vjp = jax.vjp(partial(fast_convs.winograd_conv, tile=tile), x, kernel)
  actual = (y, *vjp(output_grad))
  transforms = fast_convs._winograd_transforms(fast_convs.WINOGRAD_POINTS[tile])
  absolute = tuple(np.abs(matrix) for matrix in transforms)
  bounds = (fast_convs._winograd(np.abs(x), np.abs(kernel),
                                 absolute), *fast_convs._winograd_gradients(
                                     absolute, np.abs(x), np.abs(kernel), np.abs(output_grad)))
  blocks = batch * -(-(height - 2) // tile) * -(-(width - 2) // tile)
  chain = 2 * 3 + 1 + 2 * (tile + 2) + 1 + 1 + 2 * (tile + 2)
  sum_lengths = (in_channels, out_channels, blocks)
  for name, expected, got, bound, length in zip(('y', 'x_grad', 'kernel_grad'),
                                                conv_and_gradients64(x, kernel, output_grad),
                                                actual, bounds, sum_lengths):
    assert got.shape == expected.shape, name
    tolerance = (chain + length) * np.finfo(np.float32).eps * np.float64(bound)
    assert np.all(np.abs(np.float64(got) - expected) <= tolerance), name
    assert tolerance.max() < 1e-2 * np.abs(expected).max(), name


def test_winograd_kernel_transform_is_the_two_sided_matrix_product():
  # The forward and kernel-gradient (inverse) uses, against M g M^T per channel pair in float64.
  _, kernel_transform, _ = fast_convs._winograd_transforms(fast_convs.WINOGRAD_POINTS[4])
  kernel = np.random.default_rng(0).normal(size=(3, 3, 5, 7)).astype(np.float32)
  products = np.random.default_rng(1).normal(size=(6, 6, 5, 7)).astype(np.float32)
  for taps, matrix in ((kernel, kernel_transform), (products, kernel_transform.T)):
    expected = np.einsum('ai,ijco,bj->abco', matrix, taps.astype(np.float64), matrix)
    np.testing.assert_allclose(fast_convs._transform_kernel(jnp.asarray(taps), matrix),
                               expected.reshape(-1, 5, 7),
                               rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())


def test_valid_conv_chooses_winograd_for_large_float32_maps_with_many_channels():
  large, kernel = (1, 66, 66, 256), (3, 3, 256, 256)
  choose = fast_convs._conv_formulations
  assert choose(large, kernel) == (fast_convs.winograd_conv,) * 2
  assert choose(large, kernel, jnp.bfloat16) != (fast_convs.winograd_conv,) * 2
  assert choose((1, 66, 66, 8), (3, 3, 8, 8)) != (fast_convs.winograd_conv,) * 2
  assert choose(large, (7, 7, 256, 256)) != (fast_convs.winograd_conv,) * 2
  assert choose((1, 10, 10, 256), kernel) == (fast_convs._plain_conv,) * 2
  # End to end through valid_conv's custom VJP, on the smallest map that takes Winograd.
  size = int(np.ceil(np.sqrt(fast_convs._WINOGRAD_MIN_PIXELS))) + 2
  channels = fast_convs._WINOGRAD_MIN_CHANNELS
  assert choose((1, size, size, channels),
                (3, 3, channels, channels))[0] is fast_convs.winograd_conv
  x = jax.random.normal(jax.random.key(0), (1, size, size, channels))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, channels, channels))
  expected = values_and_grads(fast_convs._plain_conv, x, kernel)
  assert_relatively_close(expected, values_and_grads(fast_convs.valid_conv, x, kernel), 1e-4)


def test_importing_the_package_keeps_xla_cpu_convolutions_off_ynnpack_on_one_device():
  program = textwrap.dedent("""
      import os
      import cyclegan_jax
      import jax
      import jax.numpy as jnp
      conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(
          x, k, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
      text = conv.lower(jnp.ones((1, 66, 66, 256)), jnp.ones((3, 3, 256, 256))).compile().as_text()
      print('ynn' in text, os.environ['XLA_FLAGS'])
  """)

  def run(xla_flags):
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': xla_flags}
    result = subprocess.run([sys.executable, '-c', program],
                            env=env,
                            capture_output=True,
                            text=True,
                            check=True)
    return result.stdout.split(maxsplit=1)

  assert run('') == ['False', '--xla_cpu_experimental_ynn_fusion_type=\n']
  own = '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'
  assert run(own)[1] == own + '\n'
  # Simulated devices keep the default (see cyclegan_jax/__init__.py).
  simulated = '--xla_force_host_platform_device_count=2'
  assert run(simulated)[1] == simulated + '\n'


def test_fast_and_plain_generators_share_parameters_and_outputs():
  config = ml_collections.ConfigDict(
      dict(ngf=8, generator='resnet_1blocks', norm='instance', init_type='normal', init_gain=0.02,
           fast_convs=True))
  x = jax.random.uniform(jax.random.key(0), (1, 16, 16, 3), minval=-1, maxval=1)
  fast = models.build_generator(config, 3)
  config.fast_convs = False
  plain = models.build_generator(config, 3)
  params = fast.init(jax.random.key(1), x)
  assert jax.tree.structure(params) == jax.tree.structure(plain.init(jax.random.key(1), x))
  loss = lambda module: jax.jit(jax.grad(lambda p: jnp.sum(module.apply(p, x)**2)))
  assert_relatively_close([jax.jit(plain.apply)(params, x)], [jax.jit(fast.apply)(params, x)],
                          1e-5)
  assert_relatively_close([loss(plain)(params)], [loss(fast)(params)], 1e-4)


def test_plain_generator_uses_no_reformulated_convs():
  config = ml_collections.ConfigDict(
      dict(ngf=8, generator='resnet_1blocks', norm='instance', init_type='normal', init_gain=0.02,
           fast_convs=False))
  x = jnp.zeros((1, 16, 16, 3))
  plain = models.build_generator(config, 3)
  text = jax.make_jaxpr(lambda p: plain.apply(p, x))(plain.init(jax.random.key(0), x))
  assert 'custom_vjp' not in str(text) and 'conv_general_dilated' in str(text)
  config.fast_convs = True
  fast = models.build_generator(config, 3)
  text = str(jax.make_jaxpr(lambda p: fast.apply(p, x))(fast.init(jax.random.key(0), x)))
  assert 'name=valid_conv' in text and 'name=_instance_norm_by_matmuls' in text
