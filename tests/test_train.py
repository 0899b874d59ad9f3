"""The learning-rate schedule, the train step's update order, learning, and exact resume."""

import functools
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from conftest import make_jpeg_dataset
from conftest import train_batch
from conftest import updated
from cyclegan_jax import state as state_lib
from cyclegan_jax import checkpointing
from cyclegan_jax import config_lib
from cyclegan_jax import data
from cyclegan_jax import losses
from cyclegan_jax import train
from cyclegan_jax import loop


def schedule_for(tiny_config, **fields):
  tiny_config.update(fields)
  return state_lib.learning_rate_schedule(tiny_config, epoch_steps=10)


def test_linear_schedule_matches_the_official_rule(tiny_config):
  schedule = schedule_for(tiny_config, learning_rate=1.0, num_epochs=2, num_epochs_decay=3)
  # Official, 1-based epoch e: 1 − max(0, e − n_epochs) / (n_epochs_decay + 1).
  expected = {0: 1.0, 9: 1.0, 10: 1.0, 19: 1.0, 20: 0.75, 29: 0.75, 30: 0.5, 40: 0.25, 49: 0.25}
  for step, lr in expected.items():
    assert float(schedule(step)) == pytest.approx(lr), step
  assert state_lib.total_train_steps(updated(tiny_config, num_train_steps=-1), 10) == 50


def test_linear_schedule_without_decay_is_constant(tiny_config):
  schedule = schedule_for(tiny_config, learning_rate=2e-4, num_epochs=3, num_epochs_decay=0)
  assert [float(schedule(s)) for s in (0, 15, 29)] == pytest.approx([2e-4] * 3)


def test_step_schedule(tiny_config):
  schedule = schedule_for(tiny_config, learning_rate=1.0, lr_policy='step', lr_decay_epochs=2)
  assert [float(schedule(s)) for s in (0, 19, 20, 39, 40)] == pytest.approx(
      [1.0, 1.0, 0.1, 0.1, 0.01])


def test_cosine_schedule_ends_at_zero(tiny_config):
  schedule = schedule_for(tiny_config, learning_rate=1.0, lr_policy='cosine', num_epochs=1,
                          num_epochs_decay=1)
  assert float(schedule(0)) == pytest.approx(1.0)
  assert float(schedule(10)) == pytest.approx(0.5)
  assert float(schedule(20)) == pytest.approx(0.0, abs=1e-7)


def test_num_train_steps_stops_early_without_changing_the_schedule(tiny_config):
  tiny_config.num_train_steps = 7
  assert state_lib.total_train_steps(tiny_config, 10) == 7
  decay = state_lib.learning_rate_schedule(tiny_config, 10)
  tiny_config.num_train_steps = -1
  assert state_lib.total_train_steps(tiny_config, 10) == 20
  assert float(decay(15)) == float(state_lib.learning_rate_schedule(tiny_config, 10)(15))


def tiny_setup(config, batch_size=2):
  config.batch_size = batch_size
  # Long epochs: the learning rate stays constant over these short tests.
  trainer = train.build_trainer(config, 1000)
  dataset = data.create_dataset(config.data, seed=config.seed)
  return trainer, dataset


def test_train_state_holds_everything_a_resume_needs(tiny_config):
  trainer, _ = tiny_setup(tiny_config)
  state = trainer.init()
  assert set(state.params) == {'G', 'F', 'D_X', 'D_Y'}
  assert state.pool_A.images.shape == (tiny_config.pool_size, 32, 32, 3)
  assert int(state.step) == 0 and int(state.pool_B.count) == 0
  # The two Adam states cover exactly G+F and D_X+D_Y.
  mu_generators = state.opt_state_generators[0].mu
  assert set(mu_generators) == {'G', 'F'}
  assert set(state.opt_state_discriminators[0].mu) == {'D_X', 'D_Y'}


