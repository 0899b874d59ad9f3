"""The workdir: one live writer per workdir, a dead writer's lock never blocks a rerun, and a file
where a folder is to be written is a clear error."""

import errno
import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from cyclegan_jax import errors
from cyclegan_jax import workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOLD_THE_LOCK = ('import sys, time\n'
                 'from cyclegan_jax import workdir\n'
                 'workdir.WorkdirLock(sys.argv[1]).acquire()\n'
                 'print("held", flush=True)\n'
                 'time.sleep(600)\n')


def lock_record(folder: pathlib.Path) -> dict:
  return json.loads((folder / workdir.LOCK_FILE).read_text())


def test_a_second_holder_is_refused_untouched_and_told_who_holds_it(tmp_path):
  with workdir.WorkdirLock(tmp_path):
    record = lock_record(tmp_path)
    assert record['pid'] == os.getpid() and record['host'] == socket.gethostname()
    assert record['since'] and 'command' in record
    with pytest.raises(errors.WorkdirBusyError,
                       match=rf'in use by another run: process {os.getpid()} on host '
                       rf'{socket.gethostname()} since'):
      workdir.WorkdirLock(tmp_path).acquire()
    assert lock_record(tmp_path) == record  # The refused one wrote nothing.
  assert not (tmp_path / workdir.LOCK_FILE).exists()  # Released on exit.
  workdir.WorkdirLock(tmp_path).acquire().release()


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', HOLD_THE_LOCK, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(errors.WorkdirBusyError, match=f'process {holder.pid} on host'):
      workdir.WorkdirLock(tmp_path).acquire()
  finally:
    holder.kill()  # SIGKILL: the holder cannot clean up.
    holder.wait()
  assert lock_record(tmp_path)['pid'] == holder.pid  # Left behind...
  with workdir.WorkdirLock(tmp_path):  # ... and not in the way.
    assert lock_record(tmp_path)['pid'] == os.getpid()


def test_without_flock_the_record_decides(tmp_path, monkeypatch):

  def no_flock(fd, operation):
    raise OSError(errno.ENOLCK, 'No locks available')

  monkeypatch.setattr(workdir.fcntl, 'flock', no_flock)
  lock_file = tmp_path / workdir.LOCK_FILE
  finished = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                            capture_output=True, text=True, check=True)
  dead_pid = int(finished.stdout)
  lock_file.write_text(json.dumps({'host': socket.gethostname(), 'pid': dead_pid, 'since': 'x'}))
  with workdir.WorkdirLock(tmp_path):  # The recorded process is gone: a stale record.
    assert lock_record(tmp_path)['pid'] == os.getpid()
    with pytest.raises(errors.WorkdirBusyError, match='The lock is released when'):
      workdir.WorkdirLock(tmp_path).acquire()  # A live process on this host: certain.
  lock_file.write_text(json.dumps({'host': 'elsewhere', 'pid': 1, 'since': 'x'}))
  with pytest.raises(errors.WorkdirBusyError,
                     match=rf'on host elsewhere .*If that run is dead.*delete {lock_file}'):
    workdir.WorkdirLock(tmp_path).acquire()


def test_a_file_where_a_folder_is_written_is_one_clear_error(tmp_path):
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  from cyclegan_jax import loop  # pylint: disable=g-import-not-at-top
  from cyclegan_jax.inference import files  # pylint: disable=g-import-not-at-top
  from cyclegan_jax.torch_io import runs  # pylint: disable=g-import-not-at-top
  from experiments import sweep  # pylint: disable=g-import-not-at-top
  a_file = tmp_path / 'notes.txt'
  a_file.write_text('kept\n')
  workdir.check_folder(tmp_path / 'new' / 'folder', '--workdir')  # Not there yet: fine.
  for target in (a_file, a_file / 'below'):
    message = f'{a_file} is a file, not a folder'
    with pytest.raises(errors.PathExistsError, match=f'--workdir=.*{message}'):
      loop.train_and_evaluate(load_config('tiny'), str(target))
    with pytest.raises(errors.PathExistsError, match=f'--output=.*{message}'):
      files.check_outputs([], target, grid=False, overwrite=True)
    with pytest.raises(errors.PathExistsError, match=f'--output=.*{message}'):
      runs.write_workdir(target, {}, load_config('tiny'), {})
    with pytest.raises(errors.PathExistsError, match=f'--root=.*{message}'):
      sweep.run_sweep('configs/tiny.py', str(ROOT / 'experiments/sweeps/lambda_cycle.py'), target)
  assert a_file.read_text() == 'kept\n'


def test_a_converted_run_does_not_land_among_other_runs(tmp_path):
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  from cyclegan_jax.torch_io import runs  # pylint: disable=g-import-not-at-top
  (tmp_path / 'root' / 'member').mkdir(parents=True)
  (tmp_path / 'root' / 'member' / workdir.CONFIG_FILE).write_text('{}\n')
  with pytest.raises(errors.PathExistsError, match='runs of an ensemble or a sweep'):
    runs.write_workdir(tmp_path / 'root', {}, load_config('tiny'), {})
  assert sorted(path.name for path in (tmp_path / 'root').iterdir()) == ['member']
