"""Plots of a run's losses and metrics, and of a sweep's results (matplotlib, Agg backend).

    python -m cyclegan_jax.plots --workdir=runs/demo        # runs/demo/plots/*.png
    python -m cyclegan_jax.plots --root=runs/paper_ablation  # runs/paper_ablation/plots/*.png

A run's plots come from its `metrics.jsonl` (and `eval/step_*.json`): `losses.png` (the loss
terms, discriminator scores and learning rate against the step) and `metrics.png` (every
held-out / evaluation metric against the step). A sweep's plots come from its `results.csv`
(written by `python -m experiments.sweep`) and its runs' `metrics.jsonl`: `final_metrics.png`
(each run's final metrics; mean ± std where runs differ only by seed) and `curves.png` (the
metrics of all runs against the step).

matplotlib is imported only when drawing, so reading metrics needs nothing but the standard
library and numpy.
"""

import collections
import csv
import io
import json
import math
from pathlib import Path
import re
from typing import Iterable, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from cyclegan_jax import cli
from cyclegan_jax import errors
from cyclegan_jax import workdir as workdir_lib

RESULTS_FILE = 'results.csv'  # A table of runs, one row each (written by experiments.sweep).
# A results column of a run's latest evaluation: `eval_<key>` (workdir.flat_name of its scalar).
EVAL_COLUMN_PREFIX = workdir_lib.flat_name(workdir_lib.EVAL_PREFIX)

# name -> {step: value}
Series = dict[str, dict[int, float]]

# losses.png: (panel title, scalar names) in drawing order; panels without data are left out.
LOSS_PANELS = (
    ('Generator GAN losses', ('loss/gan_G', 'loss/gan_F')),
    ('Cycle-consistency losses', ('loss/cycle_A', 'loss/cycle_B')),
    ('Identity losses', ('loss/idt_G', 'loss/idt_F')),
    ('Discriminator losses', ('loss/D_X', 'loss/D_Y')),
    ('Generator objective (terms switched on)', ('loss/generators',)),
    ('Discriminator scores (mean)', ('score/D_X/real', 'score/D_X/fake', 'score/D_Y/real',
                                     'score/D_Y/fake')),
    ('Learning rate', ('lr',)),
)
LEGEND_LABELS = {
    'loss/gan_G': 'G (A→B), judged by D_Y',
    'loss/gan_F': 'F (B→A), judged by D_X',
    'loss/cycle_A': 'forward: F(G(a)) vs a',
    'loss/cycle_B': 'backward: G(F(b)) vs b',
    'loss/idt_G': 'G(b) vs b',
    'loss/idt_F': 'F(a) vs a',
    'loss/D_X': 'D_X (domain A)',
    'loss/D_Y': 'D_Y (domain B)',
}
# Scalars that are neither losses nor metrics: left out of both figures.
NOT_PLOTTED = ('steps_per_s',)
TRAINING_PREFIXES = ('loss/', 'score/')
# Evaluation keys (see evaluation.py) summarised per run in sweep tables and bar charts.
SUMMARY_ORDER = ('heldout_', 'fid_', 'kid_', 'cycle_mae_', 'baseline_')
SUMMARY_PREFIXES = SUMMARY_ORDER
_DIRECTION = re.compile(r'_(AtoB|BtoA|A|B)$')


class MetricsError(errors.InvalidValueError):
  """A metrics file that is missing, empty or corrupt."""


# Reading.


def _parse_record(line: str) -> dict | None:
  try:
    record = json.loads(line)
  except json.JSONDecodeError:
    return None
  if not isinstance(record, dict):
    return None
  step = record.get('step')
  return record if isinstance(step, int) and not isinstance(step, bool) else None


