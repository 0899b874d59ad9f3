"""Runs a sweep of training runs one after another and tabulates their results.

    python -m experiments.sweep --config=configs/default.py \
        --sweep=experiments/sweeps/paper_ablation.py --root=runs/paper_ablation --plot
    python -m experiments.sweep ... --evaluate  # Also run cyclegan_jax.evaluate after each run.
    python -m experiments.sweep ... --dry_run   # Only print each run's command (for a cluster).

A sweep file is a Python file with a `get_sweep()` function that returns the runs: a list of
override dicts (dotted config field -> value, plus an optional filesystem-safe `name`), or
`Sweep(runs, fixed={...})` whose `fixed` overrides go to every run without entering the names.
The helpers below build the lists:

    from experiments import sweep

    def get_sweep():
      variants = sweep.runs({'name': 'no_identity', 'lambda_identity': 0.0},
                            {'name': 'identity', 'lambda_identity': 0.5})
      return sweep.Sweep(sweep.product(variants, sweep.grid(seed=[0, 1, 2])),
                         fixed={'num_epochs': 40})

Each run trains in `<root>/<name>` with `python -m cyclegan_jax.main --config=CONFIG
--workdir=<root>/<name> --config.<field>=<value> ...`, its output appended to `log.txt` there. A
run whose `final.json` exists is skipped; an unfinished one is started again with the same
command, which resumes it from its latest checkpoint. A failing run is reported and the sweep
goes on with the others (the exit status is then 1). At the end, every run's overrides,
`final.json` and latest `eval/step_*.json` go to `<root>/results.csv` and `<root>/results.md`
(with mean ± std over seeds where runs differ only by seed); `<root>/sweep.json` records the
config, the sweep file and the runs, and a root made for another sweep is refused.
"""

import csv
import dataclasses
import importlib.util
import itertools
import json
import math
import os
from pathlib import Path
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Iterable, Mapping, Sequence

from absl import flags

from cyclegan_jax import cli
from cyclegan_jax import errors
from cyclegan_jax import plots

REPO_ROOT = Path(__file__).resolve().parents[1]
NAME = 'name'  # The key of a run's explicit name (not a config field).
SEED = 'seed'  # The config field whose runs are averaged over in the grouped table.
SWEEP_FILE = 'sweep.json'
RESULTS_CSV = 'results.csv'
RESULTS_MD = 'results.md'
LOG_FILE = 'log.txt'
FINAL_FILE = 'final.json'  # As in summaries.py (not imported: it needs jax).
RESERVED_NAMES = frozenset({plots.PLOTS_DIR, SWEEP_FILE, RESULTS_CSV, RESULTS_MD})
MAX_NAME_LENGTH = 200
_FIELD = re.compile(r'^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$')
_SAFE_NAME = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9._,=+-]*$')
_UNSAFE_CHARACTER = re.compile(r'[^A-Za-z0-9._,=+-]')

Overrides = dict[str, Any]


class SweepError(errors.InvalidValueError):
  """A sweep that cannot run as specified: the message says why."""


# Building sweeps (used by sweep files).


@dataclasses.dataclass(frozen=True)
class Sweep:
  """The runs of a sweep, and overrides shared by all of them that stay out of their names."""
  runs: Sequence[Overrides]
  fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def runs(*overrides: Mapping[str, Any]) -> list[Overrides]:
  """One run per dict: `runs({'name': 'base'}, {'lambda_cycle': 5.0})`."""
  for index, item in enumerate(overrides):
    if not isinstance(item, Mapping):
      raise SweepError(f'runs(): argument {index} is a {type(item).__name__}, not a dict of '
                       'overrides')
  return [dict(item) for item in overrides]


