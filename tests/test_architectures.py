"""The other networks of the official code: U-Net generators, the pixel discriminator, dropout,
spectral norm, and batch norm at test time (each image by its own statistics). Parity with the
official networks' reference outputs is in test_models.py."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cyclegan_jax import config_lib
from cyclegan_jax import inference
from cyclegan_jax import models
from cyclegan_jax.models import fast_convs
from cyclegan_jax.models import layers
from cyclegan_jax.models import layout
from cyclegan_jax.torch_io import mapping

INIT_KEY = jax.random.key(0, impl='rbg')


def param_shapes(module, size, channels=3):
  x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  return jax.eval_shape(module.init, jax.random.key(0), x)['params']


def random_params(module, size, seed=0, channels=3):
  """Weights N(0, 0.1), biases N(0, 0.2), batch-norm scales 1 + N(0, 0.1): no trivial layer."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      return jnp.asarray(1 + rng.normal(0, 0.1, leaf.shape).astype(np.float32))
    std = 0.2 if name.endswith("['bias']") else 0.1
    return jnp.asarray(rng.normal(0, std, leaf.shape).astype(np.float32))

  return jax.tree_util.tree_map_with_path(draw, param_shapes(module, size, channels))


# --- U-Net structure and parameter counts ---------------------------------------------------


def official_unet_shapes(ngf, num_downs, norm, input_nc=3, output_nc=3):
  """Keys and shapes of an official UnetGenerator state_dict, written out from the official
  UnetSkipConnectionBlock (REFERENCE.md, "U-Net generator")."""
  bias = norm == 'instance'
  shapes = {
      'model.model.0.weight': (ngf, input_nc, 4, 4),
      'model.model.3.weight': (2 * ngf, output_nc, 4, 4),
      'model.model.3.bias': (output_nc,)
  }
  if bias:
    shapes['model.model.0.bias'] = (ngf,)
  for level in range(1, num_downs):
    prefix = 'model.model.1' + '.model.3' * (level - 1) + '.model'
    outer, inner = ngf * min(2**(level - 1), 8), ngf * min(2**level, 8)
    innermost = level == num_downs - 1
    up = 3 if innermost else 5
    shapes[f'{prefix}.1.weight'] = (inner, outer, 4, 4)
    shapes[f'{prefix}.{up}.weight'] = (inner if innermost else 2 * inner, outer, 4, 4)
    if bias:
      shapes[f'{prefix}.1.bias'] = (inner,)
      shapes[f'{prefix}.{up}.bias'] = (outer,)
    if norm == 'batch':
      if not innermost:
        shapes[f'{prefix}.2.weight'] = shapes[f'{prefix}.2.bias'] = (inner,)
      shapes[f'{prefix}.{up + 1}.weight'] = shapes[f'{prefix}.{up + 1}.bias'] = (outer,)
  return shapes


# The official print_networks reports millions to 3 decimals: pix2pix's unet_256 G with batch norm
# 54.414 M, its conditional basic D (6 channels, batch norm) 2.769 M.
@pytest.mark.parametrize('module, size, channels, millions', [
    (models.UnetGenerator(num_downs=8, norm='batch'), 256, 3, 54.414),
    (models.NLayerDiscriminator(norm='batch'), 64, 6, 2.769),
])
def test_published_pix2pix_param_counts(module, size, channels, millions):
  assert round(models.count_params(param_shapes(module, size, channels)) / 1e6, 3) == millions


@pytest.mark.parametrize('ngf, num_downs, norm', [(4, 5, 'instance'), (2, 7, 'batch'),
                                                  (4, 6, 'none')])
