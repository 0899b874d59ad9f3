"""The run folder (workdir): its file names, atomic writes, metric spellings, and its lock.

Standard library only, so that every module (training, evaluation, plots, sweeps) can read it.

    <workdir>/
      config.json          CONFIG_FILE: the resolved config of the run
      imported.json        IMPORTED_FILE: written by convert, {network: source .pth}
      checkpoints/<step>/  CHECKPOINTS_DIR: Orbax checkpoints of the train state
      damaged_checkpoints/ DAMAGED_DIR: checkpoints found damaged at a resume (kept)
      samples/step_N.png   SAMPLES_DIR: sample grids
      eval/step_N.json     EVAL_DIR: evaluation metrics
      eval_raw/step_N.json RAW_EVAL_DIR: `evaluate --weights=raw` of a run that keeps averages
      tensorboard/         TENSORBOARD_DIR: event files
      metrics.jsonl        METRICS_FILE: every logged scalar, one JSON line per log step
      final.json           FINAL_FILE: the final summary, once the run has finished
      failure.json         FAILURE_FILE: why an ensemble member stopped early (the others went on)
      plots/               PLOTS_DIR: losses.png, metrics.png
      run.lock             LOCK_FILE: who holds the workdir while a run trains

Scalar names: the train step's metrics are `loss/<term>`, `score/<D>/<real|fake>` and `lr`;
evaluation metrics are logged as `eval/<key>` (`eval_scalar`), those of a run's trained weights
where it evaluates with their moving averages as `eval_raw/<key>`. Flat files whose keys cannot
hold a slash (final.json, a sweep's results.csv) spell them with `_` (`flat_name`).

The lock: a training run holds `<workdir>/run.lock` from before it writes anything until it ends.
The file records who holds it (host, process id, start time, command). It is an advisory
`flock` lock, which the kernel releases when the process ends in any way, kill -9 included: a
lock left by a dead run never blocks the rerun that resumes it. On a file system without `flock`
support the record alone decides: a record of a process that no longer runs on this host is
taken over; a record from another host is reported with how to clear it.
"""

import datetime
import errno
import fcntl
import json
import os
from pathlib import Path
import socket
import sys

from cyclegan_jax import errors

CONFIG_FILE = 'config.json'
IMPORTED_FILE = 'imported.json'
CHECKPOINTS_DIR = 'checkpoints'
DAMAGED_DIR = 'damaged_checkpoints'
SAMPLES_DIR = 'samples'
EVAL_DIR = 'eval'
RAW_EVAL_DIR = 'eval_raw'
TENSORBOARD_DIR = 'tensorboard'
METRICS_FILE = 'metrics.jsonl'
FINAL_FILE = 'final.json'
FAILURE_FILE = 'failure.json'  # An ensemble member stopped on a non-finite loss: why, when.
PLOTS_DIR = 'plots'
LOCK_FILE = 'run.lock'
# The files a run keeps at the top of its workdir, which no other command may replace.
RUN_FILES = (CONFIG_FILE, IMPORTED_FILE, METRICS_FILE, FINAL_FILE, FAILURE_FILE, LOCK_FILE)
EVAL_PREFIX = 'eval/'
RAW_EVAL_PREFIX = 'eval_raw/'
# flock errors that mean "this file system does not do locks", not "someone holds it".
_NO_LOCK_SUPPORT = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def checkpoint_dir(workdir: str | os.PathLike) -> Path:
  """`<workdir>/checkpoints`, absolute (as Orbax wants it)."""
  return Path(workdir).absolute() / CHECKPOINTS_DIR


def step_file(folder: Path, step: int, suffix: str) -> Path:
  return folder / f'step_{step:08d}{suffix}'


def eval_file(workdir: str | os.PathLike, step: int, raw_weights: bool = False) -> Path:
  """The evaluation at `step`; `raw_weights`: of the trained weights of a run that evaluates
  with their moving averages, kept apart from the run's own evaluations."""
  return step_file(Path(workdir) / (RAW_EVAL_DIR if raw_weights else EVAL_DIR), step, '.json')


def sample_file(workdir: str | os.PathLike, step: int) -> Path:
  return step_file(Path(workdir) / SAMPLES_DIR, step, '.png')


def eval_scalar(metric: str, raw_weights: bool = False) -> str:
  """The scalar name of an evaluation metric: 'heldout_mae_AtoB' -> 'eval/heldout_mae_AtoB'
  (`raw_weights`, as `eval_file`: 'eval_raw/heldout_mae_AtoB')."""
  return (RAW_EVAL_PREFIX if raw_weights else EVAL_PREFIX) + metric


def flat_name(scalar: str) -> str:
  """A scalar's name in final.json and results.csv: 'loss/gan_G' -> 'loss_gan_G'."""
  return scalar.replace('/', '_')