def grid(axes: Mapping[str, Sequence[Any]] | None = None,
         **more_axes: Sequence[Any]) -> list[Overrides]:
  """Every combination of the axes' values, the last axis varying fastest.

  `grid(lambda_cycle=[5.0, 10.0], seed=[0, 1])`; dotted fields go in a dict:
  `grid({'data.crop_size': [32, 64]}, seed=[0, 1])`.
  """
  all_axes = {**(axes or {}), **more_axes}
  for field, values in all_axes.items():
    if not isinstance(values, (list, tuple, range)) or not values:
      raise SweepError(f'grid(): axis {field!r} needs a non-empty list of values, got '
                       f'{values!r}')
  return [dict(zip(all_axes, combination)) for combination in itertools.product(*all_axes.values())]


def product(*parts: Sequence[Mapping[str, Any]]) -> list[Overrides]:
  """Every combination of one run from each part, merged (a field set twice is an error).

  Where a part's run has a `name`, the merged run is named after each part's run joined by
  commas (a run without a name contributes its `field=value` pairs): `cyclegan,seed=0`.
  """
  merged_runs = []
  for combination in itertools.product(*parts):
    merged: Overrides = {}
    for item in combination:
      for field, value in item.items():
        if field != NAME and field in merged:
          raise SweepError(f'product(): {field} is set by two parts ({merged[field]!r} and '
                           f'{value!r})')
        if field != NAME:
          merged[field] = value
    if any(NAME in item for item in combination):
      labels = [item[NAME] if NAME in item else derived_name(item) for item in combination]
      merged = {NAME: ','.join(label for label in labels if label), **merged}
    merged_runs.append(merged)
  return merged_runs


# Names and command lines.


def name_value(value: Any) -> str:
  return repr(value) if isinstance(value, float) else str(value)


def derived_name(overrides: Mapping[str, Any]) -> str:
  """`field=value` pairs joined by commas, unsafe characters replaced by `_`."""
  pairs = ','.join(
      f'{field}={name_value(value)}' for field, value in overrides.items() if field != NAME)
  return _UNSAFE_CHARACTER.sub('_', pairs)


def flag_value(value: Any) -> str:
  """A value as `--config.<field>=` parses it (ml_collections converts to the field's type)."""
  if isinstance(value, bool):
    return 'True' if value else 'False'
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  return str(value)


def _check_value(where: str, field: str, value: Any) -> None:
  if not isinstance(field, str) or not _FIELD.match(field):
    raise SweepError(f'{where}: {field!r} is not a config field name (expected e.g. '
                     "'lambda_cycle' or 'data.crop_size')")
  scalars = (bool, int, float, str)
  if isinstance(value, (list, tuple)):
    ok = all(isinstance(item, scalars) for item in value)
  else:
    ok = isinstance(value, scalars)
  if not ok:
    raise SweepError(f'{where}: {field} = {value!r}: expected a bool, number or string')


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  """One run of a sweep: its name, seed-group label and overrides (fixed ones first)."""
  name: str
  group: str
  own: Overrides  # The run's overrides, without `fixed` and the name.
  overrides: Overrides  # What is passed: `fixed`, then the run's own.

  def workdir(self, root: Path) -> Path:
    return Path(root) / self.name


def _group_label(name: str, own: Overrides) -> str:
  """The run's name without its `seed=<seed>` part: runs with equal labels differ by seed only.

  ('default' for a run named only by its seed.)
  """
  if SEED not in own:
    return name
  seed_part = f'{SEED}={name_value(own[SEED])}'
  return ','.join(part for part in name.split(',') if part != seed_part) or 'default'