def test_unet_converter_infers_architecture(ngf, num_downs, norm):
  shapes = official_unet_shapes(ngf, num_downs, norm, input_nc=1, output_nc=3)
  rng = np.random.default_rng(0)
  state_dict = {key: rng.normal(size=shape).astype(np.float32) for key, shape in shapes.items()}
  # Batch-norm running statistics are buffers of the official state_dict, not used in test mode.
  if norm == 'batch':
    state_dict['model.model.1.model.2.running_mean'] = np.zeros(2 * ngf, np.float32)
    state_dict['model.model.1.model.2.num_batches_tracked'] = np.array(7)
  params, arch = mapping.generator_params_from_state_dict(state_dict)
  assert arch == dict(generator=f'unet_{2**num_downs}',
                      ngf=ngf,
                      input_nc=1,
                      output_nc=3,
                      norm=norm,
                      use_dropout=False)
  module = models.UnetGenerator(output_nc=3, ngf=ngf, num_downs=num_downs, norm=norm)
  expected = param_shapes(module, 2**num_downs, channels=1)
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda s: s.shape, expected)
  assert models.count_params(params) == sum(np.prod(shape) for shape in shapes.values())
  innermost = 'model.model.1' + '.model.3' * (num_downs - 2) + '.model.3.weight'
  path = ['level_1'] + [f'level_{i}' for i in range(2, num_downs)]
  node = params
  for name in path:
    node = node[name]
  np.testing.assert_array_equal(node['up']['conv']['kernel'],
                                state_dict[innermost].transpose(2, 3, 1, 0))


def test_unet_layout_sizes_and_dropout_levels():
  module = models.UnetGenerator(ngf=4, num_downs=7, use_dropout=True)
  layers = module.layout(3)
  assert layout.size_multiple(layers) == layout.min_side(layers) == 128
  dropouts = []

  def visit(layers, depth):
    for layer in layers:
      if isinstance(layer, layout.Skip):
        visit(layer.body, depth + 1)
      elif isinstance(layer, layout.Dropout):
        dropouts.append(depth)

  visit(layers, 0)
  assert dropouts == [5, 4]  # num_downs - 5 middle levels (4 and 5 of 0..6), innermost first.
  with pytest.raises(ValueError, match='divisible by 128'):
    param_shapes(module, 64)
  with pytest.raises(ValueError, match='>= 5'):
    models.UnetGenerator(num_downs=4).layout(3)


@pytest.mark.parametrize('name, expected', [('unet_256', ('unet', 8)), ('unet_32', ('unet', 5)),
                                            ('resnet_3blocks', ('resnet', 3))])
def test_generator_names(name, expected):
  assert config_lib.parse_generator(name) == expected


@pytest.mark.parametrize('name', ['unet_16', 'unet_100', 'unet', 'unet_256x', 'resnet_0blocks'])
def test_bad_generator_names_are_rejected(name):
  with pytest.raises(ValueError, match=r"config\.model\.generator.*'unet_<n>' with n a power"):
    config_lib.parse_generator(name)


# --- the 4x4 transposed conv in sub-pixel form ------------------------------------------------


@pytest.mark.parametrize('kernel, padding, output_padding', [(4, 1, 0), (3, 1, 1), (2, 0, 0)])
def test_subpixel_form_of_any_doubling_transposed_conv(kernel, padding, output_padding):
  lax_padding = ((kernel - 1 - padding, kernel - 1 - padding + output_padding),) * 2
  assert fast_convs.subpixel_padding(kernel, 2, lax_padding) == padding
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3))
  weights = jax.random.normal(jax.random.key(1), (kernel, kernel, 4, 3))
  module = layers.nn.ConvTranspose(4, (kernel, kernel),
                                   strides=(2, 2),
                                   padding=lax_padding,
                                   transpose_kernel=True,
                                   use_bias=False)
  with jax.default_matmul_precision('highest'):
    expected = module.apply({'params': {'kernel': weights}}, x)
    actual = fast_convs.subpixel_conv_transpose(x, weights, padding)
  assert actual.shape == expected.shape == (2, 10, 12, 4)
  np.testing.assert_allclose(actual, expected, atol=1e-5 * float(jnp.abs(expected).max()))
  assert fast_convs.subpixel_padding(3, 2, ((1, 1), (1, 1))) is None  # Output 2H - 1.


