"""Trains CycleGAN: `python -m cyclegan_jax.main --config=configs/X.py --workdir=DIR`.

Override any config field on the command line, e.g. `--config.lambda_cycle=5`.
Rerunning the same command resumes from the latest checkpoint in the workdir.

Multi-host (one process per host, the same command on every host): on a TPU VM pod slice or
under SLURM the processes find each other by themselves; elsewhere pass
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (I = 0..N-1).
"""

import logging as std_logging
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from cyclegan_jax import cli
from cyclegan_jax import loop

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, summaries and samples.')
config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
flags.DEFINE_string('coordinator_address', None,
                    'Multi-process: HOST:PORT of process 0, reachable from every process.')
flags.DEFINE_integer('num_processes', None, 'Multi-process: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-process: index of this process (0-based).')
flags.DEFINE_enum('distributed', 'auto', ['auto', 'on', 'off'],
                  "Call jax.distributed.initialize(): 'auto' when the flags above are given, on a "
                  "multi-host TPU slice, or under SLURM with several tasks.")
flags.mark_flags_as_required(['config', 'workdir'])


def _multi_host_environment() -> bool:
  """A launcher that runs one process per host and that jax.distributed detects by itself."""
  tpu_hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return ',' in tpu_hosts or int(os.environ.get('SLURM_NTASKS', '1') or 1) > 1


def initialize_distributed() -> None:
  """Joins the other processes of a multi-process run (see the module docstring)."""
  explicit = {
      'coordinator_address': FLAGS.coordinator_address,
      'num_processes': FLAGS.num_processes,
      'process_id': FLAGS.process_id,
  }
  given = {name: value for name, value in explicit.items() if value is not None}
  if FLAGS.distributed == 'off':
    if given:
      raise app.UsageError(f'--distributed=off contradicts --{", --".join(given)}')
    return
  if given and len(given) < len(explicit):
    missing = sorted(set(explicit) - set(given))
    raise app.UsageError(f'multi-process runs need --{", --".join(missing)} too')
  if given or FLAGS.distributed == 'on' or _multi_host_environment():
    jax.distributed.initialize(**given)


def _quiet_library_info(record) -> bool:
  """Keeps Orbax's per-save INFO chatter out of the console; its warnings still show."""
  return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  cli.no_extra_arguments(argv)
  logging.get_absl_handler().python_handler.addFilter(_quiet_library_info)
  initialize_distributed()
  logging.info('JAX process %d of %d; local devices %s; %d devices in all.',
               jax.process_index(), jax.process_count(), jax.local_devices(), jax.device_count())
  loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main, compilation_cache=True)
