"""The moving average of the generators' weights (config.ema_decay): its definition, checkpoints,
resume, warm starts, and the translations that use it."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import assert_one_line_user_error
from conftest import fraction_above
from conftest import load_config
from conftest import ROOT
from conftest import train_batch
from conftest import updated
from cyclegan_jax import checkpointing
from cyclegan_jax import config_lib
from cyclegan_jax import data
from cyclegan_jax import errors
from cyclegan_jax import evaluation
from cyclegan_jax import inference
from cyclegan_jax import state as state_lib
from cyclegan_jax import train
from cyclegan_jax import loop
from cyclegan_jax import workdir as workdir_lib

DECAY = 0.75  # Far from 0 and 1: each step's weights count visibly.


def assert_same(tree_a, tree_b):
  """Equal pytrees: the same structure, bitwise equal leaves."""
  assert jax.tree.structure(tree_a) == jax.tree.structure(tree_b)
  for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope='module')
def ema_run(tmp_path_factory):
  """(config, workdir) of a finished tiny run (4 steps) that keeps moving averages."""
  config = updated(load_config('tiny'),
                   ema_decay=DECAY,
                   num_train_steps=4,
                   checkpoint_every_steps=2,
                   sample_every_steps=4)
  workdir = tmp_path_factory.mktemp('ema_run')
  loop.train_and_evaluate(config, str(workdir))
  return config, workdir


def test_the_average_is_decay_weighted_over_the_steps(tiny_config):
  """After steps 1 and 2: average = d² G₀ + d(1 − d) G₁ + (1 − d) G₂, for G and F, where G_k are
  the trained weights after step k; the discriminators and the training itself are untouched."""
  dataset = data.create_dataset(tiny_config.data, seed=tiny_config.seed)
  runs = {}
  for decay in (0.0, DECAY):
    trainer = train.build_trainer(updated(tiny_config, ema_decay=decay), epoch_steps=1000)
    state = trainer.init()
    history = [state_lib.to_host(state.params)]
    for step in range(2):
      batch = jax.device_put(train_batch(dataset, step, tiny_config.batch_size),
                             trainer.batch_sharding)
      state, _ = trainer.step(state, batch)
      history.append(state_lib.to_host(state.params))
    runs[decay] = history
  plain, averaged = runs[0.0], runs[DECAY]
  assert set(plain[-1]) == {'G', 'F', 'D_X', 'D_Y'}
  assert set(averaged[-1]) == {'G', 'F', 'D_X', 'D_Y', 'G_ema', 'F_ema'}
  for name in ('G', 'F'):
    start, first, second = (params[name] for params in averaged)
    assert_same(averaged[0][f'{name}_ema'], start)
    expected = jax.tree.map(
        lambda g0, g1, g2: DECAY**2 * g0 + DECAY * (1 - DECAY) * g1 + (1 - DECAY) * g2, start,
        first, second)
    for got, want in zip(jax.tree.leaves(averaged[-1][f'{name}_ema']), jax.tree.leaves(expected)):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # The average moved away from the trained weights (Adam's steps are ~lr = 2e-4 each).
    assert max(
        float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(averaged[-1][f'{name}_ema']),
                                                     jax.tree.leaves(second))) > 1e-5
  # Keeping averages changes no trained weight beyond float rounding. The two programs differ,
  # and Adam's first steps are lr * sign(g): a weight whose gradient is near zero may round to
  # another step, so a few may differ by up to ~lr; all others agree to 1e-6.
  trained = ('G', 'F', 'D_X', 'D_Y')
  assert fraction_above([plain[-1][k] for k in trained], [averaged[-1][k] for k in trained],
                        1e-6) < 0.01


def test_averages_are_checkpointed_and_resume_exactly(ema_run, tmp_path):
  config, straight = ema_run
  interrupted = tmp_path / 'interrupted'
  loop.train_and_evaluate(updated(config, num_train_steps=2), str(interrupted))
  loop.train_and_evaluate(config, str(interrupted))
  (state_a, step_a), (state_b, step_b) = (
      checkpointing.restore_train_state(workdir) for workdir in (straight, interrupted))
  assert step_a == step_b == 4
  assert 'G_ema' in state_a.params and 'F_ema' in state_a.params
  assert_same(state_a, state_b)


def test_translations_use_the_average_unless_raw_is_asked(ema_run):
  _, workdir = ema_run
  state, _ = checkpointing.restore_train_state(workdir)
  for direction, name in (('AtoB', 'G'), ('BtoA', 'F')):
    default = inference.load_generator(workdir, direction=direction)
    raw = inference.load_generator(workdir, direction=direction, weights='raw')
    assert 'moving average' in default.description and 'moving average' not in raw.description
    assert_same(default.params, state.params[f'{name}_ema'])
    assert_same(raw.params, state.params[name])


def test_the_run_evaluates_with_the_average(ema_run):
  """The held-out evaluation at the end of training equals `evaluate` with the average, and
  differs from the trained weights'."""
  _, workdir = ema_run
  during = json.loads(workdir_lib.eval_file(workdir, 4).read_text())
  _, average = evaluation.evaluate_workdir(str(workdir), inception_weights='')
  _, raw = evaluation.evaluate_workdir(str(workdir), inception_weights='', weights='raw')
  key = 'heldout_mae_AtoB'
  assert abs(during[key] - average[key]) < 1e-3 * during[key]
  assert abs(raw[key] - average[key]) > 1e-6
  # The trained weights' results go beside the run's own, which they do not replace.
  assert json.loads(workdir_lib.eval_file(workdir, 4).read_text())[key] == average[key]
  assert json.loads(workdir_lib.eval_file(workdir, 4,
                                          raw_weights=True).read_text())[key] == raw[key]