# --- dropout ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'network, size',
    [
        (models.ResnetGenerator(ngf=4, num_blocks=2, use_dropout=True), 32),  # Between block convs.
        (models.UnetGenerator(ngf=2, num_downs=6, use_dropout=True), 64),  # One middle level.
    ])
def test_dropout_is_random_in_training_and_off_in_eval_mode(network, size):
  params = random_params(network, size)
  plain = network.clone(use_dropout=False)
  assert jax.tree.structure(params) == jax.tree.structure(random_params(plain, size))
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype(np.float32))
  expected = plain.apply({'params': params}, x)
  # Dropout off (test.py --eval) is the network without dropout layers.
  np.testing.assert_array_equal(
      network.clone(deterministic=True).apply({'params': params}, x), expected)
  with pytest.raises(Exception, match='dropout'):
    network.apply({'params': params}, x)  # Dropout on needs its RNG stream.
  apply = models.network_fn(network, params, jax.random.key(1))
  first, second = apply(x), apply(x)  # Each call draws its own masks.
  assert np.abs(first - second).max() > 1e-3 and np.abs(first - expected).max() > 1e-3
  np.testing.assert_array_equal(first, models.network_fn(network, params, jax.random.key(1))(x))


def test_inference_keeps_dropout_on_unless_eval_mode():
  """As test.py: dropout on by default (masks from the seed), off with --eval (eval_mode)."""
  network = models.ResnetGenerator(ngf=4, num_blocks=1, use_dropout=True, fast_convs=False)
  params = random_params(network, 32)
  x = np.random.default_rng(4).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
  official = inference.Generator(network, params, 3, 3, 'dropout on')
  first, again = (inference.translate_any_size(official, x, seed=0) for _ in range(2))
  np.testing.assert_array_equal(first, again)
  assert np.abs(first - inference.translate_any_size(official, x, seed=1)).max() > 1e-3
  evaluated = official._replace(module=network.clone(deterministic=True))
  expected = network.clone(use_dropout=False).apply({'params': params}, x)
  # The same function, jitted in another program than the eager one: float32 rounding apart.
  np.testing.assert_allclose(inference.translate_any_size(evaluated, x, seed=1),
                             expected,
                             atol=1e-5)


def test_dropout_zeroes_half_and_rescales():
  module = layout.LayoutNetwork(layers=(layout.Dropout(),))
  x = jnp.ones((4, 64, 64, 8))
  y = np.asarray(module.apply({}, x, rngs={'dropout': jax.random.key(0)}))
  assert set(np.unique(y)) == {0.0, 2.0}
  assert abs((y == 0).mean() - 0.5) < 0.01


# --- spectral norm ----------------------------------------------------------------------------

X32 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32))


def kernel_with_spectrum(shape, transpose, singular_values, seed=0):
  """A kernel whose PyTorch weight matrix (out, in * kH * kW) has the given singular values."""
  out_axis = 2 if transpose else 3
  rows = shape[out_axis]
  columns = int(np.prod(shape)) // rows
  rng = np.random.default_rng(seed)
  u = np.linalg.qr(rng.normal(size=(rows, rows)))[0]
  v = np.linalg.qr(rng.normal(size=(columns, rows)))[0]
  matrix = (u * np.asarray(singular_values)) @ v.T
  moved = [shape[out_axis]] + [d for i, d in enumerate(shape) if i != out_axis]
  return np.moveaxis(matrix.reshape(moved), 0, out_axis).astype(np.float32), matrix


def sigma_estimate(kernel, transpose):
  """The sigma that layers.spectral_norm divided `kernel` by."""
  normalized = np.asarray(layers.spectral_norm(jnp.asarray(kernel), transpose), np.float64)
  index = np.argmax(np.abs(kernel))
  return float(kernel.ravel()[index] / normalized.ravel()[index])


