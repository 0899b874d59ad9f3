"""What every command-line tool shares: flag parsing, and user errors as one line.

    if __name__ == '__main__':
      define_flags()
      cli.run(main)

A flag that does not parse, a misspelt `--config.<field>`, an `app.UsageError` and any
`errors.UserError` raised by the library end the program with one line on stderr that names the
problem (and the fix), and exit status 2. Every other exception is a bug and keeps its traceback.
"""

import hashlib
import os
from pathlib import Path
import platform
import re
import sys
from typing import Callable, Mapping, NoReturn, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from cyclegan_jax import errors
from cyclegan_jax import state

USER_ERROR_EXIT_CODE = 2


def fail(message: str) -> NoReturn:
  """Ends the program with `Error: <message>` (one line) and exit status 2."""
  one_line = ' '.join(str(message).split())
  sys.stderr.write(f'Error: {one_line}\n')
  sys.stderr.flush()
  sys.exit(USER_ERROR_EXIT_CODE)


def _config_file_problem(error: OSError, flag: str = 'config file') -> str:
  """One line from ml_collections' multi-line error for a config file it could not read."""
  reason = re.search(r'\[Errno \d+\] (.+)', str(error))
  return (f'{flag}: {reason.group(1) if reason else " ".join(str(error).split())} (give the path '
          'of a Python file with get_config(), e.g. configs/default.py)')


def _config_files_not_loaded() -> list[str]:
  """What is wrong with each `--config` file named on the command line that could not be read.
  ml_collections loads a config file on first use (at parsing only when there are overrides) and
  keeps one it cannot read as an object that raises on access: checked here, before the program
  starts."""
  problems = []
  for name in flags.FLAGS:
    try:
      filename = config_flags.get_config_filename(flags.FLAGS[name])
    except (TypeError, AttributeError, flags.Error):  # Not a config file flag, or not given.
      continue
    try:
      hasattr(flags.FLAGS[name].value, 'keys')  # Raises the loading error, if any.
    except OSError as error:
      problems.append(_config_file_problem(error, f'--{name}={filename}'))
  return problems


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's parsing, with every parsing error (config overrides included) as one line."""
  try:
    remaining = flags.FLAGS(argv)
    problems = _config_files_not_loaded()
    if not problems:
      return remaining
    message = '; '.join(problems)
  except flags.Error as error:
    message = str(error)
  except OSError as error:  # ml_collections: a config file that cannot be read, with overrides.
    message = _config_file_problem(error)  # The flag is not marked parsed: the error names it.
  except (AttributeError, KeyError) as error:  # ml_collections: a field that does not exist.
    detail = error.args[0] if error.args else error
    message = 'no such config field ' + str(
        detail.args[0] if isinstance(detail, Exception) and detail.args else detail)
  except (TypeError, ValueError) as error:  # ml_collections: a value of the wrong type.
    message = str(error)
  one_line = ' '.join(message.split())
  sys.stderr.write(f'FATAL Flags parsing error: {one_line}. Pass --helpfull to see the flags; '
                   'config fields are defined in cyclegan_jax/config_lib.py.\n')
  sys.exit(USER_ERROR_EXIT_CODE)


def define_weights_flag() -> None:
  """--weights, of the tools that translate with a run's generators."""
  flags.DEFINE_enum(
      'weights', None, list(state.WEIGHTS),
      'Generator weights of a run trained with config.ema_decay > 0: ema (their moving average) '
      'or raw (the trained weights). Default: the average if the run keeps one.')


def no_extra_arguments(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')


# Compiled programs are kept on disk between processes (jax's persistent compilation cache), so a
# resumed run, the next run of a sweep and translate/evaluate/export of a run load their programs
# instead of compiling them again. The environment variable names the folder, or '' / 'off' for
# none; jax's own JAX_COMPILATION_CACHE_DIR, if set, wins.
COMPILATION_CACHE_ENV = 'CYCLEGAN_JAX_COMPILATION_CACHE'
COMPILATION_CACHE_MAX_BYTES = 4 * 2**30  # The least recently used programs are evicted beyond.


def _machine_kind() -> str:
  """A folder name per kind of machine: XLA's CPU code is compiled for the host's instruction set
  (AVX2, AVX-512, ...), which jax's cache key leaves out; a cache shared by several machines
  (a network home) keeps each kind's programs apart."""
  description = platform.machine() + platform.processor()
  try:
    for line in Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith(('model name', 'flags', 'Features', 'CPU part')):
        description += line
        if line.startswith(('flags', 'Features')):
          break
  except OSError:
    pass
  digest = hashlib.sha256(description.encode()).hexdigest()[:12]
  return f'{platform.machine() or "machine"}-{digest}'


def compilation_cache_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
  """The folder for compiled programs (see COMPILATION_CACHE_ENV), or None."""
  if environ.get('JAX_COMPILATION_CACHE_DIR'):
    return None  # jax reads it itself.
  chosen = environ.get(COMPILATION_CACHE_ENV)
  if chosen is not None:
    if chosen.strip().lower() in ('', 'off', '0', 'false', 'no'):
      return None
    return Path(chosen).expanduser() / _machine_kind()
  root = Path(environ.get('XDG_CACHE_HOME') or Path.home() / '.cache')
  return root / 'cyclegan_jax' / 'xla' / _machine_kind()


def use_compilation_cache(environ: Mapping[str, str] = os.environ) -> None:
  """Turns on jax's persistent compilation cache in `compilation_cache_dir`; before the process's
  first compilation. A folder that cannot be created only costs the compilations: a warning."""
  folder = compilation_cache_dir(environ)
  if folder is None:
    return
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    logging.warning('No compilation cache (%s=off to silence): cannot create %s: %s',
                    COMPILATION_CACHE_ENV, folder, error)
    return
  jax.config.update('jax_compilation_cache_dir', str(folder))
  jax.config.update('jax_compilation_cache_max_size', COMPILATION_CACHE_MAX_BYTES)


def run(main: Callable[[list[str]], int | None], compilation_cache: bool = False) -> None:
  """`app.run(main)` with the error handling of the module docstring; with `compilation_cache`,
  compiled programs are kept between processes (`use_compilation_cache`)."""

  def guarded(argv):
    try:
      if compilation_cache:
        use_compilation_cache()
      return main(argv)
    except (errors.UserError, app.UsageError, PermissionError) as error:
      fail(str(error))

  app.run(guarded, flags_parser=parse_flags)