def plan(sweep: Sweep) -> list[PlannedRun]:
  """Validated, named runs; SweepError for a bad field, value or name, or two equal names."""
  if not sweep.runs:
    raise SweepError('the sweep has no runs')
  fixed = dict(sweep.fixed)
  if NAME in fixed:
    raise SweepError("fixed overrides cannot set 'name'")
  for field, value in fixed.items():
    _check_value('fixed', field, value)
  planned, names = [], {}
  for index, run in enumerate(sweep.runs):
    if not isinstance(run, Mapping):
      raise SweepError(f'run {index} is a {type(run).__name__}, not a dict of overrides')
    own = {k: v for k, v in run.items() if k != NAME}
    for field, value in own.items():
      _check_value(f'run {index}', field, value)
    if NAME in run:
      name = run[NAME]
      if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in ('.', '..'):
        raise SweepError(f'run {index}: name {name!r} is not filesystem-safe (use letters, '
                         'digits and . _ , = + -, not starting with . , = + or -)')
    else:
      name = derived_name(own) or 'default'
    if len(name) > MAX_NAME_LENGTH:
      raise SweepError(f'run {index}: name {name[:60]}... is longer than {MAX_NAME_LENGTH} '
                       "characters; give the run a shorter 'name'")
    if name in RESERVED_NAMES:
      raise SweepError(f'run {index}: {name!r} is reserved for the sweep\'s own files')
    key = name.casefold()  # Case-insensitive file systems.
    if key in names:
      raise SweepError(f'runs {names[key]} and {index} are both named {name!r}; give them '
                       "distinct 'name's (or distinct overrides)")
    names[key] = index
    planned.append(PlannedRun(name, _group_label(name, own), own, {**fixed, **own}))
  # Groups: runs that differ only by seed share a label; other runs sharing one get a suffix.
  by_label: dict[str, list[str]] = {}
  result = []
  for run in planned:
    signature = json.dumps({k: v for k, v in run.own.items() if k != SEED}, sort_keys=True)
    signatures = by_label.setdefault(run.group, [])
    if signature not in signatures:
      signatures.append(signature)
    position = signatures.index(signature)
    group = run.group if position == 0 else f'{run.group}#{position + 1}'
    result.append(dataclasses.replace(run, group=group))
  return result


