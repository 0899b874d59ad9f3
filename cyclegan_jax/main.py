"""Trains CycleGAN: `python -m cyclegan_jax.main --config=configs/X.py --workdir=DIR`.

Override any config field on the command line, e.g. `--config.lambda_cycle=5`.
Rerunning the same command resumes from the latest checkpoint in the workdir.
"""

import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from cyclegan_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, summaries and samples.')
config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
  """absl's parsing, with config override errors (e.g. a misspelt field) as one clear line."""
  try:
    return FLAGS(argv)
  except flags.Error as error:
    message = str(error)
  except (AttributeError, KeyError) as error:  # ml_collections: a field that does not exist.
    detail = error.args[0] if error.args else error
    message = 'no such config field ' + str(
        detail.args[0] if isinstance(detail, Exception) and detail.args else detail)
  except (TypeError, ValueError) as error:
    message = str(error)
  sys.stderr.write(f'FATAL Flags parsing error: {message.strip()}\n'
                   'Pass --helpfull to see help on flags; config fields are defined in '
                   'cyclegan_jax/config_lib.py.\n')
  sys.exit(1)


def _quiet_library_info(record) -> bool:
  """Keeps Orbax's per-save INFO chatter out of the console; its warnings still show."""
  return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_handler().python_handler.addFilter(_quiet_library_info)
  logging.info('JAX process %d of %d; local devices %s; %d devices in all.',
               jax.process_index(), jax.process_count(), jax.local_devices(), jax.device_count())
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
