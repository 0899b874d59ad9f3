"""Ensembles: members trained by one program equal their own runs, resume exactly, fail alone."""

import json
import re
import shutil

import jax
import numpy as np
import pytest

from conftest import load_config
from conftest import relative_difference
from conftest import train_batch
from conftest import updated
from cyclegan_jax import checkpointing
from cyclegan_jax import data
from cyclegan_jax import ensemble
from cyclegan_jax import errors
from cyclegan_jax import state as state_lib
from cyclegan_jax import train
from cyclegan_jax import loop
from cyclegan_jax import plots
from cyclegan_jax import workdir as workdir_lib


def ensemble_config(**fields):
  return updated(load_config('tiny'), **fields)


def test_members_take_their_own_values_and_share_the_rest():
  config = ensemble_config(ensemble__seed='0,1,2', ensemble__lambda_cycle='5.0',
                           ensemble__use_gan_F='true,false,true')
  members = ensemble.members(config)
  assert [m.name for m in members] == ['seed=0,use_gan_F=True', 'seed=1,use_gan_F=False',
                                       'seed=2,use_gan_F=True']
  assert [m.config.seed for m in members] == [0, 1, 2]
  assert all(m.config.lambda_cycle == 5.0 and m.config.batch_size == 2 for m in members)
  assert not any(ensemble.is_ensemble(m.config) for m in members)  # Each is a plain run.
  fixed, varying = state_lib.split_hyperparams([m.config for m in members])
  # Shared switches are compiled in; other values are the step's arguments, shared or not.
  assert fixed['use_gan_G'] == 1.0 and 'use_gan_F' not in fixed
  np.testing.assert_array_equal(varying['use_gan_F'], [1.0, 0.0, 1.0])
  np.testing.assert_array_equal(varying['lambda_cycle'], [5.0, 5.0, 5.0])
  named = ensemble.members(updated(config, ensemble__names='a:b:c'))
  assert [m.name for m in named] == ['a', 'b', 'c']


@pytest.mark.parametrize('fields, message', [
    (dict(ensemble__seed='0,1', ensemble__lambda_cycle='1.0,2.0,3.0'),
     r'config\.ensemble\.lambda_cycle: 3 values for 3 members|ensemble\.seed: 2 values'),
    (dict(ensemble__seed='0,x'), r"config\.ensemble\.seed = '0,x': 'x' is not a int"),
    (dict(ensemble__seed='0,1', ensemble__names='a:a'), 'two members would share a folder'),
    (dict(ensemble__seed='0,1', ensemble__names='a:../b'), 'is not a folder name'),
    (dict(ensemble__lambda_cycle='1.0,-2.0'), r'config\.lambda_cycle = -2\.0'),
])
def test_members_that_do_not_fit_are_explained(fields, message):
  with pytest.raises(errors.InvalidValueError, match=message):
    ensemble.members(ensemble_config(**fields))


def member_batches(trainer, members, dataset, step, batch_size):
  """The members' batches of `step` as the trainer takes them: one stacked batch per slot."""
  rows = [train_batch(dataset.reseeded(m.config.seed), step, batch_size) for m in members]
  return tuple(
      jax.device_put(slot, trainer.batch_sharding)
      for slot in ensemble.to_slots(rows, trainer.layout))