def test_step_updates_generators_with_frozen_discriminators_then_discriminators(tiny_config):
  """Recomputes one step by hand, in the official order, and compares."""
  tiny_config.pool_size = 0  # D then sees exactly this step's fakes.
  tiny_config.lambda_identity = 0.5
  # Without a norm no bias gradient is cancelled to rounding noise, which Adam's first step
  # (≈ lr · sign(g)) would turn into arbitrary ±lr differences.
  tiny_config.model.norm = 'none'
  trainer, dataset = tiny_setup(tiny_config)
  nets = trainer.networks
  # The step runs each network's independent calls as one call on their batches (G on a and b, F
  # on b, a and G(a), D_X on a and fake_a, ...); this recomputation calls them one at a time, as
  # the official code.
  assert all(
      getattr(nets, name).maps_examples_independently(3) for name in ('G', 'F', 'D_X', 'D_Y'))
  state = trainer.init()
  old = jax.device_get(state.params)
  batch = train_batch(dataset, 0, 2)
  a, b = jnp.asarray(batch['A']), jnp.asarray(batch['B'])
  optimizer = state_lib.adam(tiny_config, trainer.schedule)

  def generator_loss(p):
    G = functools.partial(nets.G.apply, {'params': p['G']})
    F = functools.partial(nets.F.apply, {'params': p['F']})
    fake_b, fake_a = G(a), F(b)
    return (losses.generator_gan_loss(nets.D_Y.apply({'params': old['D_Y']}, fake_b))
            + losses.generator_gan_loss(nets.D_X.apply({'params': old['D_X']}, fake_a))
            + 10 * losses.l1_loss(F(fake_b), a) + 10 * losses.l1_loss(G(fake_a), b)
            + 5 * losses.l1_loss(G(b), b) + 5 * losses.l1_loss(F(a), a))

  generators = {'G': old['G'], 'F': old['F']}
  grads = jax.jit(jax.grad(generator_loss))(generators)
  updates, _ = optimizer.update(grads, optimizer.init(generators), generators)
  expected_generators = optax.apply_updates(generators, updates)

  # The discriminators learn from the fakes of the generators *before* their update.
  fake_b = nets.G.apply({'params': old['G']}, a)
  fake_a = nets.F.apply({'params': old['F']}, b)

  def discriminator_loss(p):
    return (0.5 * (jnp.mean((nets.D_X.apply({'params': p['D_X']}, a) - 1) ** 2)
                   + jnp.mean(nets.D_X.apply({'params': p['D_X']}, fake_a) ** 2))
            + 0.5 * (jnp.mean((nets.D_Y.apply({'params': p['D_Y']}, b) - 1) ** 2)
                     + jnp.mean(nets.D_Y.apply({'params': p['D_Y']}, fake_b) ** 2)))

  discriminators = {'D_X': old['D_X'], 'D_Y': old['D_Y']}
  grads = jax.jit(jax.grad(discriminator_loss))(discriminators)
  updates, _ = optimizer.update(grads, optimizer.init(discriminators), discriminators)
  expected_discriminators = optax.apply_updates(discriminators, updates)

  new_state, metrics = trainer.step(state, jax.device_put(batch, trainer.batch_sharding))
  new = jax.device_get(new_state.params)
  expected = {**expected_generators, **expected_discriminators}
  for path, value in jax.tree_util.tree_leaves_with_path(expected):
    actual = functools.reduce(lambda t, k: t[k.key], path, new)
    np.testing.assert_allclose(actual, value, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  assert int(new_state.step) == 1
  assert float(metrics['lr']) == pytest.approx(tiny_config.learning_rate)
  expected_keys = {'loss/gan_G', 'loss/gan_F', 'loss/cycle_A', 'loss/cycle_B', 'loss/idt_G',
                   'loss/idt_F', 'loss/generators', 'loss/D_X', 'loss/D_Y', 'score/D_X/real',
                   'score/D_X/fake', 'score/D_Y/real', 'score/D_Y/fake', 'lr'}
  assert set(metrics) == expected_keys
  assert float(metrics['loss/generators']) == pytest.approx(
      float(generator_loss(generators)), rel=1e-5)


def test_switched_off_terms_train_nothing(tiny_config):
  """Forward cycle alone (GANs and backward cycle off): D_X and D_Y stay untrained, and G and F
  learn from F(G(x)) ≈ x alone, so domain B's batch cannot change their update."""
  tiny_config.update(dict(use_gan_G=False, use_gan_F=False, use_cycle_backward=False))
  tiny_config.model.norm = 'none'  # As above: no gradients that are rounding noise.
  trainer, dataset = tiny_setup(tiny_config)
  batch = train_batch(dataset, 0, 2)
  other_b = {'A': batch['A'], 'B': train_batch(dataset, 1, 2)['B']}
  assert not np.array_equal(other_b['B'], batch['B'])
  init_params = jax.device_get(trainer.init().params)
  results = [trainer.step(trainer.init(), jax.device_put(b, trainer.batch_sharding))
             for b in (batch, other_b)]
  (state, metrics), (other_state, _) = results
  new, other = jax.device_get(state.params), jax.device_get(other_state.params)
  # Bitwise, as guaranteed here: the discriminators' objective is empty, so their gradient and
  # Adam update are exactly zero; G and F's gradient never reads B, and both calls run one
  # compiled program on the same shapes.
  for name in ('D_X', 'D_Y'):
    jax.tree.map(np.testing.assert_array_equal, new[name], init_params[name])
  for name in ('G', 'F'):
    jax.tree.map(np.testing.assert_array_equal, new[name], other[name])
    changed = jax.tree.map(lambda x, y: bool(np.any(x != y)), new[name], init_params[name])
    assert all(jax.tree.leaves(changed)), name
  # Switched-off terms are still reported; the objective is the forward cycle alone.
  assert float(metrics['loss/gan_G']) > 0 and float(metrics['loss/cycle_B']) > 0
  assert float(metrics['loss/generators']) == pytest.approx(float(metrics['loss/cycle_A']))


def test_pools_fill_during_training(tiny_config):
  tiny_config.pool_size = 3
  trainer, dataset = tiny_setup(tiny_config)
  state = trainer.init()
  for step in range(2):
    state, _ = trainer.step(state,
                            jax.device_put(train_batch(dataset, step, 2), trainer.batch_sharding))
  assert int(state.pool_A.count) == 3 and int(state.pool_B.count) == 3
  assert float(jnp.abs(state.pool_B.images).sum()) > 0


def test_a_few_steps_lower_the_cycle_loss(tiny_config):
  tiny_config.learning_rate = 1e-3
  trainer, dataset = tiny_setup(tiny_config, batch_size=4)
  state = trainer.init()
  batch = jax.device_put(train_batch(dataset, 0, 4), trainer.batch_sharding)
  cycle = []
  for _ in range(30):
    state, metrics = trainer.step(state, batch)
    cycle.append(float(metrics['loss/cycle_A']) + float(metrics['loss/cycle_B']))
  assert np.mean(cycle[-3:]) < 0.7 * np.mean(cycle[:3]), cycle


def restore_params(workdir):
  manager = checkpointing.create_manager(workdir, keep=3)
  step = manager.latest_step()
  restored = manager.restore(step)
  manager.close()
  return step, restored['state']


@pytest.mark.parametrize('source', ['embedded', 'folder'])
def test_resume_equals_uninterrupted_run_bitwise(tiny_config, tmp_path, source):
  tiny_config.num_train_steps = 6
  tiny_config.checkpoint_every_steps = 2
  if source == 'folder':
    tiny_config.data.source = 'folder'
    tiny_config.data.root = str(make_jpeg_dataset(tmp_path / 'images'))
    tiny_config.data.load_size = 36
  loop.train_and_evaluate(tiny_config, str(tmp_path / 'straight'))

  interrupted = tmp_path / 'interrupted'
  loop.train_and_evaluate(updated(tiny_config, num_train_steps=3), str(interrupted))
  assert restore_params(interrupted)[0] == 3
  final = loop.train_and_evaluate(tiny_config, str(interrupted))
  assert final['step'] == 6

  step_a, state_a = restore_params(tmp_path / 'straight')
  step_b, state_b = restore_params(interrupted)
  assert step_a == step_b == 6
  # Bitwise: both runs execute the same compiled step on the same shapes and data, on one machine.
  leaves_a = jax.tree_util.tree_leaves_with_path(state_a)
  leaves_b = jax.tree.leaves(state_b)
  assert len(leaves_a) == len(leaves_b)
  for (path, x), y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
  # The checkpoint records the input iterator's position: 6 steps of 2 examples.
  manager = checkpointing.create_manager(interrupted, keep=3)
  data_state = manager.restore(6, args=ocp.args.Composite(data=ocp.args.JsonRestore())).data
  manager.close()
  assert data_state['next_example'] == 12 and data_state['seed'] == tiny_config.seed


def test_logged_losses_average_the_steps_since_the_previous_line(tiny_config, tmp_path):
  """The loop dispatches steps ahead of their results; each progress line still averages exactly
  its own steps (here 1-2, 3-4 and 5), replayed one by one with the same batches."""
  tiny_config.num_train_steps = 5
  tiny_config.log_every_steps = 2
  loop.train_and_evaluate(tiny_config, str(tmp_path))
  logged = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  logged = {record['step']: record for record in logged if 'loss/cycle_A' in record}
  assert sorted(logged) == [2, 4, 5]

  dataset = data.create_dataset(tiny_config.data, seed=tiny_config.seed)
  epoch_steps = state_lib.steps_per_epoch(dataset.epoch_size, tiny_config.batch_size)
  trainer = train.build_trainer(tiny_config, epoch_steps)
  state, replayed = trainer.init(), []
  for step in range(5):
    batch = train_batch(dataset, step, tiny_config.batch_size)
    state, metrics = trainer.step(state, jax.device_put(batch, trainer.batch_sharding))
    replayed.append(jax.device_get(metrics))
  for last, steps in ((2, [0, 1]), (4, [2, 3]), (5, [4])):
    for name in ('loss/cycle_A', 'loss/D_Y', 'lr'):
      expected = np.mean([np.float64(replayed[k][name]) for k in steps])
      np.testing.assert_allclose(logged[last][name], expected, rtol=1e-6, err_msg=name)


def test_resume_refuses_a_different_architecture(tiny_config, tmp_path):
  tiny_config.num_train_steps = 1
  loop.train_and_evaluate(tiny_config, str(tmp_path))
  with pytest.raises(ValueError, match=r'different architecture.*model\.ngf'):
    loop.train_and_evaluate(updated(tiny_config, model__ngf=16), str(tmp_path))
  assert restore_params(tmp_path)[0] == 1  # The checkpoint is untouched.


def test_non_finite_loss_stops_the_run_with_a_clear_error(tiny_config, tmp_path):
  tiny_config.learning_rate = 1e30
  tiny_config.log_every_steps = 1
  with pytest.raises(FloatingPointError, match=r'Non-finite .*loss.* at step \d+'):
    loop.train_and_evaluate(tiny_config, str(tmp_path))


@pytest.mark.parametrize('gan_mode', ['wgangp', 'hinge'])
def test_penalised_objectives_train_their_discriminators_only_when_switched_on(
    tiny_config, gan_mode):
  """WGAN-GP's gradient penalty (and R1, for any mode) enter the discriminators' objective and are
  reported; a discriminator whose GAN term is off stays untrained, penalties included."""
  tiny_config.update(dict(gan_mode=gan_mode, r1_gamma=1.0, use_gan_F=False))
  trainer, dataset = tiny_setup(tiny_config)
  init_params = jax.device_get(trainer.init().params)
  state, metrics = trainer.step(trainer.init(),
                                jax.device_put(train_batch(dataset, 0, 2), trainer.batch_sharding))
  metrics = jax.device_get(metrics)
  penalties = ['r1_D_X', 'r1_D_Y'] + (['gp_D_X', 'gp_D_Y'] if gan_mode == 'wgangp' else [])
  for name in penalties:
    assert np.isfinite(metrics[f'loss/{name}']) and metrics[f'loss/{name}'] > 0, name
  assert ('loss/gp_D_X' in metrics) == (gan_mode == 'wgangp')
  new = jax.device_get(state.params)
  jax.tree.map(np.testing.assert_array_equal, new['D_X'], init_params['D_X'])
  # Every kernel of D_Y moves (the head's bias may not: critic losses are blind to a constant).
  kernels = [(path, x, y) for (path, x), y in zip(
      jax.tree_util.tree_leaves_with_path(new['D_Y']), jax.tree.leaves(init_params['D_Y']))
             if 'kernel' in jax.tree_util.keystr(path)]
  assert kernels and all(np.any(x != y) for _, x, y in kernels)


def test_cpu_step_estimate_scales_the_measured_anchors():
  assert loop.cpu_seconds_per_step('resnet_9blocks', 64, 256, 1) == pytest.approx(7.0)
  assert loop.cpu_seconds_per_step('resnet_6blocks', 64, 128, 1) == pytest.approx(1.6)
  # Pixels x batch, over the cores relative to two; (ngf / 64)^2.
  assert loop.cpu_seconds_per_step('resnet_9blocks', 64, 128, 4, cores=8) == pytest.approx(1.75)
  assert loop.cpu_seconds_per_step('resnet_6blocks', 32, 256, 1, members=2) == pytest.approx(3.2)
  assert loop.cpu_seconds_per_step('unet_256', 64, 256, 1) is None


def test_paper_sized_run_on_cpu_alone_warns_with_the_estimate(tiny_config):
  paper = config_lib.base_config()  # 256 px, resnet_9blocks, ngf 64, batch 1.
  cpu, gpu = types.SimpleNamespace(platform='cpu'), types.SimpleNamespace(platform='gpu')
  message = loop.cpu_only_warning(paper, 1, [cpu], cores=2)
  assert 'roughly 7 s' in message and '1.9 hours per 1,000 steps' in message
  assert 'jax[cuda12]==' in message and 'Install on accelerators' in message
  assert 'roughly 28 s' in loop.cpu_only_warning(paper, 8, [cpu], cores=4)
  assert loop.cpu_only_warning(paper, 1, [gpu, cpu], cores=2) is None
  assert loop.cpu_only_warning(tiny_config, 1, [cpu], cores=2) is None
  tiny_config.model.generator = 'resnet_6blocks'  # 32 px, ngf 8: far below a second.
  assert loop.cpu_only_warning(tiny_config, 1, [cpu], cores=2) is None
