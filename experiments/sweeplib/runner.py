"""Running a sweep's runs one after another, each resumable, with its output in its own log."""

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

from cyclegan_jax import plots
from cyclegan_jax import workdir as workdir_lib
from experiments.sweeplib import spec
from experiments.sweeplib.spec import PlannedRun
from experiments.sweeplib.spec import SweepError

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_FILE = 'log.txt'

def train_command(config: str,
                  workdir: Path,
                  overrides: Mapping[str, Any],
                  python: str = sys.executable) -> list[str]:
  return [
      python, '-m', 'cyclegan_jax.main', f'--config={config}', f'--workdir={workdir}',
      *(f'--config.{field}={spec.flag_value(value)}' for field, value in overrides.items())
  ]


def evaluate_command(workdir: Path, python: str = sys.executable) -> list[str]:
  return [python, '-m', 'cyclegan_jax.evaluate', f'--workdir={workdir}']


def has_evaluate_module() -> bool:
  return importlib.util.find_spec('cyclegan_jax.evaluate') is not None


def _same_path(recorded: Any, given: str) -> bool:
  if not isinstance(recorded, str):
    return False
  if os.path.normpath(recorded) == os.path.normpath(given):
    return True
  return Path(recorded).resolve() == Path(given).resolve()


def check_root(root: Path, config: str, sweep_path: str, planned: Sequence[PlannedRun],
               force: bool) -> None:
  """Refuses a root made for another config or sweep file, or with runs of other overrides."""
  record_path = root / spec.SWEEP_FILE
  hint = 'Pass another --root, or --force to use this one anyway.'
  if not record_path.exists():
    if root.is_dir() and any(root.iterdir()) and not force:
      raise SweepError(f'{root} is not empty and has no {spec.SWEEP_FILE}: it is not a sweep root. ' +
                       hint)
    return
  recorded = workdir_lib.read_json(record_path)
  if recorded is None:
    if force:
      return
    raise SweepError(f'{record_path} is unreadable. ' + hint)
  problems = []
  if not _same_path(recorded.get('config'), config):
    problems.append(f'config {recorded.get("config")} (now {config})')
  if not _same_path(recorded.get('sweep'), sweep_path):
    problems.append(f'sweep file {recorded.get("sweep")} (now {sweep_path})')
  previous = {
      run.get('name'): run.get('overrides')
      for run in recorded.get('runs', [])
      if isinstance(run, dict)
  }
  for run in planned:
    if run.name in previous and spec.canonical(previous[run.name]) != spec.canonical(run.overrides):
      problems.append(f'run {run.name} with overrides {previous[run.name]} (now {run.overrides})')
  if problems and not force:
    raise SweepError(f'{root} was made for another sweep ({record_path}): ' +
                     '; '.join(problems[:4]) + ('; ...' if len(problems) > 4 else '') + '. ' + hint)


def write_record(root: Path, config: str, sweep_path: str, fixed: Mapping[str, Any],
                 planned: Sequence[PlannedRun]) -> None:
  runs_record = []
  for run in planned:
    command = train_command(config, run.workdir(root), run.overrides, 'python')
    runs_record.append({
        'name': run.name,
        'group': run.group,
        'overrides': run.overrides,
        'command': shlex.join(command)
    })
  record = {'config': config, 'sweep': sweep_path, 'fixed': dict(fixed), 'runs': runs_record}
  workdir_lib.write_atomic(root / spec.SWEEP_FILE, json.dumps(record, indent=1) + '\n')


class _Stop:
  """SIGINT/SIGTERM: the current run checkpoints and stops (a second one: it stops now)."""

  def __init__(self):
    self.requested = False
    self.process: subprocess.Popen | None = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if not self.requested:
      print(
          'Stopping: the current run saves a checkpoint and stops; rerun the same command to '
          'resume the sweep.',
          flush=True)
    self.requested = True
    if self.process is not None and self.process.poll() is None:
      self.process.send_signal(signum)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _run_logged(command: Sequence[str], log_path: Path, stream: bool, stop: _Stop) -> int:
  """Runs `command`, appending its stdout and stderr to `log_path`; its exit status."""
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env['PYTHONPATH'] = os.pathsep.join(
      path for path in (str(REPO_ROOT), env.get('PYTHONPATH', '')) if path)
  with open(log_path, 'a', encoding='utf-8') as log:
    log.write(f'=== {time.strftime("%Y-%m-%d %H:%M:%S")} $ {shlex.join(command)}\n')
    log.flush()
    # Its own session: a Ctrl-C reaches the sweep, which passes it on once (see _Stop).
    process = subprocess.Popen(command,
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT,
                               text=True,
                               errors='replace',
                               env=env,
                               start_new_session=True)
    stop.process = process
    try:
      for line in process.stdout:
        log.write(line)
        log.flush()
        if stream:
          sys.stdout.write(line)
          sys.stdout.flush()
      return process.wait()
    finally:
      stop.process = None
      if process.poll() is None:
        process.kill()
        process.wait()


