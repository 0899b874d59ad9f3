"""Checks that need several (simulated) devices, run by tests/test_scaling.py in a subprocess.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multi_device_checks.py \
        equivalence|resume WORKDIR

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
from cyclegan_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position


def equivalence() -> dict:
  """Steps of one global batch on 1 device and on all devices, pools off and on."""
  config = load_config('tiny')
  config.batch_size = jax.device_count()
  dataset = data.create_dataset(config.data, seed=config.seed)
  results = {'devices': jax.device_count()}
  for pool_size, steps in ((0, 1), (4, 3)):  # With a pool, later steps draw from it.
    config.pool_size = pool_size
    outcomes = []
    for devices in (jax.devices()[:1], jax.devices()):
      mesh = jax.sharding.Mesh(np.array(devices), ('data',),
                               axis_types=(jax.sharding.AxisType.Auto,))
      trainer = train.build_trainer(config, 1000, mesh=mesh)
      state = trainer.init()
      for step in range(steps):
        batch = jax.device_put(train_batch(dataset, step, config.batch_size),
                               trainer.batch_sharding)
        state, metrics = trainer.step(state, batch)
      outcomes.append((state, metrics))
    (one, one_metrics), (many, many_metrics) = outcomes
    adam_one = (one.opt_state_generators[0], one.opt_state_discriminators[0])
    adam_many = (many.opt_state_generators[0], many.opt_state_discriminators[0])
    results[f'pool{pool_size}'] = {
        'steps':
            steps,
        'state_devices': [len(one.step.devices()),
                          len(many.step.devices())],
        # Adam's first moment is 0.1 x the gradient after one step: the gradients themselves.
        'adam_mu_relative':
            relative_difference([m.mu for m in adam_one], [m.mu for m in adam_many]),
        'adam_nu_relative':
            relative_difference([m.nu for m in adam_one], [m.nu for m in adam_many]),
        'params_fraction_above_1e-6':
            fraction_above(one.params, many.params, 1e-6),
        'metrics_relative':
            relative_difference(one_metrics, many_metrics),
        'pool_max_difference':
            max(
                float(np.max(np.abs(a - b), initial=0.0))
                for a, b in zip(state_lib.to_host([one.pool_A.images, one.pool_B.images]),
                                state_lib.to_host([many.pool_A.images, many.pool_B.images]))),
        'pool_counts': [int(one.pool_A.count), int(many.pool_A.count)],
    }
  return results


def resume(workdir: pathlib.Path) -> dict:
  """4 steps straight, and 2 + 2 with a restart, on all devices: the final states' differences."""
  config = load_config('tiny')
  config.batch_size = jax.device_count()
  config.num_train_steps = 4
  config.checkpoint_every_steps = 2
  train.train_and_evaluate(config, str(workdir / 'straight'))
  train.train_and_evaluate(updated(config, num_train_steps=2), str(workdir / 'interrupted'))
  train.train_and_evaluate(config, str(workdir / 'interrupted'))
  states = []
  for name in ('straight', 'interrupted'):
    manager = checkpointing.create_manager(workdir / name, keep=3)
    states.append((manager.latest_step(), manager.restore(manager.latest_step())['state']))
    manager.close()
  (step_a, state_a), (step_b, state_b) = states
  leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
  return {
      'devices': jax.device_count(),
      'steps': [step_a, step_b],
      'leaves': len(leaves_a),
      'unequal_leaves': sum(not np.array_equal(a, b) for a, b in zip(leaves_a, leaves_b)),
  }


if __name__ == '__main__':
  check = sys.argv[1]
  result = equivalence() if check == 'equivalence' else resume(pathlib.Path(sys.argv[2]))
  print('RESULT ' + json.dumps(result), flush=True)
