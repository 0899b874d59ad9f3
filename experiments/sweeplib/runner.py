"""Running a sweep's runs, one after another or several at once, each resumable, with its output in
its own log."""

import contextlib
import dataclasses
import functools
import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Mapping, Sequence

from cyclegan_jax import plots
from cyclegan_jax import workdir as workdir_lib
from experiments.sweeplib import spec
from experiments.sweeplib.spec import PlannedRun
from experiments.sweeplib.spec import SweepError

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_FILE = 'log.txt'
# Runs trained at once report from their own threads, and print() writes a line's text and its
# end separately: each line is written whole under this lock (reentrant: the stop handler prints
# on the main thread, which may hold it).
_CONSOLE = threading.RLock()


def _say(*lines: str) -> None:
  """Prints `lines` whole and together, whichever thread prints at the same time."""
  with _CONSOLE:
    sys.stdout.write(''.join(f'{line}\n' for line in lines))
    sys.stdout.flush()


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
  """SIGINT/SIGTERM: the current runs checkpoint and stop (a second one: they stop now)."""

  def __init__(self):
    self.requested = False
    self.processes: list[subprocess.Popen] = []
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
    self.request(signum)

  def request(self, signum: int = signal.SIGTERM) -> None:
    """Stops the sweep: `signum` to every running process (their runs checkpoint and stop)."""
    if not self.requested:
      _say('Stopping: the current run saves a checkpoint and stops; rerun the same command to '
           'resume the sweep.')
    self.requested = True
    for process in list(self.processes):
      if process.poll() is None:
        process.send_signal(signum)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


@dataclasses.dataclass(frozen=True)
class Job:
  """One training or evaluation process: its command, the logs its output goes to, and the CPU
  cores it is pinned to (None: all of this process's)."""
  command: list[str]
  log_paths: list[Path]
  cpus: tuple[int, ...] | None = None


def pinned(command: Sequence[str], cpus: Sequence[int]) -> list[str]:
  """`command` held to the CPU cores `cpus`: a Python that pins itself, then execs the command,
  whose pid, signals and exit status it then is. (Not subprocess's preexec_fn, which runs Python
  in the fork of a process whose other threads may hold its locks.)"""
  return [
      sys.executable, '-c', f'import os, sys; os.sched_setaffinity(0, {sorted(cpus)}); '
      'os.execv(sys.argv[1], sys.argv[1:])', *command
  ]


def _run_logged(jobs: Sequence[Job], stream: bool, stop: _Stop) -> list[int]:
  """Runs the jobs at once, appending each one's stdout and stderr to its logs; their exit
  statuses."""
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env['PYTHONPATH'] = os.pathsep.join(
      path for path in (str(REPO_ROOT), env.get('PYTHONPATH', '')) if path)
  with contextlib.ExitStack() as logs:
    processes, outputs = [], []
    try:
      for job in jobs:
        files = [logs.enter_context(open(path, 'a', encoding='utf-8')) for path in job.log_paths]
        on_cores = f' (CPU cores {",".join(map(str, job.cpus))})' if job.cpus else ''
        for log in files:
          log.write(f'=== {time.strftime("%Y-%m-%d %H:%M:%S")} $ {shlex.join(job.command)}'
                    f'{on_cores}\n')
          log.flush()
        # Its own session: a Ctrl-C reaches the sweep, which passes it on once (see _Stop).
        processes.append(
            subprocess.Popen(pinned(job.command, job.cpus) if job.cpus else job.command,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT,
                             text=True,
                             errors='replace',
                             env=env,
                             start_new_session=True))
        stop.processes.append(processes[-1])
        if stop.requested:  # A stop that came while it started (runs train at once in threads).
          processes[-1].send_signal(signal.SIGTERM)
        outputs.append(files)
      copiers = [
          threading.Thread(target=_copy_output, args=(process, files, stream))
          for process, files in zip(processes, outputs)
      ]
      for copier in copiers:
        copier.start()
      for copier in copiers:
        copier.join()
      return [process.wait() for process in processes]
    finally:
      for process in processes:
        stop.processes.remove(process)
      for process in processes:
        if process.poll() is None:
          process.kill()
          process.wait()