def test_a_run_without_averages_refuses_ema_with_one_line(finished_tiny_run, tmp_path):
  workdir, _ = finished_tiny_run
  with pytest.raises(errors.InvalidValueError, match='keeps no moving average of G'):
    inference.load_generator(workdir, weights='ema')
  image = tmp_path / 'in.png'
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
  result = subprocess.run([
      sys.executable, '-m', 'cyclegan_jax.translate', f'--workdir={workdir}', f'--input={image}',
      f'--output={tmp_path / "out"}', '--weights=ema'
  ],
                          cwd=ROOT,
                          capture_output=True,
                          text=True,
                          timeout=300,
                          check=False)
  assert_one_line_user_error(result, 'keeps no moving average', '--weights=raw')
  assert not (tmp_path / 'out').exists()


def test_a_warm_started_generator_brings_its_average(ema_run, finished_tiny_run):
  config, ema_workdir = ema_run
  plain_workdir, _ = finished_tiny_run
  fresh = jax.jit(state_lib.train_state_initializer(config))()
  source, _ = checkpointing.restore_train_state(ema_workdir)
  merged = checkpointing.merge(fresh, source, ['G'])
  assert_same(merged.params['G_ema'], source.params['G_ema'])
  assert_same(merged.params['F_ema'], fresh.params['F_ema'])
  # From a run that kept no average, the average starts at the generator's weights.
  plain, _ = checkpointing.restore_train_state(plain_workdir)
  merged = checkpointing.merge(fresh, plain, ['G'])
  assert_same(merged.params['G_ema'], plain.params['G'])


def test_switching_the_average_on_or_off_is_an_architecture_change(tiny_config):
  saved_before_the_field = tiny_config.to_dict()
  del saved_before_the_field['ema_decay']
  assert not config_lib.architecture_mismatches(saved_before_the_field, tiny_config)
  mismatches = config_lib.architecture_mismatches(saved_before_the_field,
                                                  updated(tiny_config, ema_decay=0.999))
  assert mismatches == ['ema_decay: saved 0.0, now 0.999 (on or off)']
  saved = updated(tiny_config, ema_decay=0.999).to_dict()
  assert not config_lib.architecture_mismatches(saved, updated(tiny_config, ema_decay=0.9))


@pytest.mark.parametrize('value', [1.0, -0.1, float('nan')])
def test_bad_decays_are_refused(tiny_config, value):
  with pytest.raises(errors.InvalidValueError, match='config.ema_decay'):
    config_lib.validate(updated(tiny_config, ema_decay=value))