@pytest.mark.parametrize('shape, transpose', [((4, 4, 64, 128), False), ((4, 4, 3, 8), False),
                                              ((3, 3, 16, 32), True), ((1, 1, 16, 1), False)])
def test_spectral_norm_against_svd(shape, transpose):
  """sigma against numpy's SVD: exact (to float32) where the largest singular value stands 1.5x
  above the next (power iteration's error shrinks as (s2 / s1) ** (2 k)); on a random kernel,
  whose top singular values crowd together, from below and within 1 %."""
  rows = shape[2 if transpose else 3]
  spectrum = np.linspace(1.0, 0.1, rows)
  spectrum[0] = 1.5 * spectrum[min(1, rows - 1)] if rows > 1 else 0.7
  kernel, matrix = kernel_with_spectrum(shape, transpose, spectrum)
  sigma = np.linalg.svd(matrix, compute_uv=False)[0]
  np.testing.assert_allclose(sigma_estimate(kernel, transpose), sigma, rtol=1e-5)

  random = np.asarray(jax.random.normal(jax.random.key(2), shape), np.float32)
  out_axis = 2 if transpose else 3
  matrix = np.moveaxis(random.astype(np.float64), out_axis, 0).reshape(rows, -1)
  sigma = np.linalg.svd(matrix, compute_uv=False)[0]
  estimate = sigma_estimate(random, transpose)
  assert sigma * (1 - 1e-2) <= estimate <= sigma * (1 + 1e-5), (estimate, sigma)