def _copy_output(process: subprocess.Popen, files: Sequence[Any], stream: bool) -> None:
  for line in process.stdout:
    for log in files:
      log.write(line)
      log.flush()
    if stream:
      _say(line.rstrip('\n'))


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


def training_command(config: str,
                     root: Path,
                     group: spec.Group,
                     runs: Sequence[PlannedRun],
                     python: str = sys.executable) -> list[str]:
  """A run alone in its folder; runs of a group (several, or one share of it) as an ensemble."""
  if len(group.runs) == 1:
    return train_command(config, runs[0].workdir(root), runs[0].overrides, python)
  return ensemble_command(config, root, group, runs, python)


# Runs of a group trained on CPU go faster as several ensembles at once, each on its own cores,
# than as one ensemble on all of them: XLA's CPU runtime spreads each small convolution of a
# batch-1 step over its threads at a cost that a process of one core never pays. Measured on 2
# cores, the offline default config: 6 members in one process 27.1 member-steps/s, as 3 + 3 on a
# core each 40.4 (README, "Ensembles"). A member then trains as its run would on one core:
# bitwise so, but not bitwise the run on all cores, whose convolutions split their sums otherwise.
def cpu_cores() -> list[int]:
  """The CPU cores this process may run on."""
  if hasattr(os, 'sched_getaffinity'):
    return sorted(os.sched_getaffinity(0))
  return list(range(os.cpu_count() or 1))


def accelerator_expected() -> bool:
  """Whether jax here would train on a GPU or TPU: JAX_PLATFORMS names one first, or jax has a
  GPU or TPU plugin installed. Decided without starting jax, which would claim the accelerator
  in this process."""
  platforms = os.environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip().lower() != 'cpu'
  if importlib.util.find_spec('libtpu') or importlib.util.find_spec('jax_plugins'):
    return True
  return bool(importlib.metadata.entry_points(group='jax_plugins'))


def can_pin() -> bool:
  """Whether a process can be held to some CPU cores here (Linux: sched_setaffinity)."""
  return hasattr(os, 'sched_setaffinity')


def default_processes() -> int:
  """One ensemble per CPU core on a CPU whose cores a process can be held to; otherwise one
  (an accelerator's whole device; or unpinned processes, whose runtimes would each spread over
  every core and contend)."""
  return len(cpu_cores()) if can_pin() and not accelerator_expected() else 1


