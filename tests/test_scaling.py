"""Data parallelism over devices and processes, and bfloat16 compute.

The multi-device checks run in subprocesses with simulated CPU devices
(`--xla_force_host_platform_device_count`), the multi-process one as two real processes joined by
`jax.distributed` over 127.0.0.1 with CPU collectives.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import fraction_above
from conftest import relative_difference
from conftest import train_batch
from conftest import ROOT
from conftest import simulated_devices_env
from conftest import updated
from cyclegan_jax import state as state_lib
from cyclegan_jax import checkpointing
from cyclegan_jax import data
from cyclegan_jax import train
from cyclegan_jax import loop

CHECKS = pathlib.Path(__file__).resolve().parent / 'multi_device_checks.py'


def run_check(name: str, devices: int, *args) -> dict:
  result = subprocess.run([sys.executable, str(CHECKS), name, *map(str, args)],
                          cwd=ROOT,
                          env=simulated_devices_env(devices),
                          capture_output=True,
                          text=True,
                          timeout=900,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  line = [line for line in result.stdout.splitlines() if line.startswith('RESULT ')][-1]
  return json.loads(line[len('RESULT '):])


def test_one_step_on_8_devices_equals_the_global_batch_on_1():
  result = run_check('equivalence', 8)
  assert result['devices'] == 8
  first = result['first_step']
  assert first['state_devices'] == [1, 8]
  # The gradients (Adam's moments after one step) are those of the global batch.
  assert first['adam_mu_relative'] < 1e-4 and first['adam_nu_relative'] < 1e-4
  assert first['metrics_relative'] < 1e-5
  # Adam's first step is lr * sign(g) where |g| >> eps, so parameters whose gradient is near zero
  # may round differently; everything else matches to 1e-6.
  assert first['params_fraction_above_1e-6'] < 0.01
  # One global pool: after three steps both hold the same images in the same slots (an image
  # chosen or placed differently would differ by O(1)); they differ only as much as the
  # generators producing them, which Adam's sign-like first steps pull apart by ~1e-3.
  third = result['third_step']
  assert third['pool_counts'] == [4, 4]
  assert third['pool_max_difference'] < 1e-2
  assert third['metrics_relative'] < 1e-3


def test_8_device_run_checkpoints_and_resumes_exactly(tmp_path):
  result = run_check('resume', 8, tmp_path)
  assert result['devices'] == 8 and result['steps'] == [4, 4]
  assert result['leaves'] > 0 and result['unequal_leaves'] == 0
  # One process writes each replicated array whole: no slicing program per array and replica.
  assert result['save_lowerings'] == 0


@pytest.mark.parametrize('layout, mesh', [('8x1', [8, 1]), ('4x2', [4, 2])])
def test_ensembles_on_8_devices_equal_their_own_runs(layout, mesh, tmp_path):
  """8 members at batch 1 (one per device) and 4 at batch 2 (each over two devices; these also
  resume exactly, each member's folder alone too). A member matches its own run on one device:
  the first step's losses and gradients (Adam's moments) to float rounding; later steps as far as
  the sign-like first Adam steps let rounding grow (as for data parallelism above); the same
  images in the pools."""
  result = run_check('ensembles', 8, tmp_path, layout)
  batch_size = int(layout.split('x')[1])
  assert result['devices'] == 8
  assert result['mesh'] == mesh and result['slots'] == 1
  assert result['first_step_metrics'] < 1e-5
  assert result['adam_mu'] < 1e-4 and result['adam_nu'] < 1e-4
  assert result['later_metrics'] < 1e-3
  # 3 steps' fakes in a tiny config's pool of 4.
  assert result['pool_counts'] == [min(3 * batch_size, 4)] * 2
  assert result['pool_max_difference'] < 1e-2
  if batch_size == 2:
    assert result['steps'] == [4] and result['unequal_leaves'] == 0
    assert result['restored_alone'] == [4] * 4


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


TWO_PROCESS_OVERRIDES = ('--config.num_train_steps=2', '--config.checkpoint_every_steps=2',
                         '--config.sample_every_steps=2', '--config.log_every_steps=1')


def test_two_processes_train_like_one_on_the_same_global_batch(tiny_config, tmp_path):
  workdir = tmp_path / 'two_processes'
  port = free_port()
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  processes = [
      subprocess.Popen([
          sys.executable, '-m', 'cyclegan_jax.main', '--config=configs/tiny.py',
          f'--workdir={workdir}', *TWO_PROCESS_OVERRIDES, f'--coordinator_address=127.0.0.1:{port}',
          '--num_processes=2', f'--process_id={index}'
      ],
                       cwd=ROOT,
                       env=env,
                       stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE,
                       text=True) for index in range(2)
  ]
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=600))
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-3000:]
  assert 'JAX process 1 of 2' in outputs[1][1]
  assert 'global batch 2 over 2 devices: 1 per device, 1 per process of 2' in outputs[0][1]
  assert 'final: step=2' in outputs[0][0]
  assert (workdir / 'samples' / 'step_00000002.png').exists()  # Written by process 0.

  tiny_config.num_train_steps = 2
  tiny_config.checkpoint_every_steps = 2
  loop.train_and_evaluate(tiny_config, str(tmp_path / 'one_process'))
  # The two-process checkpoint restores into this one-device process.
  trainer = train.build_trainer(tiny_config, 1000)
  abstract = state_lib.abstract_like(jax.eval_shape(trainer.init), trainer.state_sharding)
  states = []
  for name in ('two_processes', 'one_process'):
    manager = checkpointing.create_manager(tmp_path / name, keep=3)
    assert manager.latest_step() == 2
    state, data_state = checkpointing.restore_with_data_state(manager, abstract)
    manager.close()
    states.append(state_lib.to_host(state))
    assert data_state['next_example'] == 4
  two, one = states
  # Same gradients (Adam's moments), and parameters equal to 1e-6 (two Adam steps of lr 2e-4
  # move a weight by up to 4e-4) except where a near-zero gradient's sign rounds differently:
  # e.g. the biases before instance norm, whose gradient is exactly zero but for rounding.
  moments = lambda state: [state.opt_state_generators[0], state.opt_state_discriminators[0]]
  assert relative_difference(moments(one), moments(two)) < 1e-4
  assert fraction_above(one.params, two.params, 1e-6) < 0.03
  np.testing.assert_allclose(one.pool_A.images, two.pool_A.images, atol=1e-4)
  assert int(one.pool_A.count) == int(two.pool_A.count) == 4


def test_bfloat16_step_stays_close_to_float32(tiny_config):
  dataset = data.create_dataset(tiny_config.data, seed=0)
  batch = train_batch(dataset, 0, tiny_config.batch_size)
  results = {}
  for dtype in ('float32', 'bfloat16'):
    trainer = train.build_trainer(updated(tiny_config, compute_dtype=dtype), 1000)
    state = trainer.init()
    initial = state_lib.to_host(state.params)
    state, metrics = trainer.step(state, jax.device_put(batch, trainer.batch_sharding))
    for _ in range(3):
      state, later = trainer.step(state, jax.device_put(batch, trainer.batch_sharding))
    results[dtype] = (initial, state_lib.to_host(state.params), state_lib.to_host(metrics),
                      state_lib.to_host(later))
  initial, params_32, metrics_32, _ = results['float32']
  initial_16, params_16, metrics_16, later_16 = results['bfloat16']
  # Parameters and optimiser stay float32 in both; only activations are bfloat16.
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params_16))
  # Both inits draw the same float32 parameters; the compute dtype changes only the forward pass
  # that init traces, which XLA may fuse with the draws differently: equal to float32 rounding.
  for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(initial_16)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
  assert all(np.isfinite(value) for value in later_16.values())
  for key in ('loss/gan_G', 'loss/gan_F', 'loss/cycle_A', 'loss/cycle_B', 'loss/D_X',
              'loss/D_Y'):
    assert metrics_16[key] == pytest.approx(metrics_32[key], rel=0.02), key
  # Four Adam steps move weights by up to 8e-4; bfloat16 rounding flips some near-zero gradient
  # signs, but the typical weight lands within a tenth of that of float32.
  moved = np.concatenate([np.abs(b - a).ravel() for a, b in
                          zip(jax.tree.leaves(initial), jax.tree.leaves(params_32))])
  apart = np.concatenate([np.abs(b - a).ravel() for a, b in
                          zip(jax.tree.leaves(params_32), jax.tree.leaves(params_16))])
  assert np.median(apart) < 0.1 * np.median(moved)