def test_spectral_norm_discriminator_keeps_its_parameters():
  config = ml_collections.ConfigDict(
      dict(discriminator='basic', ndf=8, norm='instance', n_layers_D=3, spectral_norm=True))
  normalized = models.build_discriminator(config)
  config.spectral_norm = False
  plain = models.build_discriminator(config)
  params = normalized.init(INIT_KEY, X32)['params']
  assert jax.tree.structure(params) == jax.tree.structure(plain.init(INIT_KEY, X32)['params'])
  # The same scores as the plain network on the normalised kernels.
  kernels = jax.tree_util.tree_map_with_path(
      lambda path, p: layers.spectral_norm(p) if path[-1].key == 'kernel' else p, params)
  np.testing.assert_allclose(normalized.apply({'params': params}, X32),
                             plain.apply({'params': kernels}, X32),
                             rtol=1e-5,
                             atol=1e-6)
  grads = jax.grad(lambda p: jnp.sum(normalized.apply({'params': p}, X32)))(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


# --- batch norm at test time: each image by its own statistics ------------------------------


@pytest.mark.parametrize('module', [
    models.UnetGenerator(ngf=4, num_downs=5, norm='batch', fast_convs=False),
    models.ResnetGenerator(ngf=4, num_blocks=1, norm='batch', fast_convs=False),
])
def test_batch_norm_generator_translates_each_image_as_alone(module):
  params = random_params(module, 32)
  generator = inference.Generator(module, params, 3, 3, 'random')
  x = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with jax.default_matmul_precision('highest'):
    batched = inference.translate_any_size(generator, x)
    # Truth: the official test.py, one image per batch, in train mode (batch statistics).
    singles = np.concatenate([module.apply({'params': params}, x[i:i + 1]) for i in range(2)])
    together = np.asarray(module.apply({'params': params}, x))
  # Per-image statistics sum the same values in another order than a batch of one, and XLA blocks
  # the convolutions of two images differently from one's: float32 rounding, which over the
  # n = 32 * 32 terms of a statistic grows like sqrt(n) * eps relative, once per normalised layer
  # (at most 10 here), into outputs of scale 1 (tanh). Measured: 3.5e-7 (U-Net), 1.4e-6 (ResNet).
  normalised_layers = sum(conv.norm == 'batch' for _, conv in layout.walk(module.layout(3)))
  tolerance = normalised_layers * np.sqrt(32 * 32) * np.finfo(np.float32).eps
  assert normalised_layers <= 10 and np.abs(batched - singles).max() < tolerance
  # Not the batch's statistics: the two images would change each other's outputs.
  assert np.abs(together - singles).max() > 100 * tolerance


@pytest.mark.parametrize('module, independent', [
    (models.ResnetGenerator(ngf=4, num_blocks=1, norm='instance'), True),
    (models.ResnetGenerator(ngf=4, num_blocks=1, norm='none'), True),
    (models.ResnetGenerator(ngf=4, num_blocks=1, norm='batch'), False),
    (models.ResnetGenerator(ngf=4, num_blocks=1, norm='batch', norm_per_image=True), True),
    (models.ResnetGenerator(ngf=4, num_blocks=1, use_dropout=True), False),
    (models.ResnetGenerator(ngf=4, num_blocks=1, use_dropout=True, deterministic=True), True),
    (models.UnetGenerator(ngf=4, num_downs=5, norm='instance'), True),
    (models.UnetGenerator(ngf=4, num_downs=6, norm='instance', use_dropout=True), False),
    (models.NLayerDiscriminator(ndf=4, norm='instance'), True),
    (models.NLayerDiscriminator(ndf=4, norm='batch'), False),
    (models.PixelDiscriminator(ndf=4, norm='instance'), True),
])
def test_networks_that_map_examples_independently(module, independent):
  """The train step runs a network's calls on several batches as one call on their concatenation
  exactly where this holds: then the call on both equals the separate calls."""
  assert module.maps_examples_independently(3) is independent
  if independent:
    params = random_params(module, 32)
    x = np.random.default_rng(5).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    apply = models.network_fn(module, params)
    together = np.asarray(apply(jnp.asarray(x)))
    singles = np.concatenate([apply(jnp.asarray(x[i:i + 1])) for i in range(2)])
    # Other blockings of the same sums: float32 rounding of outputs of scale 1.
    np.testing.assert_allclose(together, singles, atol=1e-5)


# --- training with the other networks -------------------------------------------------------


def step_twice(config):
  """The params after one train step from one state with two different step keys."""
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  from cyclegan_jax import train  # pylint: disable=g-import-not-at-top
  base = load_config('tiny')
  base.update_from_flattened_dict(config)
  config_lib.validate(base)
  trainer = train.build_trainer(base, 1000)
  rng = np.random.default_rng(0)
  batch = {domain: rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32) for domain in 'AB'}
  results = []
  for seed in (1, 2):
    state = trainer.init()
    state = state.replace(rng=jax.device_put(jax.random.PRNGKey(seed), trainer.state_sharding))
    state, metrics = trainer.step(state, jax.device_put(batch, trainer.batch_sharding))
    assert all(np.isfinite(float(value)) for value in metrics.values()), metrics
    results.append(jax.tree.map(np.asarray, state.params))
  return results


@pytest.mark.parametrize('use_dropout', [False, True])
def test_train_step_draws_dropout_from_the_state_rng(use_dropout):
  """With pools off, the step key only feeds dropout: two keys give the same update without
  dropout layers and different ones with them (in both generators)."""
  first, second = step_twice({
      'model.generator': 'resnet_1blocks',
      'pool_size': 0,
      'model.use_dropout': use_dropout
  })
  for name in ('G', 'F'):
    difference = max(
        np.abs(a - b).max()
        for a, b in zip(jax.tree.leaves(first[name]), jax.tree.leaves(second[name])))
    assert (difference > 0) == use_dropout, (name, difference)


def test_train_step_with_unet_pixel_discriminator_and_spectral_norm():
  first, _ = step_twice({
      'model.generator': 'unet_32',
      'model.norm': 'batch',
      'model.discriminator': 'pixel',
      'model.spectral_norm': True
  })
  assert 'level_4' in first['G']['level_1']['level_2']['level_3']
  assert set(first['D_X']) == {'layer_0', 'layer_1', 'head'}