def load_metrics(path: str | Path) -> Series:
  """{scalar name: {step: value}} from a `metrics.jsonl` (or the workdir holding one).

  A step logged twice (a resumed run appends) keeps the later value. A truncated last line (a
  killed run) is skipped with a warning, as is a truncated record that a resumed run's first
  line was appended to. Raises FileNotFoundError or MetricsError (empty or corrupt file).
  """
  path = Path(path)
  hint = ''
  if path.is_dir():
    hint = workdir_lib.runs_below_hint(path)
    path = path / workdir_lib.METRICS_FILE
  if not path.is_file():
    raise errors.PathNotFoundError(
        f'No {workdir_lib.METRICS_FILE} at {path}: the run has not logged any scalars '
        '(or this is not a run directory).' + hint)
  lines = path.read_text(encoding='utf-8', errors='replace').splitlines()
  while lines and not lines[-1].strip():
    lines.pop()
  series: Series = collections.defaultdict(dict)
  records = 0
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    record = _parse_record(line)
    if record is None:
      start = line.rfind('{"step"')
      record = _parse_record(line[start:]) if start > 0 else None
      if record is not None:
        logging.warning('%s:%d: dropped a truncated record in front of a complete one.', path,
                        number)
      elif number == len(lines):
        logging.warning('%s:%d: skipped a truncated last line (a run stopped while writing it).',
                        path, number)
        continue
      else:
        raise MetricsError(f'{path}:{number}: not a JSON object with an integer "step": '
                           f'{line[:80]!r}')
    records += 1
    step = record['step']
    for name, value in record.items():
      if name != 'step' and isinstance(value, (int, float)) and not isinstance(value, bool):
        series[name][step] = float(value)
  if not records:
    raise MetricsError(f'{path} holds no metrics records.')
  return dict(series)