def trees_equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize('members_per_call, switches', [(1, 'true,false'), (2, 'true,false')])
def test_a_member_equals_its_own_run(tiny_config, members_per_call, switches):
  """Three steps of two members (other seeds, cycle weights, learning rates and Adam betas) beside
  each member's own run.

  One member per call (the CPU default) runs each member's own program (its switches compiled in
  as in its run): bitwise equal. Vectorized members make another program (a switch that differs
  between them is traced, not compiled in), whose sums XLA may order differently. Such rounding
  is amplified from step to step (Adam's first steps move every weight by about the learning rate
  whatever the sign of a gradient that is rounding noise, e.g. a bias before instance norm), so
  those compare the first gradients through Adam's moments, and every step's losses and the pools,
  which a wrong hyperparameter or image would change by far more."""
  config = updated(tiny_config,
                   ensemble__seed='0,1',
                   ensemble__lambda_cycle='10.0,5.0',
                   ensemble__learning_rate='2e-4,1e-4',
                   ensemble__beta1='0.5,0.9',
                   ensemble__use_cycle_backward=switches,
                   ensemble__members_per_call=members_per_call)
  members = ensemble.members(config)
  bitwise = members_per_call == 1
  dataset = data.create_dataset(config.data, seed=0)
  trainer = train.build_trainer(config, 1000, members=members)
  assert len(trainer.layout.slots) == 2 // members_per_call
  own = [train.build_trainer(member.config, 1000) for member in members]
  member_datasets = [dataset.reseeded(member.config.seed) for member in members]
  state, own_states = trainer.init(), [run.init() for run in own]
  for step in range(3):
    state, metrics = trainer.step(state, member_batches(trainer, members, dataset, step, 2))
    for k, run in enumerate(own):
      own_states[k], own_metrics = run.step(
          own_states[k], jax.device_put(train_batch(member_datasets[k], step, 2),
                                        run.batch_sharding))
      mine = state_lib.to_host(
          (ensemble.member_of(state, trainer.layout,
                              k), ensemble.member_of(metrics, trainer.layout, k)))
      theirs = state_lib.to_host((own_states[k], own_metrics))
      if bitwise:
        assert trees_equal(mine, theirs), (step, k)
        continue
      assert relative_difference(theirs[1], mine[1]) < 1e-5, (step, k)
      if step == 0:
        for name in ('opt_state_generators', 'opt_state_discriminators'):
          ours, reference = getattr(mine[0], name)[0], getattr(theirs[0], name)[0]
          assert relative_difference(reference.mu, ours.mu) < 1e-4, (name, k)
          assert relative_difference(reference.nu, ours.nu) < 1e-4, (name, k)
  for k in range(len(members)):
    mine = state_lib.to_host(ensemble.member_of(state, trainer.layout, k))
    theirs = state_lib.to_host(own_states[k])
    assert int(mine.pool_A.count) == int(theirs.pool_A.count) == 4
    # A pool slot filled from another image would differ by O(1).
    np.testing.assert_allclose(mine.pool_B.images, theirs.pool_B.images, atol=1e-3)
  if not bitwise:  # The switch: member 1's backward cycle is reported but weighs nothing.
    generators = state_lib.to_host(ensemble.member_of(metrics, trainer.layout, 1))
    np.testing.assert_allclose(generators['loss/generators'],
                               generators['loss/gan_G'] + generators['loss/gan_F'] +
                               generators['loss/cycle_A'],
                               rtol=1e-6)


def restored_states(root, names):
  states = {}
  for name in names:
    manager = checkpointing.create_manager(root / name, keep=3)
    states[name] = (manager.latest_step(), manager.restore(manager.latest_step())['state'])
    manager.close()
  return states


def test_the_step_compiled_ahead_of_time_is_the_same_step():
  """As the benchmark uses it: `lower(...).compile()` of an ensemble whose members run two
  programs (a switch differs) takes the slots and gives what the step gives."""
  config = ensemble_config(ensemble__seed='0,1,2', ensemble__use_gan_F='true,false,true')
  members = ensemble.members(config)
  trainer = train.build_trainer(config, 1000, members=members)
  assert len({id(fn) for fn in trainer.step.fns}) == 2
  dataset = data.create_dataset(config.data, seed=0)
  batch = member_batches(trainer, members, dataset, 0, 2)
  compiled = trainer.step.lower(trainer.init(), batch).compile()
  assert trees_equal(compiled(trainer.init(), batch), trainer.step(trainer.init(), batch))


