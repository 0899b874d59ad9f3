"""Checks that need several (simulated) devices, run by tests/test_scaling.py in a subprocess.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multi_device_checks.py \
        equivalence|resume WORKDIR|ensembles WORKDIR 8x1|4x2

Each check prints one JSON line of measurements for the test to assert on.
"""

import json
import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from conftest import fraction_above  # pylint: disable=g-import-not-at-top,wrong-import-position
from conftest import load_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from conftest import relative_difference  # pylint: disable=g-import-not-at-top,wrong-import-position
from conftest import train_batch  # pylint: disable=g-import-not-at-top,wrong-import-position
from conftest import updated  # pylint: disable=g-import-not-at-top,wrong-import-position
from cyclegan_jax import state as state_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from cyclegan_jax import checkpointing  # pylint: disable=g-import-not-at-top,wrong-import-position
from cyclegan_jax import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from cyclegan_jax import ensemble  # pylint: disable=g-import-not-at-top,wrong-import-position
from cyclegan_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from cyclegan_jax import loop  # pylint: disable=g-import-not-at-top,wrong-import-position


def equivalence() -> dict:
  """Three steps of one global batch on 1 device and on all devices, with a pool of 4: the
  gradients after the first step, the pools after the third."""
  config = load_config('tiny')
  config.batch_size = jax.device_count()
  config.pool_size = 4
  dataset = data.create_dataset(config.data, seed=config.seed)
  outcomes = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = jax.sharding.Mesh(np.array(devices), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
    trainer = train.build_trainer(config, 1000, mesh=mesh)
    state = trainer.init()
    after = []
    for step in range(3):
      batch = jax.device_put(train_batch(dataset, step, config.batch_size), trainer.batch_sharding)
      state, metrics = trainer.step(state, batch)
      if step in (0, 2):
        after.append((state_lib.to_host(state), state_lib.to_host(metrics)))
    outcomes.append((after, len(state.step.devices())))
  (one_after, one_devices), (many_after, many_devices) = outcomes
  (one, one_metrics), (many, many_metrics) = one_after[0], many_after[0]
  adam_one = (one.opt_state_generators[0], one.opt_state_discriminators[0])
  adam_many = (many.opt_state_generators[0], many.opt_state_discriminators[0])
  first = {
      'state_devices': [one_devices, many_devices],
      # Adam's first moment is 0.1 x the gradient after one step: the gradients themselves.
      'adam_mu_relative': relative_difference([m.mu for m in adam_one], [m.mu for m in adam_many]),
      'adam_nu_relative': relative_difference([m.nu for m in adam_one], [m.nu for m in adam_many]),
      'params_fraction_above_1e-6': fraction_above(one.params, many.params, 1e-6),
      'metrics_relative': relative_difference(one_metrics, many_metrics),
  }
  (one, one_metrics), (many, many_metrics) = one_after[1], many_after[1]
  third = {
      'metrics_relative':
          relative_difference(one_metrics, many_metrics),
      'pool_max_difference':
          max(
              float(np.max(np.abs(a - b), initial=0.0))
              for a, b in ((one.pool_A.images, many.pool_A.images), (one.pool_B.images,
                                                                     many.pool_B.images))),
      'pool_counts': [int(one.pool_A.count), int(many.pool_A.count)],
  }
  return {'devices': jax.device_count(), 'first_step': first, 'third_step': third}


def programs_lowered_by_a_save(config, workdir: pathlib.Path) -> int:
  """The programs JAX lowers while a fresh state replicated on all devices is checkpointed (any
  would be compiled on first use; lowering is counted because a persistent compilation cache may
  skip the compile itself)."""
  trainer = train.build_trainer(config, 1000)
  state = jax.block_until_ready(trainer.init())
  lowered = []

  def count(event, duration_secs, **kwargs):
    del duration_secs, kwargs
    if event == '/jax/core/compile/jaxpr_to_mlir_module_duration':
      lowered.append(event)

  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    manager = checkpointing.create_manager(workdir, keep=1)
    checkpointing.save(manager, state, config)
    manager.wait_until_finished()
    manager.close()
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  return len(lowered)


def final_states(workdir: pathlib.Path, names: list[str]) -> list[tuple[int, object]]:
  states = []
  for name in names:
    manager = checkpointing.create_manager(workdir / name, keep=3)
    states.append((manager.latest_step(), manager.restore(manager.latest_step())['state']))
    manager.close()
  return states


def resume(workdir: pathlib.Path) -> dict:
  """4 steps straight, and 2 + 2 with a restart, on all devices: the final states' differences;
  the programs a checkpoint save lowers."""
  config = load_config('tiny')
  config.batch_size = jax.device_count()
  config.num_train_steps = 4
  config.checkpoint_every_steps = 2
  save_lowerings = programs_lowered_by_a_save(config, workdir / 'saved')
  loop.train_and_evaluate(config, str(workdir / 'straight'))
  loop.train_and_evaluate(updated(config, num_train_steps=2), str(workdir / 'interrupted'))
  loop.train_and_evaluate(config, str(workdir / 'interrupted'))
  (step_a, state_a), (step_b, state_b) = final_states(workdir, ['straight', 'interrupted'])
  leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
  return {
      'devices': jax.device_count(),
      'steps': [step_a, step_b],
      'leaves': len(leaves_a),
      'unequal_leaves': sum(not np.array_equal(a, b) for a, b in zip(leaves_a, leaves_b)),
      'save_lowerings': save_lowerings,
  }


def ensembles(workdir: pathlib.Path, layout: str) -> dict:
  """`layout` = MEMBERSxBATCH on all devices: the mesh, and the last member (its own seed and
  lambda, the farthest slot from the first) beside its own run on one device for 3 steps; at batch
  2 (each member over two devices) also 4 steps straight against 2 + 2 with a restart."""
  num_members, batch_size = map(int, layout.split('x'))
  config = updated(load_config('tiny'),
                   batch_size=batch_size,
                   ensemble__seed=','.join(map(str, range(num_members))),
                   ensemble__lambda_cycle=','.join(str(10.0 - k) for k in range(num_members)))
  members = ensemble.members(config)
  trainer = train.build_trainer(config, 1000, members=members)
  state = trainer.init()
  dataset = data.create_dataset(config.data, seed=0)
  one_device = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',),
                                 axis_types=(jax.sharding.AxisType.Auto,))
  # One member beside its own run: each own run compiles a program of its own.
  compared = num_members - 1
  own = train.build_trainer(members[compared].config, 1000, mesh=one_device)
  own_state = own.init()
  outcome = {
      'devices': jax.device_count(),
      'mesh': [trainer.state_sharding.mesh.shape[axis] for axis in ('member', 'data')],
      'slots': len(trainer.layout.slots),
      'first_step_metrics': 0.0,
      'later_metrics': 0.0,
  }
  for step in range(3):
    rows = [
        train_batch(dataset.reseeded(member.config.seed), step, batch_size) for member in members
    ]
    batch = tuple(
        loop.global_batch(slot, trainer.batch_sharding)
        for slot in ensemble.to_slots(rows, trainer.layout))
    state, metrics = trainer.step(state, batch)
    own_state, own_metrics = own.step(own_state, jax.device_put(rows[compared], own.batch_sharding))
    mine = state_lib.to_host(
        tuple(ensemble.member_of(slots, trainer.layout, compared) for slots in (state, metrics)))
    theirs = state_lib.to_host((own_state, own_metrics))
    key = 'first_step_metrics' if step == 0 else 'later_metrics'
    outcome[key] = max(outcome[key], relative_difference(theirs[1], mine[1]))
    if step == 0:
      for name, moments in (('adam_mu', lambda m: m.mu), ('adam_nu', lambda m: m.nu)):
        outcome[name] = max(
            relative_difference(moments(getattr(theirs[0], opt)[0]),
                                moments(getattr(mine[0], opt)[0]))
            for opt in ('opt_state_generators', 'opt_state_discriminators'))
  mine, theirs = mine[0], theirs[0]
  outcome['pool_counts'] = [int(mine.pool_A.count), int(theirs.pool_A.count)]
  outcome['pool_max_difference'] = float(np.max(np.abs(mine.pool_B.images - theirs.pool_B.images)))
  if batch_size == 1:  # Resume is checked on the layout that also shards each batch.
    return outcome

  run_config = updated(config,
                       num_train_steps=4,
                       checkpoint_every_steps=2,
                       sample_every_steps=4,
                       data__num_heldout=2)
  loop.train_and_evaluate(run_config, str(workdir / 'straight'))
  loop.train_and_evaluate(updated(run_config, num_train_steps=2), str(workdir / 'interrupted'))
  loop.train_and_evaluate(run_config, str(workdir / 'interrupted'))
  names = [member.name for member in members]
  straight, resumed = final_states(workdir / 'straight',
                                   names), final_states(workdir / 'interrupted', names)
  outcome['steps'] = sorted({step for step, _ in straight + resumed})
  outcome['unequal_leaves'] = sum(
      not np.array_equal(a, b)
      for (_, state_a), (_, state_b) in zip(straight, resumed)
      for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)))
  # Each member's folder restores alone, as a run of its own.
  outcome['restored_alone'] = [
      checkpointing.restore_train_state(workdir / 'interrupted' / name)[1] for name in names
  ]
  return outcome


if __name__ == '__main__':
  check = sys.argv[1]
  if check == 'equivalence':
    result = equivalence()
  elif check == 'resume':
    result = resume(pathlib.Path(sys.argv[2]))
  else:
    result = ensembles(pathlib.Path(sys.argv[2]), sys.argv[3])
  print('RESULT ' + json.dumps(result), flush=True)
