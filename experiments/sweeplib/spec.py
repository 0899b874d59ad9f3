"""Sweep specifications: building the runs of a sweep file, naming them and planning them.

A sweep file is a Python file with a `get_sweep()` function that returns the runs: a list of
override dicts (dotted config field -> value, plus an optional filesystem-safe `name`), or
`Sweep(runs, fixed={...})` whose `fixed` overrides go to every run without entering the names.
`runs`, `grid` and `product` build the lists (sweep files reach them as `experiments.sweep.*`).
"""

import dataclasses
import importlib.util
import itertools
import json
from pathlib import Path
import re
from typing import Any, Mapping, Sequence

from cyclegan_jax import config_lib
from cyclegan_jax import errors
from cyclegan_jax import plots
from cyclegan_jax import workdir as workdir_lib

NAME = 'name'  # The key of a run's explicit name (not a config field).
SEED = 'seed'  # The config field whose runs are averaged over in the grouped table.
MAX_NAME_LENGTH = 200
_FIELD = re.compile(r'^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$')
_SAFE_NAME = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9._,=+-]*$')
_UNSAFE_CHARACTER = re.compile(r'[^A-Za-z0-9._,=+-]')
Overrides = dict[str, Any]


class SweepError(errors.InvalidValueError):
  """A sweep that cannot run as specified: the message says why."""


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


SWEEP_FILE = 'sweep.json'


def canonical(overrides: Mapping[str, Any]) -> str:
  return json.dumps(overrides, sort_keys=True)  # Tuples and lists compare equal, as in JSON.


RESULTS_CSV = plots.RESULTS_FILE
RESULTS_MD = 'results.md'


def format_value(value: Any) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value).replace('|', '\\|')


# Names that are the sweep root's own files, so no run may take them.
RESERVED_NAMES = frozenset({workdir_lib.PLOTS_DIR, SWEEP_FILE, RESULTS_CSV, RESULTS_MD})


# Vectorized sweeps: runs that differ only in ensemble member fields train as one ensemble.

MEMBER_FIELDS = config_lib.ENSEMBLE_MEMBER_FIELDS


@dataclasses.dataclass(frozen=True)
class Group:
  """Runs trained as one ensemble: the overrides they share, and one value per run of each member
  field in which they differ."""
  runs: tuple[PlannedRun, ...]
  shared: Overrides
  members: dict[str, list[Any]]


def load_config_file(config: str) -> Any:
  """The ConfigDict of a config argument as cyclegan_jax.main reads it (`file.py[:argument]`)."""
  path, _, argument = config.partition(':')
  module_spec = importlib.util.spec_from_file_location(f'sweep_config_{Path(path).stem}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()


def group_runs(planned: Sequence[PlannedRun], base: Any) -> list[Group]:
  """The planned runs grouped into ensembles: runs whose overrides agree outside MEMBER_FIELDS
  share one (an ensemble), in the order of their first run. `base` is the sweep's config, for
  the value of a member field a run does not set."""
  by_key: dict[str, list[PlannedRun]] = {}
  for run in planned:
    shared = {k: v for k, v in run.overrides.items() if k not in MEMBER_FIELDS}
    by_key.setdefault(canonical(shared), []).append(run)
  groups = []
  for runs_of_group in by_key.values():
    shared = {k: v for k, v in runs_of_group[0].overrides.items() if k not in MEMBER_FIELDS}
    members = {}
    fields = [f for f in MEMBER_FIELDS if any(f in run.overrides for run in runs_of_group)]
    for field in fields:
      values = [run.overrides.get(field, base[field]) for run in runs_of_group]
      if len({canonical({'v': v}) for v in values}) == 1:
        shared[field] = values[0]
      else:
        members[field] = values
    groups.append(Group(tuple(runs_of_group), shared, members))
  return groups


def describe_groups(groups: Sequence[Group]) -> str:
  """Which ensembles the runs form, and why they could not form fewer."""
  lines = [
      f'{sum(len(g.runs) for g in groups)} runs in {len(groups)} '
      f'ensemble{"s" * (len(groups) != 1)}:'
  ]
  for index, group in enumerate(groups, start=1):
    differ = ', '.join(group.members) or 'nothing (one run)'
    lines.append(
        f'  ensemble {index}: {len(group.runs)} run(s) ({", ".join(r.name for r in group.runs)}); '
        f'they differ in {differ}')
  if len(groups) > 1:
    lines.append('  Runs share an ensemble only if their overrides agree on every field outside '
                 f'{", ".join(MEMBER_FIELDS)} (those change array shapes).')
  return '\n'.join(lines)