def test_an_interrupted_ensemble_resumes_exactly(tmp_path):
  config = ensemble_config(ensemble__seed='0,1', num_train_steps=6, checkpoint_every_steps=2,
                           sample_every_steps=6)
  names = [m.name for m in ensemble.members(config)]
  finals = loop.train_and_evaluate(config, str(tmp_path / 'straight'))
  assert sorted(finals) == names and all(f['step'] == 6 for f in finals.values())
  interrupted = tmp_path / 'interrupted'
  loop.train_and_evaluate(updated(config, num_train_steps=4), str(interrupted))
  # As a kill between the members' saves leaves it: one member's newest checkpoint is missing.
  shutil.rmtree(interrupted / names[1] / 'checkpoints' / '4')
  loop.train_and_evaluate(config, str(interrupted))
  straight, resumed = restored_states(tmp_path / 'straight', names), restored_states(
      interrupted, names)
  for name in names:
    assert straight[name][0] == resumed[name][0] == 6
    # Bitwise: the same program on the same shapes and data, resumed from the common step 2.
    for a, b in zip(jax.tree.leaves(straight[name][1]), jax.tree.leaves(resumed[name][1])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    saved = json.loads((interrupted / name / workdir_lib.CONFIG_FILE).read_text())
    assert saved['seed'] == int(name.split('=')[1]) and saved['ensemble']['seed'] == ''
    # Every tool reads a member's folder as a run of its own.
    assert checkpointing.restore_train_state(interrupted / name)[1] == 6


def test_warm_started_members_equal_their_own_warm_started_runs(finished_tiny_run, tmp_path):
  """One read of config.init_from serves every member: member seed=1 ends bitwise as the single
  run with seed 1 and the same warm start (one CPU device: the same program)."""
  source, _ = finished_tiny_run
  config = ensemble_config(ensemble__seed='0,1', num_train_steps=2, init_from=str(source),
                           init_parts='G,F')
  loop.train_and_evaluate(config, str(tmp_path / 'ensemble'))
  single = updated(load_config('tiny'), seed=1, num_train_steps=2, init_from=str(source),
                   init_parts='G,F')
  loop.train_and_evaluate(single, str(tmp_path / 'single'))
  (step_a, member), = restored_states(tmp_path / 'ensemble', ['seed=1']).values()
  (step_b, run), = restored_states(tmp_path, ['single']).values()
  assert step_a == step_b == 2
  for a, b in zip(jax.tree.leaves(member), jax.tree.leaves(run)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  source_G = checkpointing.restore_train_state(source)[0].params['G']
  assert not trees_equal(member['params']['G'], jax.device_get(source_G))  # It trained on.
  # Killed between the members' first saves: the rerun warm-starts every member afresh.
  shutil.rmtree(workdir_lib.checkpoint_dir(tmp_path / 'ensemble' / 'seed=1'))
  loop.train_and_evaluate(config, str(tmp_path / 'ensemble'))
  (step_a, member), = restored_states(tmp_path / 'ensemble', ['seed=1']).values()
  assert step_a == 2
  for a, b in zip(jax.tree.leaves(member), jax.tree.leaves(run)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _listing(folder):
  return sorted(str(path.relative_to(folder)) for path in folder.rglob('*'))


def test_ensembles_and_single_runs_keep_out_of_each_others_folders(finished_tiny_run, tmp_path):
  run = tmp_path / 'run'
  shutil.copytree(finished_tiny_run[0], run)
  before = _listing(run)
  with pytest.raises(errors.PathExistsError, match='holds a single run'):
    loop.train_and_evaluate(ensemble_config(ensemble__seed='0,1'), str(run))
  assert _listing(run) == before
  root = tmp_path / 'sweep'
  shutil.copytree(finished_tiny_run[0], root / 'a')
  before = _listing(root)
  with pytest.raises(errors.PathExistsError, match=r'runs of an ensemble or a sweep .*\(a\)'):
    loop.train_and_evaluate(ensemble_config(), str(root))
  assert _listing(root) == before
  # Readers of a run given the root instead name the runs below it.
  named_below = re.escape(f'give one of them, e.g. {root / "a"}.')
  with pytest.raises(errors.PathNotFoundError, match=named_below):
    checkpointing.saved_config(root)
  with pytest.raises(errors.PathNotFoundError, match=named_below):
    plots.load_metrics(root)


def test_a_diverging_member_stops_alone(tmp_path):
  config = ensemble_config(ensemble__learning_rate='2e-4,1e30',
                           ensemble__names='stable:wild',
                           log_every_steps=1)
  finals = loop.train_and_evaluate(config, str(tmp_path))
  assert list(finals) == ['stable']
  assert (tmp_path / 'stable' / workdir_lib.FINAL_FILE).exists()
  assert not (tmp_path / 'wild' / workdir_lib.FINAL_FILE).exists()
  failure = json.loads((tmp_path / 'wild' / workdir_lib.FAILURE_FILE).read_text())
  assert 'Non-finite' in failure['error'] and failure['step'] >= 1
  with pytest.raises(errors.DivergedError, match='Non-finite'):
    loop.train_and_evaluate(updated(config, ensemble__fail_fast=True), str(tmp_path / 'fast'))


def test_a_member_is_sliced_out_of_host_and_device_trees_alike():
  stacked = {'a': np.arange(24, dtype=np.float32).reshape(4, 6), 'b': {'c': np.arange(4)}}
  on_host = ensemble.member_slice(stacked, 2)
  assert isinstance(on_host['a'], np.ndarray)
  on_device = ensemble.member_slice(jax.device_put(stacked), 2)
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(on_device))
  for sliced in (on_host, on_device):
    np.testing.assert_array_equal(sliced['a'], stacked['a'][2])
    assert int(sliced['b']['c']) == 2