def slots(processes: int, cores: Sequence[int], runs: int) -> list[tuple[int, ...] | None]:
  """The CPU cores of each of `processes` runs trained at once (fewer if there are fewer runs or
  cores): near-equal shares in order; [None] (all cores, unpinned) for one, and None for each
  where processes cannot be pinned."""
  count = max(1, min(processes, len(cores), runs))
  if count == 1:
    return [None]
  return [
      tuple(cores[k * len(cores) // count:(k + 1) * len(cores) // count]) if can_pin() else None
      for k in range(count)
  ]


def shares(runs: Sequence[PlannedRun], processes: int,
           cores: Sequence[int]) -> list[tuple[list[PlannedRun], tuple[int, ...] | None]]:
  """The runs dealt in turn into `processes` shares (fewer if there are fewer runs or cores),
  each with the cores it is pinned to (None where processes cannot be pinned); one share of all
  runs, unpinned, for one.

  Dealt, not cut in blocks: a sweep lists the seeds of one variant next to each other, and
  variants differ in cost (the identity loss adds two generator passes), so dealing spreads each
  variant over the shares and they finish together (the paper ablation in blocks kept one core
  idle for the last fifth of the sweep). Each share then needs most of the group's programs; share
  k starts k/count of the way through its runs, so the processes compile different programs
  first and load the rest from the compilation cache, where the others have put them.
  """
  share_cores = slots(processes, cores, len(runs))
  count = len(share_cores)
  split = []
  for k, cpus in enumerate(share_cores):
    dealt = list(runs[k::count])
    start = k * len(dealt) // count
    split.append((dealt[start:] + dealt[:start], cpus))
  return split


def _finished(root: Path, run: PlannedRun) -> bool:
  return (run.workdir(root) / workdir_lib.FINAL_FILE).exists()


def execute(
    config: str,
    root: Path,
    planned: Sequence[PlannedRun],
    evaluate: bool,
    stream: bool,
    groups: Sequence[spec.Group] | None = None,
    processes: int = 1) -> tuple[dict[str, str], list[Failure], bool]:
  """Trains the unfinished runs: with `groups`, each group's runs as ensembles, one group after
  another and `processes` ensembles of a group at once (`shares`); without, each run alone,
  `processes` of them at once in the order given, each on its own share of the CPU cores (`slots`).
  Returns ({name: status}, failures, whether it was stopped)."""
  statuses: dict[str, str] = {}
  failures: list[Failure] = []
  evaluate = evaluate and has_evaluate_module()
  vectorized = groups is not None
  groups = groups or [spec.Group((run,), dict(run.overrides), {}) for run in planned]
  tasks, done_runs = [], 0
  for group in groups:
    first = done_runs + 1
    done_runs += len(group.runs)
    prefix = (f'[{first}/{len(planned)}] {group.runs[0].name}:' if len(group.runs) == 1 else
              f'[{first}-{done_runs}/{len(planned)}] {len(group.runs)} runs as one ensemble:')
    tasks.append((group, prefix))
  with _Stop() as stop:

    def run_group(group: spec.Group, prefix: str, cpus: tuple[int, ...] | None) -> None:
      label = functools.partial(_label, prefix, len(group.runs))
      for run in group.runs:
        if _finished(root, run):
          statuses[run.name] = 'done'
          _say(f'{label(run)} skipped, finished earlier '
               f'({run.workdir(root) / workdir_lib.FINAL_FILE} exists)')
      todo = [run for run in group.runs if not _finished(root, run)]
      if todo:
        _train(config, root, group, todo, prefix, label, statuses, failures, stream, stop,
               processes if vectorized else 1, cpus)
      for run in group.runs:
        if evaluate and statuses[run.name] == 'done' and not stop.requested:
          _evaluate(run.workdir(root), label(run), run.name, failures, stream, stop, cpus)

    cores = [None] if vectorized else slots(processes, cpu_cores(), len(planned))
    if len(cores) == 1:
      for group, prefix in tasks:
        if stop.requested:
          break
        run_group(group, prefix, cores[0])
    else:
      _run_at_once(tasks, cores, run_group, stop)
    return statuses, failures, stop.requested


def _run_at_once(tasks: Sequence[tuple[spec.Group, str]], cores: Sequence[tuple[int, ...] | None],
                 run_group: Any, stop: _Stop) -> None:
  """Runs the tasks in order: the first on the first of `cores`, the second on the second, ...;
  each later one as soon as one of them is free, on it; none after a stop."""
  pending = list(reversed(tasks[len(cores):]))
  lock = threading.Lock()
  errors = []

  def worker(cpus, task):
    while task is not None and not stop.requested:
      try:
        run_group(*task, cpus)
      except BaseException as error:  # pylint: disable=broad-except
        errors.append(error)
        stop.request()
        return
      with lock:
        task = pending.pop() if pending else None

  workers = [
      threading.Thread(target=worker, args=(cpus, task)) for cpus, task in zip(cores, tasks)
  ]
  for thread in workers:
    thread.start()
  for thread in workers:
    while thread.is_alive():  # Short waits: the main thread handles Ctrl-C and SIGTERM.
      thread.join(0.5)
  if errors:
    raise errors[0]


def _label(prefix: str, group_size: int, run: PlannedRun) -> str:
  """How the sweep's output names a run: the prefix names a run alone, not one of a group."""
  return prefix if group_size == 1 else f'{prefix} {run.name}'


def _train(config: str, root: Path, group: spec.Group, runs: Sequence[PlannedRun], prefix: str,
           label: Any, statuses: dict[str, str], failures: list[Failure], stream: bool,
           stop: _Stop, processes: int, cpus: tuple[int, ...] | None = None) -> None:
  """Trains `runs` (for several: as ensembles, `processes` at once on shares of the CPU cores; for
  one share, on `cpus`), recording each one's status and failure."""
  workdirs = [run.workdir(root) for run in runs]
  resuming = any(workdir_lib.checkpoint_dir(workdir).is_dir() for workdir in workdirs)
  for workdir in workdirs:
    workdir.mkdir(parents=True, exist_ok=True)
  split = shares(runs, processes, cpu_cores())
  if len(split) == 1:
    split = [(split[0][0], cpus)]
  jobs = [
      Job(training_command(config, root, group, share),
          [run.workdir(root) / LOG_FILE for run in share], cpus) for share, cpus in split
  ]
  what = '' if len(group.runs) == 1 else ' ' + ', '.join(run.name for run in runs)
  where = (f'log {jobs[0].log_paths[0]}' if len(runs) == 1 else 'log.txt in each run folder')
  if len(split) > 1 and split[0][1]:
    where += (f'; as {len(split)} ensembles at once, each pinned to its own CPU cores (' +
              '; '.join(f'{len(share)} on {",".join(map(str, cpus))}' for share, cpus in split) +
              ')')
  elif len(split) > 1:
    where += (f'; as {len(split)} ensembles at once, of ' +
              ', '.join(str(len(share)) for share, _ in split) + ' runs')
  elif cpus:
    where += f', on CPU cores {",".join(map(str, cpus))}'
  _say(f'{prefix} {"resuming" if resuming else "training"}{what}, {where}')
  start = time.perf_counter()
  codes = _run_logged(jobs, stream, stop)
  for (share, _), job, code in zip(split, jobs, codes):
    for run, log_path in zip(share, job.log_paths):
      _record_status(run, run.workdir(root), log_path, code, start, label, statuses, failures,
                     stop)


def _record_status(run: PlannedRun, workdir: Path, log_path: Path, code: int, start: float,
                   label: Any, statuses: dict[str, str], failures: list[Failure],
                   stop: _Stop) -> None:
  final = workdir_lib.read_json(workdir / workdir_lib.FINAL_FILE)
  failure = workdir_lib.read_json(workdir / workdir_lib.FAILURE_FILE)
  if final is not None:
    statuses[run.name] = 'done'
    _say(f'{label(run)} done in {time.perf_counter() - start:.1f} s  {_headline(final)}')
  elif failure is not None:
    statuses[run.name] = 'failed'
    failures.append(
        Failure(run.name, f'stopped at step {failure.get("step")}: '
                f'{failure.get("error")}', log_path))
    _say(f'{label(run)} FAILED: {failure.get("error")}')
  elif code == 0 or stop.requested:
    statuses[run.name] = 'unfinished'
    _say(f'{label(run)} stopped before its last step; rerun to resume it')
  else:
    statuses[run.name] = 'failed'
    failures.append(Failure(run.name, f'training exited with status {code}', log_path))
    _say(f'{label(run)} FAILED (exit status {code}), log {log_path}',
         *(f'    {line}' for line in _last_lines(log_path)))


def _evaluate(workdir: Path, prefix: str, name: str, failures: list[Failure], stream: bool,
              stop: _Stop, cpus: tuple[int, ...] | None = None) -> None:
  if not needs_evaluation(workdir, workdir_lib.read_json(workdir / workdir_lib.FINAL_FILE)):
    return
  log_path = workdir / LOG_FILE
  _say(f'{prefix} evaluating, log {log_path}')
  code, = _run_logged([Job(evaluate_command(workdir), [log_path], cpus)], stream, stop)
  if code == 0:
    _say(f'{prefix} evaluated')
  else:
    failures.append(Failure(name, f'evaluation exited with status {code}', log_path))
    _say(f'{prefix} evaluation FAILED (exit status {code}), log {log_path}',
         *(f'    {line}' for line in _last_lines(log_path)))