def load_eval_results(workdir: str | Path) -> dict[int, dict[str, float]]:
  """{step: metrics} of a run's `eval/step_*.json` files; unreadable files are skipped."""
  results = {}
  for path in sorted(Path(workdir, workdir_lib.EVAL_DIR).glob('step_*.json')):
    try:
      values = json.loads(path.read_text(encoding='utf-8'))
      step = int(values.pop('step', path.stem.split('_')[-1]))
    except (OSError, ValueError, TypeError, AttributeError) as error:
      logging.warning('Skipped unreadable %s: %s', path, error)
      continue
    results[step] = {
        k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
  return results


def run_series(workdir: str | Path) -> Series:
  """`load_metrics(workdir)`, completed with `eval/step_*.json` as `eval/<key>` scalars."""
  series = load_metrics(workdir)
  for step, values in load_eval_results(workdir).items():
    for key, value in values.items():
      series.setdefault(workdir_lib.eval_scalar(key), {})[step] = value
  return series


def is_metric(name: str) -> bool:
  """Scalars of metrics.png: everything but the training losses, scores, lr and counters."""
  leaf = name.rsplit('/', 1)[-1]
  return not (name.startswith(TRAINING_PREFIXES) or name == 'lr' or name in NOT_PLOTTED or
              leaf.startswith('num_'))


def metric_family(name: str) -> str:
  """Panel of a metric: its key without prefix and direction; baselines join their metric."""
  leaf = _DIRECTION.sub('', name.rsplit('/', 1)[-1])
  return 'heldout_' + leaf[len('baseline_'):] if leaf.startswith('baseline_') else leaf


def summary_metrics(columns: Iterable[str], baselines: bool = True) -> list[str]:
  """The evaluation columns of a sweep's results (final.json keys, then `eval_<key>` ones).

  An `eval_<key>` column is left out where `<key>` is a column too (the same metric, measured at
  the end of training). Without evaluation columns, the loss columns.
  """
  columns = list(columns)
  present = set(columns)

  def wanted(key):
    return key.startswith(SUMMARY_PREFIXES) and not key.startswith('kid_std_') and (
        baselines or not key.startswith('baseline_'))

  def rank(key):  # Metrics against ground truth first, then FID/KID, cycle errors, baselines.
    key = key.removeprefix(EVAL_COLUMN_PREFIX)
    return next(i for i, prefix in enumerate(SUMMARY_ORDER) if key.startswith(prefix))

  chosen = [c for c in columns if wanted(c)]
  chosen += [
      c for c in columns
      if c.startswith(EVAL_COLUMN_PREFIX) and wanted(c.removeprefix(EVAL_COLUMN_PREFIX)) and
      c.removeprefix(EVAL_COLUMN_PREFIX) not in present
  ]
  chosen.sort(key=rank)  # Stable: the columns' order within each kind.
  return chosen or [c for c in columns if c.startswith('loss_')]


def read_results(root: str | Path) -> list[dict]:
  """The rows of a sweep's `results.csv`, numbers as floats and empty cells dropped; for a root
  without one whose subfolders hold runs (an ensemble's), `runs_results` of those."""
  path = Path(root) / RESULTS_FILE
  if not path.is_file():
    if workdir_lib.runs_in_subfolders(root):
      return runs_results(root)
    raise errors.PathNotFoundError(
        f'No {RESULTS_FILE} in {root}, and no runs in its subfolders: give a sweep\'s root (run '
        '`python -m experiments.sweep` there first) or an ensemble\'s workdir.')
  with open(path, newline='', encoding='utf-8') as file:
    rows = []
    for row in csv.DictReader(file):
      parsed = {}
      for key, value in row.items():
        if value in ('', None):
          continue
        try:
          parsed[key] = float(value)
        except ValueError:
          parsed[key] = value
      rows.append(parsed)
  return rows


_SEED_IN_NAME = re.compile(r'(^|,)seed=[^,]*')


def runs_results(root: str | Path) -> list[dict]:
  """A row per run in `root`'s subfolders (an ensemble's members), as a sweep's results.csv has
  them: `name`, `group` (the name without its `seed=` part: members that differ only by seed
  form a group), final.json's values and the latest evaluation's (`eval_<key>`)."""
  return [{
      'name': name,
      'group': _SEED_IN_NAME.sub('', name).strip(',') or 'seeds',
      **run_results(Path(root) / name)
  } for name in workdir_lib.runs_in_subfolders(root)]


def run_results(workdir: str | Path) -> dict:
  """A run's results row: its final.json values and its latest evaluation's (`eval_<key>`, with
  `eval_step`); empty for a run that has neither."""
  row = dict(workdir_lib.read_json(Path(workdir) / workdir_lib.FINAL_FILE) or {})
  evaluations = load_eval_results(workdir)
  if evaluations:
    step = max(evaluations)
    row[EVAL_COLUMN_PREFIX + 'step'] = step
    row.update({EVAL_COLUMN_PREFIX + key: value for key, value in evaluations[step].items()})
  return row


# Drawing.


def _figure(panels: int, columns: int, panel_size=(5.2, 3.0)):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  columns = max(1, min(columns, panels))
  rows = math.ceil(panels / columns)
  figure = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows + 0.6),
                  layout='constrained')
  FigureCanvasAgg(figure)
  axes = figure.subplots(rows, columns, squeeze=False).ravel()
  for extra in axes[panels:]:
    extra.set_visible(False)
  return figure, axes[:panels]


def _save(figure, path: Path) -> Path:
  buffer = io.BytesIO()
  figure.savefig(buffer, dpi=100, format='png')
  return workdir_lib.write_atomic(path, buffer.getvalue())


def _xy(values: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
  steps = np.array(sorted(values), dtype=np.int64)
  y = np.array([values[s] for s in steps], dtype=np.float64)
  y[~np.isfinite(y)] = np.nan
  return steps, y


def _plot_line(ax, values: dict[int, float], **style) -> None:
  x, y = _xy(values)
  ax.plot(x, y, marker='o' if len(x) < 30 else None, markersize=3, **style)


def _finish_axes(ax, title: str, legend: bool = True) -> None:
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  ax.set_title(title, fontsize=10)
  ax.set_xlabel('step')
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.grid(alpha=0.3)
  if legend and ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)


def _loss_panels(series: Series) -> list[tuple[str, list[str]]]:
  panels, covered = [], set()
  for title, names in LOSS_PANELS:
    covered.update(names)
    present = [n for n in names if n in series]
    if present:
      panels.append((title, present))
  others = sorted(n for n in series if n.startswith(TRAINING_PREFIXES) and n not in covered)
  if others:
    panels.append(('Other training scalars', others))
  return panels