def load_sweep_file(path: str | Path) -> Sweep:
  """The `Sweep` that the sweep file's `get_sweep()` returns (a list of runs is wrapped)."""
  path = Path(path)
  if not path.is_file():
    raise SweepError(f'no sweep file {path}')
  spec = importlib.util.spec_from_file_location(f'sweep_file_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as error:  # pylint: disable=broad-except  # Any error of the user's file.
    raise SweepError(
        f'sweep file {path} failed to load: {type(error).__name__}: {error}') from error
  get_sweep = getattr(module, 'get_sweep', None)
  if not callable(get_sweep):
    raise SweepError(f'sweep file {path} defines no get_sweep() function; it should return a '
                     'list of override dicts or Sweep(runs, fixed={...}) (see experiments/'
                     'sweep.py)')
  try:
    result = get_sweep()
  except Exception as error:  # pylint: disable=broad-except
    raise SweepError(f'{path}: get_sweep() raised {type(error).__name__}: {error}') from error
  # Duck-typed: a sweep file may have imported this module under another name (`__main__`).
  if hasattr(result, 'runs') and hasattr(result, 'fixed'):
    return Sweep(list(result.runs), dict(result.fixed))
  if isinstance(result, (list, tuple)):
    return Sweep(list(result))
  raise SweepError(f'{path}: get_sweep() returned a {type(result).__name__}; expected a list '
                   'of override dicts or Sweep(runs, fixed={...})')


def train_command(config: str,
                  workdir: Path,
                  overrides: Mapping[str, Any],
                  python: str = sys.executable) -> list[str]:
  return [
      python, '-m', 'cyclegan_jax.main', f'--config={config}', f'--workdir={workdir}',
      *(f'--config.{field}={flag_value(value)}' for field, value in overrides.items())
  ]


def evaluate_command(workdir: Path, python: str = sys.executable) -> list[str]:
  return [python, '-m', 'cyclegan_jax.evaluate', f'--workdir={workdir}']


def has_evaluate_module() -> bool:
  return importlib.util.find_spec('cyclegan_jax.evaluate') is not None


# The sweep root.


def _read_json(path: Path) -> dict | None:
  try:
    values = json.loads(path.read_text(encoding='utf-8'))
  except (OSError, ValueError):
    return None
  return values if isinstance(values, dict) else None


def _same_path(recorded: Any, given: str) -> bool:
  if not isinstance(recorded, str):
    return False
  if os.path.normpath(recorded) == os.path.normpath(given):
    return True
  return Path(recorded).resolve() == Path(given).resolve()


def _canonical(overrides: Mapping[str, Any]) -> str:
  return json.dumps(overrides, sort_keys=True)  # Tuples and lists compare equal, as in JSON.


def check_root(root: Path, config: str, sweep_path: str, planned: Sequence[PlannedRun],
               force: bool) -> None:
  """Refuses a root made for another config or sweep file, or with runs of other overrides."""
  record_path = root / SWEEP_FILE
  hint = 'Pass another --root, or --force to use this one anyway.'
  if not record_path.exists():
    if root.is_dir() and any(root.iterdir()) and not force:
      raise SweepError(f'{root} is not empty and has no {SWEEP_FILE}: it is not a sweep root. ' +
                       hint)
    return
  recorded = _read_json(record_path)
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
    if run.name in previous and _canonical(previous[run.name]) != _canonical(run.overrides):
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
  _write_text(root / SWEEP_FILE, json.dumps(record, indent=1) + '\n')


def _write_text(path: Path, text: str) -> None:
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(text, encoding='utf-8')
  tmp.replace(path)


# Running.


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
  return ' '.join(f'{key}={_format(final[key])}' for key in keys)


@dataclasses.dataclass
class Failure:
  name: str
  what: str
  log: Path


def _needs_evaluation(workdir: Path, final: Mapping[str, Any] | None) -> bool:
  """Whether the run has no eval file for its final step (yet: an unfinished run)."""
  step = (final or {}).get('step')
  if not isinstance(step, int):
    return True
  return not (workdir / plots.EVAL_DIR / f'step_{step:08d}.json').exists()


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
      if (workdir / FINAL_FILE).exists():
        statuses[run.name] = 'done'
        print(f'{prefix} skipped, finished earlier ({workdir / FINAL_FILE} exists)', flush=True)
      else:
        resuming = (workdir / 'checkpoints').is_dir()
        workdir.mkdir(parents=True, exist_ok=True)
        print(f'{prefix} {"resuming" if resuming else "training"}, log {log_path}', flush=True)
        start = time.perf_counter()
        code = _run_logged(train_command(config, workdir, run.overrides), log_path, stream, stop)
        final = _read_json(workdir / FINAL_FILE)
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
        if _needs_evaluation(workdir, _read_json(workdir / FINAL_FILE)):
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


# Results.


def _latest_eval(workdir: Path) -> tuple[int, dict[str, float]] | None:
  results = plots.load_eval_results(workdir) if (workdir / plots.EVAL_DIR).is_dir() else {}
  if not results:
    return None
  step = max(results)
  return step, results[step]


def collect_results(root: Path,
                    planned: Sequence[PlannedRun],
                    statuses: Mapping[str, str] | None = None) -> list[dict]:
  """One row per run: name, group, status, its overrides, final.json, latest eval (eval_*)."""
  statuses = statuses or {}
  rows = []
  for run in planned:
    workdir = run.workdir(root)
    final = _read_json(workdir / FINAL_FILE)
    if final is not None:
      status = 'done'
    else:
      status = statuses.get(run.name) or ('unfinished' if workdir.exists() else 'pending')
    row = {'name': run.name, 'group': run.group, 'status': status, **run.overrides}
    row.update(final or {})
    latest = _latest_eval(workdir)
    if latest is not None:
      row['eval_step'] = latest[0]
      row.update({f'eval_{key}': value for key, value in latest[1].items()})
    rows.append(row)
  return rows


def _columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
  return list(dict.fromkeys(key for row in rows for key in row))


def _csv_value(value: Any) -> str:
  if value is None:
    return ''
  return repr(value) if isinstance(value, float) else str(value)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
  columns = _columns(rows)
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, 'w', newline='', encoding='utf-8') as file:
    writer = csv.writer(file)
    writer.writerow(columns)
    for row in rows:
      writer.writerow([_csv_value(row.get(column)) for column in columns])
  tmp.replace(path)