def _last_lines(path: Path, count: int = 3) -> list[str]:
  try:
    lines = path.read_text(encoding='utf-8', errors='replace').splitlines()
  except OSError:
    return []
  return [line for line in lines if line.strip()][-count:]


def _headline(final: Mapping[str, Any]) -> str:
  keys = plots.summary_metrics(final, baselines=False)[:2]
  return ' '.join(f'{key}={spec.format_value(final[key])}' for key in keys)


@dataclasses.dataclass
class Failure:
  name: str
  what: str
  log: Path


def needs_evaluation(workdir: Path, final: Mapping[str, Any] | None) -> bool:
  """Whether the run has no eval file for its final step (yet: an unfinished run)."""
  step = (final or {}).get('step')
  if not isinstance(step, int):
    return True
  return not workdir_lib.eval_file(workdir, step).exists()


def execute(config: str, root: Path, planned: Sequence[PlannedRun], evaluate: bool,
            stream: bool) -> tuple[dict[str, str], list[Failure], bool]:
  """Runs the unfinished runs in order: ({name: status}, failures, whether it was stopped)."""
  statuses: dict[str, str] = {}
  failures: list[Failure] = []
  evaluate = evaluate and has_evaluate_module()
  with _Stop() as stop:
    for index, run in enumerate(planned, start=1):
      if stop.requested:
        break
      prefix = f'[{index}/{len(planned)}] {run.name}:'
      workdir = run.workdir(root)
      log_path = workdir / LOG_FILE
      if (workdir / workdir_lib.FINAL_FILE).exists():
        statuses[run.name] = 'done'
        print(f'{prefix} skipped, finished earlier ({workdir / workdir_lib.FINAL_FILE} exists)',
              flush=True)
      else:
        resuming = workdir_lib.checkpoint_dir(workdir).is_dir()
        workdir.mkdir(parents=True, exist_ok=True)
        print(f'{prefix} {"resuming" if resuming else "training"}, log {log_path}', flush=True)
        start = time.perf_counter()
        code = _run_logged(train_command(config, workdir, run.overrides), log_path, stream, stop)
        final = workdir_lib.read_json(workdir / workdir_lib.FINAL_FILE)
        if code == 0 and final is not None:
          statuses[run.name] = 'done'
          print(f'{prefix} done in {time.perf_counter() - start:.1f} s  {_headline(final)}',
                flush=True)
        elif code == 0 or stop.requested:
          statuses[run.name] = 'unfinished'
          print(f'{prefix} stopped before its last step; rerun to resume it', flush=True)
        else:
          statuses[run.name] = 'failed'
          failures.append(Failure(run.name, f'training exited with status {code}', log_path))
          print(f'{prefix} FAILED (exit status {code}), log {log_path}', flush=True)
          for line in _last_lines(log_path):
            print(f'    {line}', flush=True)
      if evaluate and statuses[run.name] == 'done' and not stop.requested:
        if needs_evaluation(workdir, workdir_lib.read_json(workdir / workdir_lib.FINAL_FILE)):
          print(f'{prefix} evaluating, log {log_path}', flush=True)
          code = _run_logged(evaluate_command(workdir), log_path, stream, stop)
          if code == 0:
            print(f'{prefix} evaluated', flush=True)
          else:
            failures.append(Failure(run.name, f'evaluation exited with status {code}', log_path))
            print(f'{prefix} evaluation FAILED (exit status {code}), log {log_path}', flush=True)
            for line in _last_lines(log_path):
              print(f'    {line}', flush=True)
    return statuses, failures, stop.requested