def plot_losses(series: Series, path: Path, title: str = '') -> Path | None:
  """The loss terms, scores and lr of `series` against the step (None: none logged)."""
  panels = _loss_panels(series)
  if not panels:
    return None
  figure, axes = _figure(len(panels), 2)
  for ax, (panel_title, names) in zip(axes, panels):
    for name in names:
      _plot_line(ax, series[name], label=LEGEND_LABELS.get(name, name), linewidth=1.2)
    _finish_axes(ax, panel_title, legend=len(names) > 1)
  if title:
    figure.suptitle(title)
  return _save(figure, path)


def plot_metrics(series: Series, path: Path, title: str = '') -> Path | None:
  """Every held-out / evaluation metric of `series`, one panel per metric and both directions."""
  families = collections.defaultdict(list)
  # Within a panel: the metric before its no-translation baseline.
  for name in sorted((n for n in series if is_metric(n)), key=lambda n: ('baseline_' in n, n)):
    families[metric_family(name)].append(name)
  if not families:
    return None
  figure, axes = _figure(len(families), 3, panel_size=(4.6, 3.0))
  for ax, (family, names) in zip(axes, families.items()):
    for name in names:
      baseline = 'baseline_' in name
      _plot_line(ax,
                 series[name],
                 label=name + (' (no translation)' if baseline else ''),
                 linestyle='--' if baseline else '-',
                 linewidth=1.2)
    _finish_axes(ax, family)
  if title:
    figure.suptitle(title)
  return _save(figure, path)


def plot_run(workdir: str | Path) -> list[Path]:
  """Writes `workdir/plots/losses.png` and (if it has any metric) `metrics.png`; their paths.

  Raises FileNotFoundError or MetricsError (a ValueError) where metrics.jsonl is missing,
  empty or corrupt.
  """
  workdir = Path(workdir)
  series = run_series(workdir)
  last_step = max(max(values) for values in series.values())
  title = f'{workdir.resolve().name} (step {last_step})'
  written = [
      plot_losses(series, workdir / workdir_lib.PLOTS_DIR / 'losses.png', title),
      plot_metrics(series, workdir / workdir_lib.PLOTS_DIR / 'metrics.png', title)
  ]
  return [path for path in written if path is not None]


def _number(value) -> float | None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value) if math.isfinite(value) else None


def _groups(rows: Sequence[dict]) -> dict[str, list[dict]]:
  groups = collections.defaultdict(list)
  for row in rows:
    groups[str(row.get('group') or row['name'])].append(row)
  return dict(groups)


def _colors(count: int) -> list:
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  cmap = colormaps['tab10' if count <= 10 else 'tab20']
  return [cmap(i % cmap.N) for i in range(count)]


def plot_final_metrics(rows: Sequence[dict], path: Path, metrics: Sequence[str]) -> Path | None:
  """One bar per run, or per group of runs that differ only by seed (mean ± std, the seeds as
  dots), in one panel per metric."""
  metrics = [m for m in metrics if any(_number(row.get(m)) is not None for row in rows)]
  if not metrics:
    return None
  groups = _groups(rows)
  labels = list(groups)
  colors = _colors(len(labels))
  figure, axes = _figure(len(metrics), 3, panel_size=(max(4.0, 0.5 * len(labels) + 1.5), 3.4))
  for ax, metric in zip(axes, metrics):
    for index, label in enumerate(labels):
      values = [v for v in (_number(row.get(metric)) for row in groups[label]) if v is not None]
      if not values:
        continue
      std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
      ax.bar(index,
             float(np.mean(values)),
             width=0.7,
             yerr=std if len(values) > 1 else None,
             capsize=3,
             color=colors[index],
             alpha=0.75)
      if len(values) > 1:
        ax.plot([index] * len(values), values, 'k.', markersize=4)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha='right', fontsize=8)
    ax.set_title(metric, fontsize=10)
    ax.grid(axis='y', alpha=0.3)
  if any(len(members) > 1 for members in groups.values()):
    figure.suptitle('Final metrics: mean ± std over seeds (dots: single runs)')
  else:
    figure.suptitle('Final metrics per run')
  return _save(figure, path)


