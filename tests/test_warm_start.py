"""config.init_from / init_parts: a new run takes exactly the named parts of another run's state."""

import jax
import numpy as np
import pytest

from conftest import updated
from cyclegan_jax import checkpointing
from cyclegan_jax import config_lib
from cyclegan_jax import train
from cyclegan_jax import loop
from cyclegan_jax import workdir as workdir_lib


@pytest.fixture
def source_run(finished_tiny_run):
  """A finished tiny run (checkpoints at 3 and 6) and its final train state."""
  workdir, _ = finished_tiny_run
  state, step = checkpointing.restore_train_state(workdir)
  assert step == 6
  return workdir, state


def fresh_state(config):
  trainer = train.build_trainer(config, 1000)
  return trainer, trainer.init()


def warm_started(fresh, config, trainer):
  return checkpointing.warm_started(fresh, checkpointing.read_warm_start_source(config),
                                    trainer.state_sharding)


def assert_tree_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def assert_tree_differs(a, b):
  same = jax.tree.map(lambda x, y: np.array_equal(x, y), jax.device_get(a), jax.device_get(b))
  assert not all(jax.tree.leaves(same))


def test_only_the_named_parts_are_taken(tiny_config, source_run):
  workdir, source = source_run
  config = updated(tiny_config, seed=1, init_from=str(workdir), init_parts='G, F')
  trainer, fresh = fresh_state(config)
  state = warm_started(fresh, config, trainer)
  for name in ('G', 'F'):
    assert_tree_equal(state.params[name], source.params[name])
  for name in ('D_X', 'D_Y'):
    assert_tree_equal(state.params[name], fresh.params[name])
    assert_tree_differs(state.params[name], source.params[name])
  assert_tree_equal(state.opt_state_generators, fresh.opt_state_generators)
  assert_tree_equal(state.pool_A, fresh.pool_A)
  assert int(state.step) == 0
  assert_tree_equal(state.rng, fresh.rng)

  everything = updated(config, init_parts='G,F,D_X,D_Y,optimizer,pools')
  state = warm_started(fresh_state(everything)[1], everything, trainer)
  assert_tree_equal(state.params, source.params)
  assert_tree_equal(state.opt_state_discriminators, source.opt_state_discriminators)
  assert_tree_equal((state.pool_A, state.pool_B), (source.pool_A, source.pool_B))
  assert int(state.step) == 0  # The new run's schedule starts over.


def test_a_checkpoint_folder_names_its_step(tiny_config, source_run):
  workdir, _ = source_run
  config = updated(tiny_config,
                   init_from=str(workdir_lib.checkpoint_dir(workdir) / '3'),
                   init_parts='D_X')
  trainer, fresh = fresh_state(config)
  state = warm_started(fresh, config, trainer)
  at_step_3, step = checkpointing.restore_train_state(workdir, 3)
  assert step == 3
  assert_tree_equal(state.params['D_X'], at_step_3.params['D_X'])


def test_shapes_that_do_not_fit_are_named(tiny_config, source_run):
  workdir, _ = source_run
  config = updated(tiny_config, init_from=str(workdir), model__ngf=16)
  trainer, fresh = fresh_state(config)
  with pytest.raises(ValueError, match=r"init_from does not fit.*params\['[GF]'\].*shape"):
    warm_started(fresh, config, trainer)
  config = updated(tiny_config, init_from=str(workdir), init_parts='pools', pool_size=2)
  trainer, fresh = fresh_state(config)
  with pytest.raises(ValueError, match='pool_A.*shape'):
    warm_started(fresh, config, trainer)


def test_bad_init_settings_are_clear_errors(tiny_config, tmp_path):
  config = updated(tiny_config, init_from=str(tmp_path / 'absent'))
  trainer, fresh = fresh_state(config)
  with pytest.raises(FileNotFoundError, match='init_from'):
    warm_started(fresh, config, trainer)
  for parts in ('G,Q', '', 'G,G'):
    with pytest.raises(ValueError, match=r'config\.init_parts'):
      config_lib.validate(updated(tiny_config, init_from='x', init_parts=parts))


def test_a_run_warm_starts_once_then_resumes_its_own_checkpoints(tiny_config, source_run, tmp_path):
  workdir, source = source_run
  config = updated(tiny_config, init_from=str(workdir), init_parts='G,F,D_X,D_Y',
                   num_train_steps=3, learning_rate=1e-12)
  run = tmp_path / 'finetune'
  loop.train_and_evaluate(config, str(run))
  state, step = checkpointing.restore_train_state(run)
  assert step == 3
  # A learning rate of ~0 keeps the warm-started weights (to float rounding).
  np.testing.assert_allclose(state.params['G']['head']['conv']['kernel'],
                             source.params['G']['head']['conv']['kernel'], atol=1e-6)
  # Resuming continues the run's own checkpoint even if the source changes.
  final = loop.train_and_evaluate(
      updated(config, num_train_steps=4, init_from=str(tmp_path / 'gone')), str(run))
  assert final['step'] == 4


def test_a_new_run_refuses_a_source_that_does_not_fit_before_writing(tiny_config, source_run,
                                                                      tmp_path):
  workdir, _ = source_run
  no_checkpoints = tmp_path / 'no_checkpoints'
  no_checkpoints.mkdir()
  (no_checkpoints / workdir_lib.CONFIG_FILE).write_text(
      (workdir / workdir_lib.CONFIG_FILE).read_text())
  bad = [
      ({'init_from': str(tmp_path)}, FileNotFoundError, 'config.init_from: .* has no config.json'),
      ({'init_from': str(no_checkpoints)}, FileNotFoundError, 'has no checkpoints'),
      ({'init_from': str(workdir_lib.checkpoint_dir(workdir) / '4')}, FileNotFoundError,
       'does not exist: that run has checkpoints for steps 3, 6'),
      ({'init_from': str(workdir), 'model__ngf': 16}, ValueError, r"params\['[GF]'\].*shape"),
  ]
  for fields, error, message in bad:
    run = tmp_path / 'new'
    with pytest.raises(error, match=message):
      loop.train_and_evaluate(updated(tiny_config, **fields), str(run))
    assert not run.exists()
