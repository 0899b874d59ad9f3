"""Running a sweep's runs one after another, each resumable, with its output in its own log."""

import contextlib
import dataclasses
import functools
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
      raise SweepError(
          f'{root} is not empty and has no {spec.SWEEP_FILE}: it is not a sweep root. ' + hint)
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


def _run_logged(command: Sequence[str], log_paths: Sequence[Path], stream: bool,
                stop: _Stop) -> int:
  """Runs `command`, appending its stdout and stderr to each of `log_paths`; its exit status."""
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env['PYTHONPATH'] = os.pathsep.join(
      path for path in (str(REPO_ROOT), env.get('PYTHONPATH', '')) if path)
  with contextlib.ExitStack() as logs:
    files = [logs.enter_context(open(path, 'a', encoding='utf-8')) for path in log_paths]
    for log in files:
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
        for log in files:
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


def ensemble_command(config: str,
                     root: Path,
                     group: spec.Group,
                     runs: Sequence[PlannedRun],
                     python: str = sys.executable) -> list[str]:
  """The command that trains `runs` (of `group`) as one ensemble, members in `root/<name>`."""
  indices = [group.runs.index(run) for run in runs]
  command = [
      python, '-m', 'cyclegan_jax.main', f'--config={config}', f'--workdir={root}',
      *(f'--config.{field}={spec.flag_value(value)}' for field, value in group.shared.items())
  ]
  for field, values in group.members.items():
    command.append(f'--config.ensemble.{field}=' +
                   ','.join(spec.flag_value(values[i]) for i in indices))
  command.append('--config.ensemble.names=' + ':'.join(run.name for run in runs))
  return command


def _finished(root: Path, run: PlannedRun) -> bool:
  return (run.workdir(root) / workdir_lib.FINAL_FILE).exists()


def execute(
    config: str,
    root: Path,
    planned: Sequence[PlannedRun],
    evaluate: bool,
    stream: bool,
    groups: Sequence[spec.Group] | None = None) -> tuple[dict[str, str], list[Failure], bool]:
  """Trains the unfinished runs in order, each alone or, with `groups`, each group's runs in one
  ensemble: ({name: status}, failures, whether it was stopped)."""
  statuses: dict[str, str] = {}
  failures: list[Failure] = []
  evaluate = evaluate and has_evaluate_module()
  groups = groups or [spec.Group((run,), dict(run.overrides), {}) for run in planned]
  done_runs = 0
  with _Stop() as stop:
    for group in groups:
      if stop.requested:
        break
      first = done_runs + 1
      done_runs += len(group.runs)
      prefix = (f'[{first}/{len(planned)}] {group.runs[0].name}:' if len(group.runs) == 1 else
                f'[{first}-{done_runs}/{len(planned)}] {len(group.runs)} runs as one ensemble:')
      label = functools.partial(_label, prefix, len(group.runs))
      for run in group.runs:
        if _finished(root, run):
          statuses[run.name] = 'done'
          print(
              f'{label(run)} skipped, finished earlier '
              f'({run.workdir(root) / workdir_lib.FINAL_FILE} exists)',
              flush=True)
      todo = [run for run in group.runs if not _finished(root, run)]
      if todo:
        _train(config, root, group, todo, prefix, label, statuses, failures, stream, stop)
      for run in group.runs:
        if evaluate and statuses[run.name] == 'done' and not stop.requested:
          _evaluate(run.workdir(root), label(run), run.name, failures, stream, stop)
    return statuses, failures, stop.requested


def _label(prefix: str, group_size: int, run: PlannedRun) -> str:
  """How the sweep's output names a run: the prefix names a run alone, not one of a group."""
  return prefix if group_size == 1 else f'{prefix} {run.name}'


def _train(config: str, root: Path, group: spec.Group, runs: Sequence[PlannedRun], prefix: str,
           label: Any, statuses: dict[str, str], failures: list[Failure], stream: bool,
           stop: _Stop) -> None:
  """Trains `runs` (one ensemble for several), recording each one's status and failure."""
  workdirs = [run.workdir(root) for run in runs]
  log_paths = [workdir / LOG_FILE for workdir in workdirs]
  resuming = any(workdir_lib.checkpoint_dir(workdir).is_dir() for workdir in workdirs)
  for workdir in workdirs:
    workdir.mkdir(parents=True, exist_ok=True)
  if len(runs) == 1:
    command = train_command(config, workdirs[0], runs[0].overrides)
  else:
    command = ensemble_command(config, root, group, runs)
  what = '' if len(group.runs) == 1 else ' ' + ', '.join(run.name for run in runs)
  print(
      f'{prefix} {"resuming" if resuming else "training"}{what}, '
      f'log {log_paths[0] if len(runs) == 1 else "log.txt in each run folder"}',
      flush=True)
  start = time.perf_counter()
  code = _run_logged(command, log_paths, stream, stop)
  for run, workdir, log_path in zip(runs, workdirs, log_paths):
    final = workdir_lib.read_json(workdir / workdir_lib.FINAL_FILE)
    failure = workdir_lib.read_json(workdir / workdir_lib.FAILURE_FILE)
    if final is not None:
      statuses[run.name] = 'done'
      print(f'{label(run)} done in {time.perf_counter() - start:.1f} s  {_headline(final)}',
            flush=True)
    elif failure is not None:
      statuses[run.name] = 'failed'
      failures.append(
          Failure(run.name, f'stopped at step {failure.get("step")}: '
                  f'{failure.get("error")}', log_path))
      print(f'{label(run)} FAILED: {failure.get("error")}', flush=True)
    elif code == 0 or stop.requested:
      statuses[run.name] = 'unfinished'
      print(f'{label(run)} stopped before its last step; rerun to resume it', flush=True)
    else:
      statuses[run.name] = 'failed'
      failures.append(Failure(run.name, f'training exited with status {code}', log_path))
      print(f'{label(run)} FAILED (exit status {code}), log {log_path}', flush=True)
      for line in _last_lines(log_path):
        print(f'    {line}', flush=True)


def _evaluate(workdir: Path, prefix: str, name: str, failures: list[Failure], stream: bool,
              stop: _Stop) -> None:
  if not needs_evaluation(workdir, workdir_lib.read_json(workdir / workdir_lib.FINAL_FILE)):
    return
  log_path = workdir / LOG_FILE
  print(f'{prefix} evaluating, log {log_path}', flush=True)
  code = _run_logged(evaluate_command(workdir), [log_path], stream, stop)
  if code == 0:
    print(f'{prefix} evaluated', flush=True)
  else:
    failures.append(Failure(name, f'evaluation exited with status {code}', log_path))
    print(f'{prefix} evaluation FAILED (exit status {code}), log {log_path}', flush=True)
    for line in _last_lines(log_path):
      print(f'    {line}', flush=True)
