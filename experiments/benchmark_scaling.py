"""Data-parallel scaling on simulated CPU devices: steps/s and examples/s, fixed per-device batch.

    python -m experiments.benchmark_scaling [--config=configs/tiny.py] [--devices=1,2,4,8]

Runs `python -m cyclegan_jax.benchmark` once per device count N in a fresh process with
`XLA_FLAGS=--xla_force_host_platform_device_count=N`, global batch N x `--per_device_batch`, and
prints a markdown table. The simulated devices share this machine's cores, so the table shows that
the sharded step runs and how its cost grows with the global batch; it is not a speed-up
measurement (that needs real accelerators).
"""

import os
import subprocess
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string('config', 'configs/tiny.py', 'Training config file.')
flags.DEFINE_list('devices', ['1', '2', '4', '8'], 'Simulated device counts.')
flags.DEFINE_integer('per_device_batch', 1, 'Examples per device per step.')
flags.DEFINE_integer('steps', 10, 'Timed steps per measurement.')
flags.DEFINE_list('overrides', [], 'Extra --config.<field>=<value> arguments.')


def measure(devices: int) -> dict[str, str]:
  env = {
      **os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
      'JAX_PLATFORMS': 'cpu'
  }
  command = [
      sys.executable, '-m', 'cyclegan_jax.benchmark', f'--config={FLAGS.config}',
      f'--config.batch_size={devices * FLAGS.per_device_batch}', f'--steps={FLAGS.steps}',
      *FLAGS.overrides
  ]
  result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
  line = next(line for line in result.stdout.splitlines() if line.startswith('benchmark: '))
  return dict(pair.split('=', 1) for pair in line[len('benchmark: '):].split())


def main(argv):
  del argv
  print(f'{FLAGS.config} {" ".join(FLAGS.overrides)}, {FLAGS.per_device_batch} example(s) per '
        f'device, {os.cpu_count()} CPU cores')
  print('| devices | global batch | step time (s) | steps/s | examples/s | images/s |')
  print('| --- | --- | --- | --- | --- | --- |')
  for devices in map(int, FLAGS.devices):
    figures = measure(devices)
    step_time = float(figures['step_time_median_s'])
    examples = float(figures['examples_per_s'])
    print(f'| {devices} | {figures["batch_size"]} | {step_time:.3f} | {1 / step_time:.2f} | '
          f'{examples:.1f} | {2 * examples:.1f} |', flush=True)


if __name__ == '__main__':
  app.run(main)
