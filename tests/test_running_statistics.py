"""Batch-norm running statistics: PyTorch's update rule, the official call order in both train
steps, and eval mode (test.py --eval) in translation, tiles, exports and conversion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from conftest import train_batch
from conftest import updated
from cyclegan_jax import checkpointing
from cyclegan_jax import config_lib
from cyclegan_jax import data
from cyclegan_jax import evaluation
from cyclegan_jax import inference
from cyclegan_jax import loop
from cyclegan_jax import models
from cyclegan_jax import train
from cyclegan_jax.data import image_io
from cyclegan_jax.inference import tiling
from cyclegan_jax.models import layers

MOMENTUM = 0.1  # torch.nn.BatchNorm2d's default, which the official networks keep.


def pytorch_running_update(mean, var, x):
  """BatchNorm2d in train mode (PyTorch's documented rule): running = (1 - m) running + m batch,
  the batch variance unbiased; x is NHWC."""
  flat = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
  return ((1 - MOMENTUM) * mean + MOMENTUM * flat.mean(0),
          (1 - MOMENTUM) * var + MOMENTUM * flat.var(0, ddof=1))


def test_every_train_mode_call_moves_the_running_statistics_as_pytorch():
  norm = layers.BatchStatsNorm(init_gain=0.3)
  rng = np.random.default_rng(0)
  inputs = [
      rng.normal(2.0, 3.0, shape).astype(np.float32)
      for shape in ((2, 5, 4, 3), (1, 3, 3, 3), (4, 2, 6, 3))
  ]
  variables = norm.init(jax.random.key(0), inputs[0])
  np.testing.assert_array_equal(variables['batch_stats']['mean'], np.zeros(3))
  np.testing.assert_array_equal(variables['batch_stats']['var'], np.ones(3))
  expected_mean, expected_var = np.zeros(3), np.ones(3)
  for x in inputs:
    y, updated = norm.apply(variables, x, mutable=['batch_stats'])
    variables = {**variables, **updated}
    expected_mean, expected_var = pytorch_running_update(expected_mean, expected_var, x)
    # The output still uses the batch's own statistics (biased variance).
    flat = x.reshape(-1, 3)
    scale, bias = variables['params']['scale'], variables['params']['bias']
    np.testing.assert_allclose(y, (x - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5) * scale + bias,
                               atol=1e-5)
  np.testing.assert_allclose(variables['batch_stats']['mean'], expected_mean, rtol=1e-5)
  np.testing.assert_allclose(variables['batch_stats']['var'], expected_var, rtol=1e-5)
  # Without a mutable collection nothing is read or written: the training forward is unchanged.
  np.testing.assert_array_equal(norm.apply({'params': variables['params']}, inputs[0]),
                                norm.apply(variables, inputs[0], mutable=['batch_stats'])[0])


def test_eval_mode_normalises_with_the_running_statistics():
  module = models.ResnetGenerator(output_nc=3, ngf=4, num_blocks=1, norm='batch')
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  variables = module.init(jax.random.key(0), x)
  rng = np.random.default_rng(2)
  stats = jax.tree.map(lambda v: rng.uniform(0.5, 1.5, v.shape).astype(np.float32),
                       variables['batch_stats'])
  eval_module = models.for_test(module, eval_mode=True)
  eval_params = models.with_running_statistics(variables['params'], stats)
  y = eval_module.apply({'params': eval_params}, x)
  # Each image alone gives its own output: eval mode is a function of the image alone.
  np.testing.assert_allclose(eval_module.apply({'params': eval_params}, x[1:]), y[1:], atol=1e-6)
  # The first layer by hand: reflect pad 3, 7x7 conv, then (h - mean) / sqrt(var + eps) ...
  first = variables['params']['stem']
  h = jax.lax.conv_general_dilated(layers.reflect_pad(x, 3),
                                   first['conv']['kernel'], (1, 1),
                                   'VALID',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  if 'bias' in first['conv']:
    h = h + first['conv']['bias']
  mean, var = stats['stem']['norm']['mean'], stats['stem']['norm']['var']
  expected = np.maximum(
      (h - mean) / np.sqrt(var + 1e-5) * first['norm']['scale'] + first['norm']['bias'], 0)
  captured = eval_module.apply({'params': eval_params},
                               x,
                               capture_intermediates=lambda m, _: m.name == 'stem')[1]
  np.testing.assert_allclose(captured['intermediates']['stem']['__call__'][0], expected, atol=1e-4)
  assert models.split_running_statistics(eval_params) == (variables['params'], stats)
  # Train-mode statistics give another output: the statistics are used.
  assert np.abs(models.for_test(module).apply({'params': variables['params']}, x) - y).max() > 0.01


def tiny_batch_norm_config(model_type: str):
  if model_type == 'pix2pix':
    config = load_config('pix2pix_default')
    config.model.update(ngf=4, ndf=4, use_dropout=False)
  else:
    config = load_config('tiny')
    config.model.update(norm='batch', generator='resnet_1blocks')
    config.lambda_identity = 0.5  # The official default: the identity passes are calls too.
  config.batch_size = 2
  config_lib.validate(config)
  return config


def chained(module, params, stats, inputs):
  """The running statistics after train-mode calls of `module` on `inputs`, in order."""
  for x in inputs:
    stats = module.apply({
        'params': params,
        'batch_stats': stats
    }, x, mutable=['batch_stats'])[1]['batch_stats']
  return stats


def assert_trees_close(actual, expected, what):
  for path, value in jax.tree_util.tree_leaves_with_path(expected):
    got = actual
    for key in path:
      got = got[key.key]
    np.testing.assert_allclose(got, value, rtol=1e-4, atol=1e-5, err_msg=what + str(path))


def max_difference(a, b):
  return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_cyclegan_step_moves_running_statistics_in_the_official_order():
  """optimize_parameters: forward (G(a), F(G(a)), F(b), G(F(b))), backward_G (identity G(b),
  F(a), then D_Y(G(a)), D_X(F(b))), backward_D_A (D_Y on real b, then the pool's fakes),
  backward_D_B (D_X likewise); all before any update, so with the step's old weights."""
  config = tiny_batch_norm_config('cyclegan')
  trainer = train.build_trainer(config, 1000)
  nets = trainer.networks
  state = trainer.init()
  old = jax.device_get(state.params)
  stats = jax.device_get(state.batch_stats)
  assert set(stats) == {'G', 'F', 'D_X', 'D_Y'}
  rng = np.random.default_rng(0)
  # Domains of different statistics, so that the order of the calls shows.
  a = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  b = rng.uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
  new_state, _ = trainer.step(state, jax.device_put({'A': a, 'B': b}, trainer.batch_sharding))

  G = lambda x: nets.G.apply({'params': old['G']}, x)
  F = lambda x: nets.F.apply({'params': old['F']}, x)
  fake_b, fake_a = G(a), F(b)  # The pools are empty at step 0: they hand the fakes back.
  expected = {
      'G': chained(nets.G, old['G'], stats['G'], [a, fake_a, b]),
      'F': chained(nets.F, old['F'], stats['F'], [fake_b, b, a]),
      'D_Y': chained(nets.D_Y, old['D_Y'], stats['D_Y'], [fake_b, b, fake_b]),
      'D_X': chained(nets.D_X, old['D_X'], stats['D_X'], [fake_a, a, fake_a]),
  }
  actual = jax.device_get(new_state.batch_stats)
  for name in expected:
    assert_trees_close(actual[name], expected[name], name)
  # The order matters: G's calls in another order give other statistics.
  assert max_difference(actual['G'], chained(nets.G, old['G'], stats['G'], [b, fake_a, a])) > 1e-3


def test_pix2pix_step_moves_running_statistics_in_the_official_order():
  """forward G(a); backward_D: D on the fake pair, then the real pair; then, after D's update,
  backward_G: the updated D on the fake pair."""
  config = tiny_batch_norm_config('pix2pix')
  trainer = train.build_trainer(config, 1000)
  nets = trainer.networks
  state = trainer.init()
  old = jax.device_get(state.params)
  stats = jax.device_get(state.batch_stats)
  assert set(stats) == {'G', 'D'}
  dataset = data.create_dataset(config.data, seed=config.seed)
  batch = train_batch(dataset, 0, 2)
  a, b = batch['A'], batch['B']
  new_state, _ = trainer.step(state, jax.device_put(batch, trainer.batch_sharding))
  new = jax.device_get(new_state.params)

  fake_b = nets.G.apply({'params': old['G']}, a)
  fake_pair, real_pair = np.concatenate([a, fake_b], -1), np.concatenate([a, b], -1)
  after_D_step = chained(nets.D, old['D'], stats['D'], [fake_pair, real_pair])
  expected = {
      'G': chained(nets.G, old['G'], stats['G'], [a]),
      'D': chained(nets.D, new['D'], after_D_step, [fake_pair]),
  }
  actual = jax.device_get(new_state.batch_stats)
  for name in expected:
    assert_trees_close(actual[name], expected[name], name)


def eval_generator(seed=0):
  """A ResNet generator with batch norm in eval mode, running statistics far from any batch's."""
  module = models.ResnetGenerator(output_nc=3, ngf=4, num_blocks=1, norm='batch', fast_convs=False)
  variables = module.init(jax.random.key(seed), jnp.zeros((1, 16, 16, 3)))
  rng = np.random.default_rng(seed)
  stats = jax.tree.map(lambda v: rng.uniform(0.5, 1.5, v.shape).astype(np.float32),
                       variables['batch_stats'])
  params = models.with_running_statistics(variables['params'], stats)
  return inference.Generator(models.for_test(module, eval_mode=True), params, 3, 3, 'test')


def test_tiles_reproduce_eval_mode():
  generator = eval_generator()
  x = np.random.default_rng(3).uniform(-1, 1, (1, 44, 52, 3)).astype(np.float32)
  whole = inference.translate_any_size(generator, x)
  settings = tiling.Settings.of_module(models.for_test(generator.module))
  assert settings.norm_running_average
  plan = tiling.plan_tiles(generator.layout, x.shape, 16, settings)
  # Pointwise norms are no barriers: no statistics are gathered.
  assert not any(isinstance(node.op, tiling.NormOp) for node in plan.nodes)
  tiled = tiling.run_tiles(plan, generator.params, x)
  np.testing.assert_allclose(tiled, whole, atol=1e-5)


@pytest.mark.parametrize('fmt', ['onnx', 'stablehlo'])
def test_eval_mode_exports_compute_what_the_network_does(tmp_path, fmt):
  from cyclegan_jax import export  # pylint: disable=g-import-not-at-top
  export.require_packages(fmt, runtime_only=True)
  generator = eval_generator()
  x = np.random.default_rng(4).uniform(-1, 1, (2, 16, 20, 3)).astype(np.float32)
  expected = inference.translate_any_size(generator, x)
  path = export.write(generator.module,
                      generator.params,
                      fmt,
                      tmp_path / f'g{export.SUFFIXES[fmt]}',
                      platforms=('cpu',))
  np.testing.assert_allclose(export.load_artifact(path)(x), expected, atol=1e-4)


def test_an_eval_mode_run_evaluates_and_translates_with_its_running_statistics(tmp_path):
  """config.model.eval_mode: the run's evaluations, `evaluate` and `translate` normalise with the
  running statistics in the train state (checked against the network applied by hand)."""
  config = updated(tiny_batch_norm_config('pix2pix'),
                   num_train_steps=2,
                   log_every_steps=1,
                   checkpoint_every_steps=2,
                   sample_every_steps=2,
                   eval_every_steps=0,
                   num_sample_images=2,
                   plot_at_end=False)
  config.model.eval_mode = True
  config.data.num_heldout = 4
  workdir = tmp_path / 'run'
  final = loop.train_and_evaluate(config, str(workdir))
  state, _ = checkpointing.restore_train_state(workdir)
  # The running statistics moved from their start (0 and 1).
  assert max(float(np.abs(v).max()) for v in jax.tree.leaves(state.batch_stats['G'])) > 0
  network = models.for_test(train.build_trainer(config, 10).networks.G, eval_mode=True)
  params = models.with_running_statistics(state.params['G'], state.batch_stats['G'])
  by_hand = lambda x: network.apply({'params': params}, x)
  dataset = data.create_dataset(config.data, seed=config.seed)
  test_sets, paired = evaluation.load_test_sets(dataset, config.data.paired_test)
  expected = evaluation.evaluate(by_hand, None, test_sets, paired, None)
  assert final['heldout_mae_AtoB'] == pytest.approx(expected['heldout_mae_AtoB'], abs=1e-3)
  assert evaluation.evaluate_workdir(str(workdir))[1]['heldout_mae_AtoB'] == pytest.approx(
      expected['heldout_mae_AtoB'], abs=1e-3)
  generator = inference.load_generator(workdir=workdir)  # eval_mode from the run's config
  x = np.stack([image_io.from_uint8(image) for image in test_sets['A'][:2]])
  np.testing.assert_allclose(inference.translate_any_size(generator, x), by_hand(x), atol=1e-5)
  # Without eval mode each image is normalised by its own statistics: another output.
  per_image = inference.load_generator(workdir=workdir, eval_mode=False)
  assert np.abs(inference.translate_any_size(per_image, x) - by_hand(x)).max() > 1e-3


def test_a_checkpoint_without_running_statistics_restores_with_fresh_ones(tmp_path, caplog):
  """Checkpoints written before train states kept running statistics still resume (they are not
  taken for damaged ones): the statistics start at PyTorch's initial values."""
  config = tiny_batch_norm_config('pix2pix')
  state = train.build_trainer(config, 10).init()
  checkpointing.check_and_save_config(tmp_path, config)
  manager = checkpointing.create_manager(tmp_path, 3)
  checkpointing.save(manager, state.replace(batch_stats={}), config)
  manager.wait_until_finished()
  manager.close()
  restored, step = checkpointing.restore_train_state(tmp_path)
  assert step == 0 and 'predates batch-norm running statistics' in caplog.text
  jax.tree.map(np.testing.assert_array_equal, restored.params, jax.device_get(state.params))
  for path, value in jax.tree_util.tree_leaves_with_path(restored.batch_stats):
    np.testing.assert_array_equal(value, 1.0 if path[-1].key == 'var' else 0.0)
  assert jax.tree.map(np.shape, restored.batch_stats) == jax.tree.map(np.shape, state.batch_stats)


def test_a_warm_started_network_brings_its_running_statistics():
  config = tiny_batch_norm_config('pix2pix')
  trainer = train.build_trainer(config, 10)
  fresh = jax.device_get(trainer.init())
  dataset = data.create_dataset(config.data, seed=config.seed)
  batch = jax.device_put(train_batch(dataset, 0, 2), trainer.batch_sharding)
  source = jax.device_get(trainer.step(trainer.init(), batch)[0])
  merged = checkpointing.merge(fresh, source, ['G'])
  jax.tree.map(np.testing.assert_array_equal, merged.batch_stats['G'], source.batch_stats['G'])
  jax.tree.map(np.testing.assert_array_equal, merged.batch_stats['D'], fresh.batch_stats['D'])
  assert max_difference(source.batch_stats['D'], fresh.batch_stats['D']) > 0
