"""User errors end every command-line tool with one line naming the problem, and exit status 2.

(A missing or unprepared dataset: tests/test_main.py; other tools' errors: their own tests.)"""

import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from conftest import assert_one_line_user_error
import cyclegan_jax
from cyclegan_jax import cli
from cyclegan_jax import errors

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_main(workdir, *overrides, config='configs/tiny.py'):
  return subprocess.run(
      [sys.executable, '-m', 'cyclegan_jax.main', f'--config={config}', f'--workdir={workdir}',
       *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def folder_dataset(root: pathlib.Path, train_b: bool, b_images: bool) -> pathlib.Path:
  (root / 'trainA').mkdir(parents=True)
  for index in range(2):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / 'trainA' / f'{index}.jpg')
  if train_b:
    (root / 'trainB').mkdir()
    if not b_images:
      (root / 'trainB' / 'notes.txt').write_text('not an image')
  return root


@pytest.mark.parametrize('override, expected', [
    ('--config.lambda_cycle=nan', ('config.lambda_cycle = nan', 'finite number')),
    ('--config.model.ngf=0', ('config.model.ngf = 0', 'integer >= 1')),
    ('--config.data.crop_size=-8', ('config.data.crop_size = -8', 'integer >= 4')),
    ('--config.data.preprocess=zoom', ('config.data.preprocess = \'zoom\'', "'resize_and_crop'")),
    ('--config.model.ngf=abc', ('--config.model.ngf=abc', 'invalid literal')),
])
def test_invalid_config_values(tmp_path, override, expected):
  result = run_main(tmp_path / 'run', override)
  assert_one_line_user_error(result, *expected)
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('config, overrides, expected', [
    ('configs/nope.py', (), "--config=configs/nope.py: No such file or directory: 'configs/nope.py'"),
    # With an override ml_collections reads the file while parsing, and fails there.
    ('configs/nope.py', ('--config.batch_size=2',), "No such file or directory: 'configs/nope.py'"),
    ('configs', (), "--config=configs: Is a directory: 'configs'"),
])
def test_a_config_file_that_cannot_be_read(tmp_path, config, overrides, expected):
  result = run_main(tmp_path / 'run', *overrides, config=config)
  assert_one_line_user_error(result, expected, 'configs/default.py')
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('train_b, b_images, expected', [
    (False, False, 'no trainB/ folder'),
    (True, False, 'trainB holds no jpg/jpeg'),
])
def test_missing_or_empty_split(tmp_path, train_b, b_images, expected):
  root = folder_dataset(tmp_path / 'data', train_b, b_images)
  result = run_main(tmp_path / 'run', '--config.data.source=folder', f'--config.data.root={root}',
                    config='configs/horse2zebra.py')
  assert_one_line_user_error(result, expected, str(root))
  assert not (tmp_path / 'run').exists()


def test_user_errors_are_their_builtin_kind_too():
  assert issubclass(errors.InvalidValueError, ValueError)
  assert issubclass(errors.PathNotFoundError, FileNotFoundError)
  assert issubclass(errors.PathExistsError, FileExistsError)
  assert all(issubclass(kind, errors.UserError) for kind in (
      errors.InvalidValueError, errors.PathNotFoundError, errors.PathExistsError,
      errors.CheckpointError, errors.WorkdirBusyError, errors.DivergedError,
      errors.MissingPackageError))


def test_a_bug_keeps_its_traceback(tmp_path):
  script = ('from cyclegan_jax import cli\n'
            'def main(argv):\n'
            '  raise KeyError("a bug")\n'
            'cli.run(main)\n')
  result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == 1
  assert 'Traceback' in result.stderr and "KeyError: 'a bug'" in result.stderr


def test_the_compilation_cache_folder_is_chosen_by_the_environment(tmp_path):
  machine = cli.compilation_cache_dir({cli.COMPILATION_CACHE_ENV: str(tmp_path)}).name
  assert cli.compilation_cache_dir({'XDG_CACHE_HOME': str(tmp_path)}) == (
      tmp_path / 'cyclegan_jax' / 'xla' / machine)
  assert cli.compilation_cache_dir({cli.COMPILATION_CACHE_ENV: '~/c'}) == (
      pathlib.Path.home() / 'c' / machine)
  for off in ('', 'off', 'OFF', '0'):
    assert cli.compilation_cache_dir({cli.COMPILATION_CACHE_ENV: off}) is None
  # jax's own setting wins: jax reads it itself.
  assert cli.compilation_cache_dir({'JAX_COMPILATION_CACHE_DIR': str(tmp_path),
                                    cli.COMPILATION_CACHE_ENV: str(tmp_path)}) is None


def test_commands_ask_glibc_for_huge_pages_where_the_kernel_gives_them_on_request():
  command = ['/usr/bin/python3', '-u', '-m', 'cyclegan_jax.main', '--workdir=runs/x']
  facts = dict(thp_mode='madvise', libc_version='glibc 2.36')
  assert cyclegan_jax.huge_page_environment(command, {'HOME': '/h'}, **facts) == {
      'HOME': '/h', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  assert cyclegan_jax.huge_page_environment(
      command, {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, **facts) == {
          'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'}
  unchanged = [
      (command, {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, facts),  # The user's choice.
      (['python', '-m', 'pytest', 'tests'], {}, facts),
      (['python', '-m', 'pdb', '-m', 'cyclegan_jax.main'], {}, facts),
      (['python', '-c', 'import cyclegan_jax', '-m', 'cyclegan_jax.main'], {}, facts),
      (['python', 'script.py', '-m', 'cyclegan_jax.main'], {}, facts),
      (command, {}, dict(thp_mode='always', libc_version='glibc 2.36')),  # Huge pages anyway.
      (command, {}, dict(thp_mode='never', libc_version='glibc 2.36')),
      (command, {}, dict(thp_mode=None, libc_version='glibc 2.36')),
      (command, {}, dict(thp_mode='madvise', libc_version='glibc 2.34')),  # No such tunable.
      (command, {}, dict(thp_mode='madvise', libc_version='')),  # musl, or not Linux.
  ]
  for argv, environ, machine in unchanged:
    assert cyclegan_jax.huge_page_environment(argv, environ, **machine) is None, (argv, environ)


def test_a_command_reexecutes_itself_in_place_and_a_library_import_does_not(tmp_path):
  (tmp_path / 'sitecustomize.py').write_text(
      'import atexit, os, sys\n'
      'atexit.register(lambda: print(os.getpid(), os.environ.get("GLIBC_TUNABLES", "")))\n')
  environ = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  environ['PYTHONPATH'] = str(tmp_path)

  def run(*argv):
    process = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=environ,
                               stdout=subprocess.PIPE, text=True)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    return process.pid, output.splitlines()

  pid, lines = run('-m', 'cyclegan_jax.cli')
  expected = cyclegan_jax.huge_page_environment(
      [sys.executable, '-m', 'cyclegan_jax.cli'], environ,
      cyclegan_jax._transparent_huge_page_mode(), cyclegan_jax._libc_version())
  # One process ran to its end, under its first process id: re-executed, not started anew.
  assert lines == [f'{pid} {(expected or environ).get("GLIBC_TUNABLES", "")}']
  pid, lines = run('-c', 'import cyclegan_jax')
  assert lines == [f'{pid} ']