def is_run_file(path: str | os.PathLike) -> bool:
  """Whether `path` is (or would be) one of `RUN_FILES` of a run's (or converted) workdir."""
  path = Path(path)
  return path.name in RUN_FILES and (path.parent / CONFIG_FILE).is_file()


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
  """Writes `path` whole or not at all: a reader never sees half a file (parents are made)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  tmp.write_bytes(data.encode('utf-8') if isinstance(data, str) else data)
  tmp.replace(path)
  return path


def write_json(path: str | os.PathLike, values: dict) -> Path:
  return write_atomic(path, json.dumps(values, indent=1) + '\n')


def read_json(path: str | os.PathLike) -> dict | None:
  """The JSON object in `path`, or None if it is missing, unreadable or not an object."""
  try:
    values = json.loads(Path(path).read_text(encoding='utf-8'))
  except (OSError, ValueError):
    return None
  return values if isinstance(values, dict) else None


def check_folder(folder: str | os.PathLike, flag: str) -> None:
  """Refuses a folder to write into that is a file, or lies below one (`flag` names the option
  it came from, e.g. '--workdir'): a PathExistsError instead of an OS error halfway through."""
  folder = Path(folder)
  existing = next((path for path in (folder, *folder.parents) if path.exists()), None)
  if existing is not None and not existing.is_dir():
    raise errors.PathExistsError(
        f'{flag}={folder}: {existing} is a file, not a folder; choose another {flag}')


def runs_in_subfolders(folder: str | os.PathLike) -> list[str]:
  """The names of `folder`'s subfolders that hold a run (its config.json), sorted."""
  try:
    children = sorted(Path(folder).iterdir())
  except OSError:
    return []
  return [child.name for child in children if (child / CONFIG_FILE).is_file()]


def _named(names: list[str]) -> str:
  return ', '.join(names[:3]) + (', ...' if len(names) > 3 else '')


def runs_below_hint(folder: str | os.PathLike) -> str:
  """For a message about a folder that is not a run: which of its subfolders are (an ensemble's
  or a sweep's root holds its runs there), or '' if none."""
  below = runs_in_subfolders(folder)
  if not below:
    return ''
  return (f' Its subfolders hold runs ({_named(below)}): give one of them, e.g. '
          f'{Path(folder) / below[0]}.')


def check_run_kind(workdir: str | os.PathLike, ensemble: bool) -> None:
  """Refuses to train an ensemble in a single run's folder (its members would train in
  subfolders among that run's files), or a single run in a folder whose subfolders hold other
  runs (an ensemble's or a sweep's): a PathExistsError that says which folder to use instead."""
  workdir = Path(workdir)
  holds_run = (workdir / CONFIG_FILE).is_file() or (workdir / CHECKPOINTS_DIR).is_dir()
  if ensemble and holds_run:
    raise errors.PathExistsError(
        f'{workdir} holds a single run ({CONFIG_FILE}, {CHECKPOINTS_DIR}/), and an ensemble '
        'trains its members in subfolders of its --workdir: give the ensemble a folder of its own '
        f'(e.g. --workdir={workdir}_ensemble)')
  if not ensemble and not holds_run:
    below = runs_in_subfolders(workdir)
    if below:
      raise errors.PathExistsError(
          f'{workdir} holds the runs of an ensemble or a sweep in its subfolders '
          f'({_named(below)}), and '
          'this config trains a single run: give it a folder of its own, or set the '
          'config.ensemble fields of that ensemble to resume it')


def _holder_record() -> dict:
  return {
      'host': socket.gethostname(),
      'pid': os.getpid(),
      'since': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'command': ' '.join(sys.argv),
  }


def _read_record(path: Path) -> dict:
  try:
    record = json.loads(path.read_text(encoding='utf-8'))
    return record if isinstance(record, dict) else {}
  except (OSError, ValueError):
    return {}


def _process_alive(pid) -> bool:
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, owned by another user.
    return True
  return True


def _busy_error(workdir: Path, record: dict, certain: bool) -> errors.WorkdirBusyError:
  lock = workdir / LOCK_FILE
  command = f' ({record["command"]})' if record.get('command') else ''
  who = (f'process {record.get("pid", "?")} on host {record.get("host", "?")} since '
         f'{record.get("since", "?")}{command}')
  if certain:
    advice = ('Wait for it to end or stop it (it checkpoints on Ctrl-C or SIGTERM), or use another '
              '--workdir. The lock is released when that process ends, even if it is killed.')
  else:
    advice = (f'Wait for it to end, or use another --workdir. If that run is dead (e.g. its host '
              f'went down), delete {lock} and rerun.')
  return errors.WorkdirBusyError(f'{workdir} is in use by another run: {who}. {advice}')


class WorkdirLock:
  """The exclusive right of one run to write into `workdir`; a context manager.

  `acquire()` raises WorkdirBusyError, touching nothing in the workdir, if another live run
  holds it.
  """

  def __init__(self, workdir: str | os.PathLike):
    self.workdir = Path(workdir)
    self.path = self.workdir / LOCK_FILE
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> 'WorkdirLock':
    if self._fd is not None:
      return self
    self.workdir.mkdir(parents=True, exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        os.close(fd)
        raise _busy_error(self.workdir, _read_record(self.path), certain=True) from None
      except OSError as error:
        os.close(fd)
        if error.errno not in _NO_LOCK_SUPPORT:
          raise
        fd = self._acquire_without_flock()
        break
      # A run that releases the lock deletes the file: if it did so between our open and our
      # flock, we hold a lock on a file nobody else will see; start again with the new file.
      try:
        current = os.stat(self.path)
      except FileNotFoundError:
        current = None
      if current is not None and os.path.samestat(os.fstat(fd), current):
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(_holder_record()) + '\n').encode())
    os.fsync(fd)
    self._fd = fd
    return self

  def _acquire_without_flock(self) -> int:
    """The record decides: a record of a process that no longer runs on this host is stale."""
    record = _read_record(self.path)
    if record:
      same_host = record.get('host') == socket.gethostname()
      if not same_host or _process_alive(record.get('pid')):
        raise _busy_error(self.workdir, record, certain=same_host)
    return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.unlink(self.path)  # While still holding the lock (see acquire).
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc_info) -> None:
    self.release()