def _format(value: Any) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value).replace('|', '\\|')


def _override(value: Any) -> str:
  return '' if value is None else flag_value(value).replace('|', '\\|')


def _number(value: Any) -> float | None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    return None
  return float(value)


def _table(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(cells) + ' |' for cells in body]
  return lines


def mean_std(values: Sequence[float]) -> str:
  if len(values) == 1:
    return _format(values[0])
  return f'{_format(statistics.mean(values))} ± {_format(statistics.stdev(values))}'


def seed_groups(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
  """The finished runs per group; {} unless some group holds several (seeds to average)."""
  groups: dict[str, list[Mapping[str, Any]]] = {}
  for row in rows:
    if row.get('status') == 'done':
      groups.setdefault(row['group'], []).append(row)
  return groups if any(len(members) > 1 for members in groups.values()) else {}


def results_markdown(rows: Sequence[Mapping[str, Any]],
                     config: str,
                     sweep_path: str,
                     fixed: Mapping[str, Any],
                     planned: Sequence[PlannedRun],
                     failures: Sequence[Failure] = ()) -> str:
  columns = _columns(rows)
  metrics = plots.summary_metrics(columns)
  override_fields = _columns(run.overrides for run in planned)
  varying = [
      field for field in override_fields
      if len({_canonical({'v': row.get(field)}) for row in rows}) > 1
  ]
  counts = {
      status: sum(row['status'] == status for row in rows)
      for status in ('done', 'failed', 'unfinished', 'pending')
  }
  lines = [
      '# Sweep results', '',
      f'Config `{config}`, sweep file `{sweep_path}`: {len(rows)} run{"s" * (len(rows) != 1)}, ' +
      ', '.join(f'{count} {status}' for status, count in counts.items() if count) + '.'
  ]
  if fixed:
    lines.append('Overrides shared by every run: ' +
                 ', '.join(f'`{k}={flag_value(v)}`' for k, v in fixed.items()) + '.')
  lines += [
      'Every column of every run is in `results.csv`; each run\'s log is `<run>/log.txt`.', '',
      '## Runs', ''
  ]
  shown = ['step', 'wall_time_s'] + metrics
  header = ['run', 'status', *varying, *shown]
  lines += _table(header, ([
      _format(row['name']), row['status'], *(_override(row.get(f))
                                             for f in varying), *(_format(row.get(c))
                                                                  for c in shown)
  ]
                           for row in rows))
  groups = seed_groups(rows)
  if groups:
    lines += ['', f'## Mean ± std over seeds (runs that differ only by `{SEED}`)', '']
    body = []
    for group, members in groups.items():
      cells = [_format(group), str(len(members))]
      for column in metrics:
        values = [v for v in (_number(row.get(column)) for row in members) if v is not None]
        cells.append(mean_std(values) if values else '')
      body.append(cells)
    lines += _table(['group', 'runs', *metrics], body)
  if failures:
    lines += ['', '## Failures', '']
    lines += [f'- `{failure.name}`: {failure.what}; log `{failure.log}`' for failure in failures]
  return '\n'.join(lines) + '\n'


# The command line.


def run_sweep(config: str,
              sweep_path: str,
              root: str | Path,
              *,
              dry_run: bool = False,
              evaluate: bool = False,
              plot: bool = False,
              force: bool = False,
              stream: bool = False) -> int:
  """Runs (or with `dry_run` prints) the sweep; its exit status (1: some run failed).

  Raises SweepError for a sweep that cannot start (bad sweep file, names, root).
  """
  root = Path(root)
  config_file = config.split(':', 1)[0]
  if not Path(config_file).is_file():
    raise SweepError(f'no config file {config_file}')
  sweep = load_sweep_file(sweep_path)
  planned = plan(sweep)
  check_root(root, config, sweep_path, planned, force)

  if dry_run:
    launched = 0
    for run in planned:
      workdir = run.workdir(root)
      final = _read_json(workdir / FINAL_FILE)
      commands = []
      if final is None:
        commands.append(train_command(config, workdir, run.overrides, 'python'))
      if evaluate and has_evaluate_module() and _needs_evaluation(workdir, final):
        commands.append(evaluate_command(workdir, 'python'))
      if commands:
        print(' && '.join(shlex.join(command) for command in commands), flush=True)
        launched += 1
    sys.stderr.write(f'Dry run: {launched} of {len(planned)} runs to launch, from '
                     f'{os.getcwd()}; nothing was run or written.\n')
    return 0

  root.mkdir(parents=True, exist_ok=True)
  write_record(root, config, sweep_path, sweep.fixed, planned)
  print(f'Sweep of {len(planned)} run{"s" * (len(planned) != 1)} in {root} (config {config}).',
        flush=True)
  if evaluate and not has_evaluate_module():
    print('--evaluate: there is no cyclegan_jax.evaluate module here; skipping evaluation.')
  statuses, failures, stopped = execute(config, root, planned, evaluate, stream)

  rows = collect_results(root, planned, statuses)
  write_csv(root / RESULTS_CSV, rows)
  _write_text(root / RESULTS_MD,
              results_markdown(rows, config, sweep_path, sweep.fixed, planned, failures))
  print(f'Results: {root / RESULTS_CSV} and {root / RESULTS_MD}', flush=True)
  if plot:
    for row in rows:
      workdir = root / row['name']
      if row['status'] == 'done' and not (workdir / plots.PLOTS_DIR / 'losses.png').exists():
        try:
          plots.plot_run(workdir)
        except (FileNotFoundError, ValueError) as error:
          print(f'No plots for {row["name"]}: {error}')
    try:
      for path in plots.plot_sweep(root, rows):
        print(f'Plot: {path}')
    except ValueError as error:
      print(f'No sweep plots: {error}')
  if failures:
    print(f'{len(failures)} failure(s):')
    for failure in failures:
      print(f'  {failure.name}: {failure.what}; log {failure.log}')
  if stopped:
    print('The sweep was stopped; rerun the same command to resume it.')
  return 1 if failures or stopped else 0


FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so sweep files can import this)."""
  flags.DEFINE_string('config', None, 'Training config file, as for cyclegan_jax.main.')
  flags.DEFINE_string('sweep', None, 'Sweep file: a Python file defining get_sweep().')
  flags.DEFINE_string('root', None, 'Folder of the sweep: one workdir per run, and the results.')
  flags.DEFINE_bool('dry_run', False, 'Print the command of each unfinished run; run nothing.')
  flags.DEFINE_bool(
      'evaluate', False, 'After each run, `python -m cyclegan_jax.evaluate` unless its eval file '
      'for the final step exists.')
  flags.DEFINE_bool('plot', False, 'Also draw the sweep plots (and missing run plots).')
  flags.DEFINE_bool('force', False, 'Use a --root made for another config or sweep file.')
  flags.DEFINE_bool('stream', False, "Also copy the runs' output to the console.")
  flags.mark_flags_as_required(['config', 'sweep', 'root'])


def main(argv):
  cli.no_extra_arguments(argv)
  sys.exit(
      run_sweep(FLAGS.config,
                FLAGS.sweep,
                FLAGS.root,
                dry_run=FLAGS.dry_run,
                evaluate=FLAGS.evaluate,
                plot=FLAGS.plot,
                force=FLAGS.force,
                stream=FLAGS.stream))


if __name__ == '__main__':
  # Sweep files import `experiments.sweep`: run that module, not a second copy as `__main__`.
  from experiments import sweep as _sweep  # pylint: disable=g-import-not-at-top,import-self
  _sweep.define_flags()
  cli.run(_sweep.main)
