"""Runs a sweep of training runs, one after another or several at once, and tabulates their results.

    python -m experiments.sweep --config=configs/default.py \
        --sweep=experiments/sweeps/paper_ablation.py --root=runs/paper_ablation --plot
    python -m experiments.sweep ... --evaluate  # Also run cyclegan_jax.evaluate after each run.
    python -m experiments.sweep ... --dry_run   # Only print each run's command (for a cluster).
    python -m experiments.sweep ... --vectorize # Runs that differ in member fields as ensembles
                                                # (on a CPU one per core: --processes).
    python -m experiments.sweep ... --processes=2  # Two runs at once, each on half the cores.

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

import os
from pathlib import Path
import shlex
import sys

from absl import flags

from cyclegan_jax import cli
from cyclegan_jax import plots
from cyclegan_jax import workdir as workdir_lib
from experiments.sweeplib import report
from experiments.sweeplib import runner
from experiments.sweeplib import spec
# For sweep files (`from experiments import sweep`): the helpers that build runs.
from experiments.sweeplib.spec import grid
from experiments.sweeplib.spec import load_sweep_file
from experiments.sweeplib.spec import plan
from experiments.sweeplib.spec import product
from experiments.sweeplib.spec import runs
from experiments.sweeplib.spec import Sweep
from experiments.sweeplib.spec import SweepError

def run_sweep(config: str,
              sweep_path: str,
              root: str | Path,
              *,
              dry_run: bool = False,
              evaluate: bool = False,
              plot: bool = False,
              force: bool = False,
              stream: bool = False,
              vectorize: bool = False,
              processes: int | None = None) -> int:
  """Runs (or with `dry_run` prints) the sweep; its exit status (1: some run failed).

  With `vectorize`, each group trains as `processes` ensembles at once, each pinned to its share
  of the CPU cores (default `runner.default_processes()`: one per core on a Linux CPU, else one).
  Without, `processes` runs train at once, each pinned to its share of the cores (default one).

  Raises SweepError for a sweep that cannot start (bad sweep file, names, root).
  """
  root = Path(root)
  config_file = config.split(':', 1)[0]
  if not Path(config_file).is_file():
    raise SweepError(f'no config file {config_file}')
  sweep = load_sweep_file(sweep_path)
  planned = plan(sweep)
  workdir_lib.check_folder(root, '--root')
  runner.check_root(root, config, sweep_path, planned, force)
  groups = None
  if vectorize:
    base = spec.load_config_file(config)
    base.update_from_flattened_dict(dict(sweep.fixed))
    groups = spec.group_runs(planned, base)
    print(spec.describe_groups(groups), flush=True)

  if processes is None:
    processes = runner.default_processes() if vectorize else 1

  if dry_run:
    launched = 0
    cores = runner.cpu_cores()
    for group in groups or [spec.Group((run,), dict(run.overrides), {}) for run in planned]:
      todo = [
          run for run in group.runs
          if workdir_lib.read_json(run.workdir(root) / workdir_lib.FINAL_FILE) is None
      ]
      split = runner.shares(todo, processes, cores) if todo else []
      training = [
          ('taskset -c ' + ','.join(map(str, cpus)) + ' ' if cpus else '') +
          shlex.join(runner.training_command(config, root, group, share, 'python'))
          for share, cpus in split
      ]
      commands = [' & '.join(training) + ' & wait'] if len(training) > 1 else training
      if evaluate and runner.has_evaluate_module():
        for run in group.runs:
          workdir = run.workdir(root)
          final = workdir_lib.read_json(workdir / workdir_lib.FINAL_FILE)
          if runner.needs_evaluation(workdir, final):
            commands.append(shlex.join(runner.evaluate_command(workdir, 'python')))
      if commands:
        print(' && '.join(commands), flush=True)
        launched += len(todo)
    sys.stderr.write(f'Dry run: {launched} of {len(planned)} runs to launch, from '
                     f'{os.getcwd()}; nothing was run or written.\n')
    return 0

  root.mkdir(parents=True, exist_ok=True)
  runner.write_record(root, config, sweep_path, sweep.fixed, planned)
  print(f'Sweep of {len(planned)} run{"s" * (len(planned) != 1)} in {root} (config {config}).',
        flush=True)
  if evaluate and not runner.has_evaluate_module():
    print('--evaluate: there is no cyclegan_jax.evaluate module here; skipping evaluation.')
  statuses, failures, stopped = runner.execute(config, root, planned, evaluate, stream, groups,
                                                     processes)

  rows = report.collect_results(root, planned, statuses)
  report.write_csv(root / spec.RESULTS_CSV, rows)
  workdir_lib.write_atomic(
      root / spec.RESULTS_MD,
      report.results_markdown(rows, config, sweep_path, sweep.fixed, planned, failures))
  print(f'Results: {root / spec.RESULTS_CSV} and {root / spec.RESULTS_MD}', flush=True)
  if plot:
    for row in rows:
      workdir = root / row['name']
      if row['status'] == 'done' and not (workdir / workdir_lib.PLOTS_DIR / 'losses.png').exists():
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
  flags.DEFINE_bool(
      'vectorize', False, 'Train runs that differ only in ensemble member fields (seed, learning '
      'rate, betas, cycle and identity weights, loss switches) together, as one ensemble '
      'per group (README, "Ensembles"). Results are those of the runs trained one by one (on the '
      'cores their ensemble is given: see --processes).')
  flags.DEFINE_integer(
      'processes', None, 'Train this many runs (with --vectorize: ensembles of a group) at once, '
      'each pinned to its own share of the CPU cores (a run then trains as it would on those cores '
      'alone; unpinned where the OS cannot pin, e.g. macOS). Default: 1; with --vectorize, one per '
      'CPU core when jax here has no GPU or TPU and processes can be pinned (Linux), else 1.',
      lower_bound=1)
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
                stream=FLAGS.stream,
                vectorize=FLAGS.vectorize,
                processes=FLAGS.processes))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
