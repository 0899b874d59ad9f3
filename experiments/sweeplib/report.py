"""A sweep's results: one row per run (its overrides, final.json, latest evaluation) as CSV and
Markdown, with mean ± std over seeds."""

import csv
import io
import math
from pathlib import Path
import statistics
from typing import Any, Iterable, Mapping, Sequence

from cyclegan_jax import plots
from cyclegan_jax import workdir as workdir_lib
from experiments.sweeplib import spec
from experiments.sweeplib.runner import Failure
from experiments.sweeplib.spec import PlannedRun


def collect_results(root: Path,
                    planned: Sequence[PlannedRun],
                    statuses: Mapping[str, str] | None = None) -> list[dict]:
  """One row per run: name, group, status, its overrides, final.json, latest eval (eval_*)."""
  statuses = statuses or {}
  rows = []
  for run in planned:
    workdir = run.workdir(root)
    final = workdir_lib.read_json(workdir / workdir_lib.FINAL_FILE)
    if final is not None:
      status = 'done'
    elif (workdir / workdir_lib.FAILURE_FILE).exists():
      status = 'failed'  # An ensemble member stopped on a non-finite loss.
    else:
      status = statuses.get(run.name) or ('unfinished' if workdir.exists() else 'pending')
    row = {'name': run.name, 'group': run.group, 'status': status, **run.overrides}
    row.update(plots.run_results(workdir))
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
  text = io.StringIO()
  writer = csv.writer(text)
  writer.writerow(columns)
  for row in rows:
    writer.writerow([_csv_value(row.get(column)) for column in columns])
  workdir_lib.write_atomic(path, text.getvalue())


def _override(value: Any) -> str:
  return '' if value is None else spec.flag_value(value).replace('|', '\\|')


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
    return spec.format_value(values[0])
  mean, spread = statistics.mean(values), statistics.stdev(values)
  return f'{spec.format_value(mean)} ± {spec.format_value(spread)}'


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
      if len({spec.canonical({'v': row.get(field)}) for row in rows}) > 1
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
                 ', '.join(f'`{k}={spec.flag_value(v)}`' for k, v in fixed.items()) + '.')
  lines += [
      'Every column of every run is in `results.csv`; each run\'s log is `<run>/log.txt`.', '',
      '## Runs', ''
  ]
  shown = ['step', 'wall_time_s'] + metrics
  header = ['run', 'status', *varying, *shown]
  lines += _table(header, ([
      spec.format_value(row['name']), row['status'], *(_override(row.get(f))
                                             for f in varying), *(spec.format_value(row.get(c))
                                                                  for c in shown)
  ]
                           for row in rows))
  groups = seed_groups(rows)
  if groups:
    lines += ['', f'## Mean ± std over seeds (runs that differ only by `{spec.SEED}`)', '']
    body = []
    for group, members in groups.items():
      cells = [spec.format_value(group), str(len(members))]
      for column in metrics:
        values = [v for v in (_number(row.get(column)) for row in members) if v is not None]
        cells.append(mean_std(values) if values else '')
      body.append(cells)
    lines += _table(['group', 'runs', *metrics], body)
  if failures:
    lines += ['', '## Failures', '']
    lines += [f'- `{failure.name}`: {failure.what}; log `{failure.log}`' for failure in failures]
  return '\n'.join(lines) + '\n'