def _curve_name(metric: str, series: Series) -> str | None:
  """The metrics.jsonl scalar of a results column: eval/<key> (or the older heldout/<key>)."""
  key = metric.removeprefix(EVAL_COLUMN_PREFIX)
  for name in (workdir_lib.eval_scalar(key), f'heldout/{key}'):
    if name in series:
      return name
  return None


def plot_curves(root: Path, rows: Sequence[dict], path: Path,
                metrics: Sequence[str]) -> Path | None:
  """The metrics of every run against the step, overlaid: a colour per group of seeds."""
  run_data = {}
  for row in rows:
    try:
      run_data[row['name']] = run_series(root / row['name'])
    except (FileNotFoundError, MetricsError) as error:
      logging.info('No curves for %s: %s', row['name'], error)
  panels = []
  for metric in metrics:
    if any(_curve_name(metric, s) for s in run_data.values()):
      panels.append(metric)
  if not panels:
    return None
  groups = _groups([row for row in rows if row['name'] in run_data])
  colors = dict(zip(groups, _colors(len(groups))))
  figure, axes = _figure(len(panels), 3, panel_size=(4.6, 3.2))
  for ax, metric in zip(axes, panels):
    for label, members in groups.items():
      labelled = False
      for row in members:
        series = run_data[row['name']]
        name = _curve_name(metric, series)
        if name is None:
          continue
        _plot_line(ax,
                   series[name],
                   color=colors[label],
                   alpha=0.8,
                   linewidth=1.0,
                   label=None if labelled else label)
        labelled = True
    _finish_axes(ax, metric, legend=False)
  handles, labels = axes[0].get_legend_handles_labels()
  for ax in axes[1:]:
    for handle, label in zip(*ax.get_legend_handles_labels()):
      if label not in labels:
        handles.append(handle)
        labels.append(label)
  figure.legend(handles, labels, loc='outside lower center', ncols=min(4, len(labels)), fontsize=8)
  figure.suptitle('Metrics against the step: every run, a colour per group of seeds')
  return _save(figure, path)


def plot_sweep(root: str | Path,
               rows: Sequence[dict] | None = None,
               metrics: Sequence[str] | None = None) -> list[Path]:
  """Writes `root/plots/final_metrics.png` and `curves.png`; returns the paths written.

  `rows`: one dict per run with at least `name` (its workdir is `root/<name>`), optionally
  `group` (runs of one group differ only by seed and are drawn as mean ± std) and metric
  values; by default the rows of `root/results.csv`. `metrics`: the columns to draw (default:
  the evaluation columns, see `summary_metrics`).
  """
  root = Path(root)
  rows = read_results(root) if rows is None else list(rows)
  if not rows:
    raise errors.InvalidValueError(f'No runs to plot in {root}.')
  if metrics is None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    metrics = summary_metrics(columns, baselines=False)
  written = [
      plot_final_metrics(rows, root / workdir_lib.PLOTS_DIR / 'final_metrics.png', metrics),
      plot_curves(root, rows, root / workdir_lib.PLOTS_DIR / 'curves.png', metrics),
  ]
  return [path for path in written if path is not None]


FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so the module imports anywhere)."""
  flags.DEFINE_string('workdir', None, 'A run: plots its metrics.jsonl into <workdir>/plots/.')
  flags.DEFINE_string('root', None, 'A sweep root (its results.csv) or an ensemble workdir (its '
                      'members): plots them into <root>/plots/.')


def main(argv):
  cli.no_extra_arguments(argv)
  if (FLAGS.workdir is None) == (FLAGS.root is None):
    raise app.UsageError(
        'Pass exactly one of --workdir (a run) and --root (a sweep or an ensemble).')
  paths = plot_run(FLAGS.workdir) if FLAGS.workdir is not None else plot_sweep(FLAGS.root)
  for path in paths:
    print(f'wrote {path}')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
