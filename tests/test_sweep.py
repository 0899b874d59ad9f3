"""experiments/sweep.py: sweep files, run names and commands, results, and real tiny sweeps."""

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest

from cyclegan_jax import cli
from experiments import sweep
from experiments.sweeplib import report
from experiments.sweeplib import runner
from experiments.sweeplib import spec

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The tiny config cut to 2 steps with a checkpoint after each (for the resume check below), and
# to networks that compile in half the time.
SHORT = {
    'num_train_steps': 2,
    'log_every_steps': 1,
    'checkpoint_every_steps': 1,
    'num_sample_images': 0,
    'model.fast_convs': False,
    'model.discriminator': 'n_layers',
    'model.n_layers_D': 1
}


def write_sweep_file(path: pathlib.Path, body: str) -> str:
  path.write_text('from experiments import sweep\n\n' + textwrap.dedent(body), encoding='utf-8')
  return str(path)


def run_cli(*args, timeout=300):
  return subprocess.run([sys.executable, '-m', 'experiments.sweep', *args],
                        cwd=ROOT,
                        capture_output=True,
                        text=True,
                        timeout=timeout,
                        check=False)


def tiny_seeds_sweep_file(path: pathlib.Path) -> str:
  """A sweep of the tiny config cut to SHORT, with seeds 0 and 1."""
  return write_sweep_file(
      path, f"""
      def get_sweep():
        return sweep.Sweep(sweep.product(sweep.runs({{'name': 'tiny'}}), sweep.grid(seed=[0, 1])),
                           fixed={SHORT!r})
      """)


def read_csv(path):
  with open(path, newline='', encoding='utf-8') as file:
    return list(csv.DictReader(file))


def test_two_run_sweep_collects_results_skips_finished_runs_and_resumes_unfinished(tmp_path):
  sweep_file = tiny_seeds_sweep_file(tmp_path / 'seeds.py')
  root = tmp_path / 'sweep'
  args = ('--config=configs/tiny.py', f'--sweep={sweep_file}', f'--root={root}')
  result = run_cli(*args)
  assert result.returncode == 0, result.stdout + result.stderr
  names = ['tiny,seed=0', 'tiny,seed=1']
  for name in names:
    log = (root / name / 'log.txt').read_text()
    assert 'final: step=2' in log and f'--config.seed={name[-1]}' in log
    assert '--config.num_train_steps=2' in log
  rows = read_csv(root / 'results.csv')
  assert [row['name'] for row in rows] == names
  assert [row['seed'] for row in rows] == ['0', '1']
  for row in rows:
    assert row['status'] == 'done' and row['group'] == 'tiny' and row['step'] == '2'
    assert float(row['heldout_mae_AtoB']) > 0 and float(row['loss_cycle_A']) > 0
  assert rows[0]['heldout_mae_AtoB'] != rows[1]['heldout_mae_AtoB']  # Two seeds, two runs.
  markdown = (root / 'results.md').read_text()
  assert all(name in markdown for name in names)
  assert '## Mean ± std over seeds' in markdown and '| tiny | 2 |' in markdown
  record = json.loads((root / 'sweep.json').read_text())
  assert record['config'] == 'configs/tiny.py' and record['sweep'] == sweep_file
  assert [run['name'] for run in record['runs']] == names
  assert record['runs'][1]['overrides'] == {**SHORT, 'seed': 1}
  assert f'Results: {root / "results.csv"}' in result.stdout

  # Everything finished: the rerun skips both runs and trains nothing.
  logs = {name: (root / name / 'log.txt').read_text() for name in names}
  again = run_cli(*args)
  assert again.returncode == 0, again.stdout + again.stderr
  assert again.stdout.count('skipped, finished earlier') == 2
  assert {name: (root / name / 'log.txt').read_text() for name in names} == logs
  assert len(read_csv(root / 'results.csv')) == 2

  # Interrupted after its first checkpoint: the same command resumes it from there.
  unfinished = root / names[1]
  (unfinished / 'final.json').unlink()
  for path in sorted((unfinished / 'checkpoints' / '2').rglob('*'), reverse=True):
    path.rmdir() if path.is_dir() else path.unlink()
  (unfinished / 'checkpoints' / '2').rmdir()
  resumed = run_cli(*args, '--plot')
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert f'[2/2] {names[1]}: resuming' in resumed.stdout
  assert 'skipped, finished earlier' in resumed.stdout  # The first run.
  log = (unfinished / 'log.txt').read_text()
  assert log.count('=== ') == 2 and 'Resumed from step 1' in log
  assert json.loads((unfinished / 'final.json').read_text())['step'] == 2
  assert (root / 'plots' / 'final_metrics.png').stat().st_size > 0
  assert (root / 'plots' / 'curves.png').stat().st_size > 0


def test_failing_runs_are_reported_and_the_sweep_goes_on(tmp_path):
  sweep_file = write_sweep_file(
      tmp_path / 'bad.py', """
      def get_sweep():
        return sweep.runs({'name': 'misspelt', 'lambda_cylce': 5.0},
                          {'name': 'negative', 'lambda_cycle': -1.0})
      """)
  root = tmp_path / 'sweep'
  result = run_cli('--config=configs/tiny.py', f'--sweep={sweep_file}', f'--root={root}')
  assert result.returncode == 1
  for name in ('misspelt', 'negative'):
    assert f'{name}: FAILED' in result.stdout
    assert f'{name}: training exited with status 2; log {root / name / "log.txt"}' in result.stdout
  assert 'no such config field' in result.stdout and 'lambda_cylce' in result.stdout
  assert 'config.lambda_cycle' in (root / 'negative' / 'log.txt').read_text()
  assert [row['status'] for row in read_csv(root / 'results.csv')] == ['failed', 'failed']
  assert '## Failures' in (root / 'results.md').read_text()


def test_dry_run_prints_each_command_and_writes_nothing(tmp_path, capsys):
  root = tmp_path / 'lambda'
  code = sweep.run_sweep('configs/tiny.py',
                         str(ROOT / 'experiments/sweeps/lambda_cycle.py'),
                         root,
                         dry_run=True)
  assert code == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 4
  assert lines[1] == (f'python -m cyclegan_jax.main --config=configs/tiny.py '
                      f'--workdir={root}/lambda_cycle=1.0,seed=1 --config.lambda_cycle=1.0 '
                      '--config.seed=1')
  assert not root.exists()


def test_the_paper_ablation_sweep_file(tmp_path, capsys):
  planned = sweep.plan(sweep.load_sweep_file(ROOT / 'experiments/sweeps/paper_ablation.py'))
  assert len(planned) == 18
  groups = {run.group for run in planned}
  assert groups == {
      'cycle_alone', 'gan_alone', 'gan+forward_cycle', 'gan+backward_cycle', 'cyclegan',
      'cyclegan+identity'
  }
  by_name = {run.name: run.overrides for run in planned}
  assert by_name['cycle_alone,seed=2'] == {
      'num_epochs': 40,
      'num_epochs_decay': 31,
      'log_every_steps': 71,
      'sample_every_steps': 142,
      'checkpoint_every_steps': 497,
      'eval_every_steps': 497,
      'use_gan_G': False,
      'use_gan_F': False,
      'seed': 2
  }
  steps = (40 + 31) * 14  # configs/default.py: 14 steps per epoch.
  for every in ('sample_every_steps', 'checkpoint_every_steps', 'eval_every_steps'):
    assert steps % by_name['cyclegan,seed=0'][every] == 0
  assert by_name['cyclegan+identity,seed=1']['lambda_identity'] == 0.5
  assert by_name['gan_alone,seed=0']['use_cycle_forward'] is False
  # Every override is a field of the default config, of the field's type.
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  config = load_config('default')
  for overrides in by_name.values():
    config.update_from_flattened_dict(overrides)
  code = sweep.run_sweep('configs/default.py',
                         str(ROOT / 'experiments/sweeps/paper_ablation.py'),
                         tmp_path / 'pa',
                         dry_run=True)
  assert code == 0 and len(capsys.readouterr().out.splitlines()) == 18


def test_helpers_build_and_name_runs():
  assert sweep.grid(lambda_cycle=[5, 10.0], seed=[0, 1]) == [{
      'lambda_cycle': 5,
      'seed': 0
  }, {
      'lambda_cycle': 5,
      'seed': 1
  }, {
      'lambda_cycle': 10.0,
      'seed': 0
  }, {
      'lambda_cycle': 10.0,
      'seed': 1
  }]
  assert sweep.grid({'data.crop_size': [32]}, seed=[3]) == [{'data.crop_size': 32, 'seed': 3}]
  combined = sweep.product(sweep.runs({'name': 'base'}, {
      'name': 'idt',
      'lambda_identity': 0.5
  }), sweep.grid(seed=[0, 1]))
  assert combined[3] == {'name': 'idt,seed=1', 'lambda_identity': 0.5, 'seed': 1}
  planned = sweep.plan(
      sweep.Sweep(sweep.grid(lambda_cycle=[5, 10.0], seed=[0, 1]) + [{
          'data.root': '/data/a b.zip'
      }, {}],
                  fixed={'num_epochs': 2}))
  assert [run.name for run in planned] == [
      'lambda_cycle=5,seed=0', 'lambda_cycle=5,seed=1', 'lambda_cycle=10.0,seed=0',
      'lambda_cycle=10.0,seed=1', 'data.root=_data_a_b.zip', 'default'
  ]
  assert [run.group for run in planned][:4] == ['lambda_cycle=5'] * 2 + ['lambda_cycle=10.0'] * 2
  assert planned[0].overrides == {'num_epochs': 2, 'lambda_cycle': 5, 'seed': 0}
  planned = sweep.plan(
      sweep.Sweep(sweep.runs({'name': 'a'}, {
          'name': 'b',
          'seed': 1
      }, {'seed': 2}, {'seed': 3})))
  assert [run.group for run in planned] == ['a', 'b', 'default', 'default']
  command = runner.train_command(
      'configs/tiny.py', pathlib.Path('r/x'), {
          'use_gan_G': False,
          'learning_rate': 1e-4,
          'model.ngf': 8,
          'data.source': 'embedded',
          'init_parts': 'G,F'
      }, 'python')
  assert command == [
      'python', '-m', 'cyclegan_jax.main', '--config=configs/tiny.py', '--workdir=r/x',
      '--config.use_gan_G=False', '--config.learning_rate=0.0001', '--config.model.ngf=8',
      '--config.data.source=embedded', '--config.init_parts=G,F'
  ]


@pytest.mark.parametrize('runs, message', [
    ([{
        'name': 'a'
    }, {
        'name': 'a'
    }], "both named 'a'"),
    ([{
        'name': 'run'
    }, {
        'name': 'RUN'
    }], "both named 'RUN'"),
    ([{
        'seed': 0
    }, {
        'seed': 0
    }], "both named 'seed=0'"),
    ([{
        'name': 'a/b'
    }], 'not filesystem-safe'),
    ([{
        'name': 'plots'
    }], 'reserved'),
    ([{
        'lambda cycle': 1
    }], 'not a config field name'),
    ([{
        'lambda_cycle': None
    }], 'expected a bool, number or string'),
    ([{
        'name': 'x' * 201
    }], 'longer than 200'),
    ([], 'no runs'),
])
def test_bad_runs_are_rejected_before_anything_runs(runs, message):
  with pytest.raises(sweep.SweepError, match=message):
    sweep.plan(sweep.Sweep(runs))


def test_bad_sweep_files_are_clear_errors(tmp_path):
  no_function = write_sweep_file(tmp_path / 'empty.py', 'RUNS = []\n')
  with pytest.raises(sweep.SweepError, match='defines no get_sweep'):
    sweep.run_sweep('configs/tiny.py', no_function, tmp_path / 'root', dry_run=True)
  broken = write_sweep_file(tmp_path / 'broken.py', 'def get_sweep(:\n')
  with pytest.raises(sweep.SweepError, match='failed to load: SyntaxError'):
    sweep.load_sweep_file(broken)
  wrong = write_sweep_file(tmp_path / 'wrong.py', 'def get_sweep():\n  return 3\n')
  with pytest.raises(sweep.SweepError, match='returned a int'):
    sweep.load_sweep_file(wrong)
  with pytest.raises(sweep.SweepError, match='set by two parts'):
    sweep.product([{'seed': 0}], [{'seed': 1}])
  with pytest.raises(sweep.SweepError, match='non-empty list'):
    sweep.grid(seed=3)
  with pytest.raises(sweep.SweepError, match='no config file'):
    sweep.run_sweep('configs/nope.py', no_function, tmp_path / 'root', dry_run=True)
  assert not (tmp_path / 'root').exists()
  # On the command line: one line on stderr, exit status 2.
  result = run_cli('--config=configs/tiny.py', f'--sweep={no_function}',
                   f'--root={tmp_path / "root"}')
  assert result.returncode == 2
  assert result.stderr.startswith('Error: sweep file') and 'get_sweep' in result.stderr


def test_a_root_made_for_another_sweep_is_refused_unless_forced(tmp_path):
  lambda_file = str(ROOT / 'experiments/sweeps/lambda_cycle.py')
  planned = sweep.plan(sweep.load_sweep_file(lambda_file))
  root = tmp_path / 'root'
  root.mkdir()
  runner.write_record(root, 'configs/tiny.py', lambda_file, {}, planned)
  assert sweep.run_sweep('configs/tiny.py', lambda_file, root, dry_run=True) == 0
  with pytest.raises(sweep.SweepError, match='made for another sweep.*config configs/tiny.py'):
    sweep.run_sweep('configs/default.py', lambda_file, root, dry_run=True)
  assert sweep.run_sweep('configs/default.py', lambda_file, root, dry_run=True, force=True) == 0
  # The same names with other overrides: another sweep too.
  other = write_sweep_file(
      tmp_path / 'other.py', """
      def get_sweep():
        return sweep.Sweep(sweep.grid(lambda_cycle=[1.0], seed=[0]), fixed={'num_epochs': 3})
      """)
  with pytest.raises(sweep.SweepError, match='run lambda_cycle=1.0,seed=0 with overrides'):
    runner.check_root(root,
                      'configs/tiny.py',
                      lambda_file,
                      sweep.plan(sweep.load_sweep_file(other)),
                      force=False)
  # A folder of something else.
  (tmp_path / 'busy').mkdir()
  (tmp_path / 'busy' / 'notes.txt').write_text('mine')
  with pytest.raises(sweep.SweepError, match='not a sweep root'):
    sweep.run_sweep('configs/tiny.py', lambda_file, tmp_path / 'busy', dry_run=True)


def test_results_average_seeds_and_keep_the_latest_evaluation(tmp_path):
  planned = sweep.plan(sweep.Sweep(sweep.grid(lambda_cycle=[5.0, 10.0], seed=[0, 1])))
  values = {
      'lambda_cycle=5.0,seed=0': 1.0,
      'lambda_cycle=5.0,seed=1': 3.0,
      'lambda_cycle=10.0,seed=0': 7.0
  }
  for name, value in values.items():
    workdir = tmp_path / name
    (workdir / 'eval').mkdir(parents=True)
    (workdir / 'final.json').write_text(
        json.dumps({
            'step': 10,
            'wall_time_s': 1.5,
            'loss_cycle_A': 0.5,
            'heldout_mae_AtoB': value
        }))
    for step, fid in ((5, 99.0), (10, value * 10)):
      (workdir / 'eval' / f'step_{step:08d}.json').write_text(
          json.dumps({
              'step': step,
              'heldout_mae_AtoB': value,
              'fid_AtoB': fid,
              'num_test_A': 4
          }))
  rows = report.collect_results(tmp_path, planned)
  assert [row['status'] for row in rows] == ['done', 'done', 'done', 'pending']
  assert rows[1]['eval_step'] == 10 and rows[1]['eval_fid_AtoB'] == 30.0
  markdown = report.results_markdown(rows, 'configs/tiny.py', 'sweep.py', {}, planned)
  lines = markdown.splitlines()
  header = next(line for line in lines if line.startswith('| group |'))
  assert header == '| group | runs | heldout_mae_AtoB | eval_fid_AtoB |'
  assert '| lambda_cycle=5.0 | 2 | 2 ± 1.414 | 20 ± 14.14 |' in lines
  assert '| lambda_cycle=10.0 | 1 | 7 | 70 |' in lines
  assert '| lambda_cycle=10.0,seed=1 | pending | 10.0 | 1 |  |  |  |  |' in lines
  report.write_csv(tmp_path / 'results.csv', rows)
  read = read_csv(tmp_path / 'results.csv')
  assert read[0]['heldout_mae_AtoB'] == '1.0' and read[3]['heldout_mae_AtoB'] == ''


def test_vectorized_sweep_trains_compatible_runs_as_one_ensemble(tmp_path, finished_tiny_run):
  sweep_file = write_sweep_file(
      tmp_path / 'vectorized.py', f"""
      def get_sweep():
        runs = sweep.product(sweep.runs({{'name': 'tiny'}}), sweep.grid(seed=[0, 1]))
        return sweep.Sweep(runs + sweep.runs({{'name': 'small_d', 'model.ndf': 4}}),
                           fixed={SHORT!r})
      """)
  root = tmp_path / 'sweep'
  args = ('--config=configs/tiny.py', f'--sweep={sweep_file}', f'--root={root}', '--vectorize',
          '--processes=1')
  dry = run_cli(*args, '--dry_run')
  assert dry.returncode == 0, dry.stdout + dry.stderr
  assert '3 runs in 2 ensembles' in dry.stdout and 'they differ in seed' in dry.stdout
  assert '--config.ensemble.seed=0,1 --config.ensemble.names=tiny,seed=0:tiny,seed=1' in dry.stdout
  assert not root.exists()

  result = run_cli(*args, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  assert '2 runs as one ensemble' in result.stdout
  for name in ('tiny,seed=0', 'tiny,seed=1'):
    assert '--config.ensemble.names=tiny,seed=0:tiny,seed=1' in (root / name /
                                                                 'log.txt').read_text()
  rows = read_csv(root / 'results.csv')
  assert [row['name'] for row in rows] == ['tiny,seed=0', 'tiny,seed=1', 'small_d']
  assert [row['status'] for row in rows] == ['done'] * 3
  assert [row['seed'] for row in rows] == ['0', '1', '']
  # A member's run folder holds what a run trained alone holds: the same results columns.
  single_final = set(json.loads((finished_tiny_run[0] / 'final.json').read_text()))
  for row in rows:
    assert single_final <= set(k for k, v in row.items() if v != ''), row['name']
    assert row['eval_step'] == '2'
  assert rows[0]['heldout_mae_AtoB'] != rows[1]['heldout_mae_AtoB']
  saved = json.loads((root / 'tiny,seed=1' / 'config.json').read_text())
  assert saved['seed'] == 1 and saved['num_train_steps'] == 2


def test_groups_are_dealt_over_the_cores():
  runs = [spec.PlannedRun(f'r{k}', '', {'seed': k}, {'seed': k}) for k in range(5)]
  split = runner.shares(runs, 2, [0, 1])
  # The second share starts half way through its runs (the compilation cache then serves each
  # process what the other compiled first).
  assert [[run.name for run in share] for share, _ in split] == [['r0', 'r2', 'r4'], ['r3', 'r1']]
  assert [cpus for _, cpus in split] == [(0,), (1,)]
  dealt = runner.shares([spec.PlannedRun(f'r{k}', '', {}, {}) for k in range(12)], 3, [0, 1, 2])
  assert [[run.name for run in share] for share, _ in dealt] == [['r0', 'r3', 'r6', 'r9'],
                                                                  ['r4', 'r7', 'r10', 'r1'],
                                                                  ['r8', 'r11', 'r2', 'r5']]
  # Never more shares than runs or cores; 16 cores over 4 shares: 4 each, in order.
  assert [cpus for _, cpus in runner.shares(runs[:2], 8, [0, 1, 2])] == [(0,), (1, 2)]
  assert [len(cpus) for _, cpus in runner.shares(runs[:4], 4, list(range(16)))] == [4] * 4
  assert runner.shares(runs, 1, [0, 1]) == [(runs, None)]
  assert runner.shares(runs, 4, [3]) == [(runs, None)]


def test_the_default_split_follows_the_platform(monkeypatch):
  monkeypatch.setattr(runner, 'cpu_cores', lambda: [0, 1, 2])
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert runner.default_processes() == 3
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda,cpu')
  assert runner.default_processes() == 1
  monkeypatch.delenv('JAX_PLATFORMS')
  # This machine's jax has no GPU or TPU plugin (the test suite runs on CPU).
  assert not runner.accelerator_expected() and runner.default_processes() == 3
  # Where processes cannot be held to cores (macOS), one ensemble by default, and explicit shares
  # run unpinned.
  monkeypatch.delattr(os, 'sched_setaffinity', raising=False)
  assert runner.default_processes() == 1
  runs = [spec.PlannedRun(f'r{k}', '', {}, {}) for k in range(4)]
  assert [cpus for _, cpus in runner.shares(runs, 2, [0, 1, 2])] == [None, None]


def test_runs_at_once_get_near_equal_shares_of_the_cores_in_order():
  assert runner.slots(2, [0, 1], 5) == [(0,), (1,)]
  assert runner.slots(4, [0, 1, 2], 9) == [(0,), (1,), (2,)]
  assert runner.slots(2, list(range(5)), 9) == [(0, 1), (2, 3, 4)]
  assert runner.slots(3, [0, 1], 1) == [None]  # One run: on all cores, unpinned.
  assert runner.slots(1, [0, 1], 4) == [None]


def test_runs_at_once_start_in_order_on_the_free_cores_and_none_after_a_stop():
  ran = []

  def run_group(group, prefix, cpus):
    del group
    ran.append((prefix, cpus))
    time.sleep(0.05 if cpus == (0,) else 0.12)

  tasks = [(None, f'run{k}') for k in range(5)]
  with runner._Stop() as stop:  # pylint: disable=protected-access
    runner._run_at_once(tasks, [(0,), (1,)], run_group, stop)  # pylint: disable=protected-access
  # The first two on the cores in order; the rest each on whichever core came free.
  assert sorted(ran[:2]) == [('run0', (0,)), ('run1', (1,))]
  assert sorted(prefix for prefix, _ in ran[2:]) == ['run2', 'run3', 'run4']
  assert {cpus for _, cpus in ran[2:]} <= {(0,), (1,)}

  stopped = []

  def stop_at_first(group, prefix, cpus):
    del group, cpus
    stopped.append(prefix)
    stop.requested = True

  with runner._Stop() as stop:  # pylint: disable=protected-access
    runner._run_at_once(  # pylint: disable=protected-access
        tasks, [(0,), (1,)], stop_at_first, stop)
  assert set(stopped) <= {'run0', 'run1'} and 'run2' not in stopped


def test_runs_reporting_at_once_print_whole_lines(tmp_path, monkeypatch):
  """Two runs at once report from their threads; print() wrote a line and its end apart, and the
  fresh-clone CI once got '[1/2] ...: training, ... cores 0[2/2] ...' on one line."""
  writes = []

  class Recorder:

    def write(self, text):
      writes.append(text)
      time.sleep(0.001)  # Lets the other thread in between two writes of one line.

    def flush(self):
      pass

  monkeypatch.setattr(sys, 'stdout', Recorder())
  for name in ('done', 'broken'):
    (tmp_path / name).mkdir()
  (tmp_path / 'done' / 'final.json').write_text(json.dumps({'heldout_mae_AtoB': 17.5}))
  (tmp_path / 'broken' / 'log.txt').write_text('step 1\nValueError: bad value\n')
  statuses, failures = {}, []

  def run_group(group, prefix, cpus):
    del group, cpus
    for _ in range(20):
      runner._record_status(  # pylint: disable=protected-access
          types.SimpleNamespace(name=prefix), tmp_path / prefix, tmp_path / prefix / 'log.txt',
          1, time.perf_counter(), lambda run: f'[{run.name}]', statuses, failures, stop)

  with runner._Stop() as stop:  # pylint: disable=protected-access
    runner._run_at_once(  # pylint: disable=protected-access
        [(None, 'done'), (None, 'broken')], [(0,), (1,)], run_group, stop)
  assert all(text.endswith('\n') for text in writes)
  lines = ''.join(writes).splitlines()
  assert len(lines) == 20 * (1 + 3) and statuses == {'done': 'done', 'broken': 'failed'}
  assert sum(line.startswith('[done] done in ') for line in lines) == 20
  # A failure's last log lines follow it.
  for k, line in enumerate(lines):
    if line.startswith('[broken] FAILED (exit status 1)'):
      assert lines[k + 1:k + 3] == ['    step 1', '    ValueError: bad value']


@pytest.mark.skipif(len(runner.cpu_cores()) < 2, reason='needs two CPU cores')
def test_runs_and_ensembles_on_their_own_cores_train_as_alone_on_them(tmp_path):
  sweep_file = tiny_seeds_sweep_file(tmp_path / 'split.py')
  root = tmp_path / 'sweep'
  cores = runner.cpu_cores()[:2]
  args = ('--config=configs/tiny.py', f'--sweep={sweep_file}', f'--root={root}', '--vectorize',
          '--processes=2')
  dry = run_cli(*args, '--dry_run')
  assert dry.returncode == 0, dry.stdout + dry.stderr
  assert f'taskset -c {cores[0]} python -m cyclegan_jax.main' in dry.stdout
  assert ' & wait' in dry.stdout

  # Both ensembles train at once in the same root (each holds only its members' folders).
  result = run_cli(*args, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'as 2 ensembles at once' in result.stdout
  rows = read_csv(root / 'results.csv')
  assert [row['status'] for row in rows] == ['done', 'done']
  log = (root / 'tiny,seed=1' / 'log.txt').read_text()
  assert f'--config.ensemble.names=tiny,seed=1 (CPU cores {cores[1]})' in log
  assert 'tiny,seed=0' not in log

  # The member on the first core equals the run of its config trained alone on that core.
  alone = tmp_path / 'alone'
  command = runner.train_command('configs/tiny.py', alone, {**SHORT, 'seed': 0})
  subprocess.run(runner.pinned(command, cores[:1]), cwd=ROOT, check=True, capture_output=True,
                 timeout=300)
  member = json.loads((root / 'tiny,seed=0' / 'final.json').read_text())
  single = json.loads((alone / 'final.json').read_text())
  timing = {'wall_time_s', 'steps_per_s', 'name'}
  assert {k: v for k, v in member.items() if k not in timing} == {
      k: v for k, v in single.items() if k not in timing
  }

  # Without --vectorize: both runs train at once, each on its own core, each as run alone there.
  at_once = tmp_path / 'at_once'
  result = run_cli('--config=configs/tiny.py', f'--sweep={sweep_file}', f'--root={at_once}',
                   '--processes=2', timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  lines = result.stdout.splitlines()
  started = [i for i, line in enumerate(lines) if ': training, log' in line]
  finished = [i for i, line in enumerate(lines) if ' done in ' in line]
  assert len(started) == 2 and max(started) < min(finished), result.stdout
  # The first runs go to the shares of the cores in order (whichever prints first).
  for line in (lines[i] for i in started):
    assert line.endswith(f'on CPU cores {cores[0] if line.startswith("[1/2]") else cores[1]}')
  assert f'(CPU cores {cores[0]})' in (at_once / 'tiny,seed=0' / 'log.txt').read_text()
  assert [row['status'] for row in read_csv(at_once / 'results.csv')] == ['done', 'done']
  run = json.loads((at_once / 'tiny,seed=0' / 'final.json').read_text())
  assert {k: v for k, v in run.items() if k not in timing} == {
      k: v for k, v in single.items() if k not in timing
  }


@pytest.mark.skipif(len(runner.cpu_cores()) < 2, reason='needs two CPU cores')
def test_ctrl_c_stops_every_run_training_at_once_each_with_a_checkpoint(tmp_path):
  sweep_file = write_sweep_file(
      tmp_path / 'long.py', f"""
      def get_sweep():
        return sweep.Sweep(sweep.product(sweep.runs({{'name': 'tiny'}}), sweep.grid(seed=[0, 1])),
                           fixed={{**{SHORT!r}, 'num_train_steps': 100000}})
      """)
  root = tmp_path / 'sweep'
  process = subprocess.Popen([
      sys.executable, '-m', 'experiments.sweep', '--config=configs/tiny.py',
      f'--sweep={sweep_file}', f'--root={root}', '--processes=2'
  ],
                             cwd=ROOT,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT,
                             text=True)
  try:
    deadline = time.monotonic() + 300
    checkpoints = [root / f'tiny,seed={seed}' / 'checkpoints' for seed in (0, 1)]
    while not all(folder.is_dir() and any(folder.iterdir()) for folder in checkpoints):
      assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
      time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  assert process.returncode == 1, output
  assert output.count('stopped before its last step; rerun to resume it') == 2, output
  assert [row['status'] for row in read_csv(root / 'results.csv')] == ['unfinished'] * 2
  for seed in (0, 1):
    log = (root / f'tiny,seed={seed}' / 'log.txt').read_text()
    assert 'saving a checkpoint and stopping after this step' in log, log[-2000:]
    assert 'Run stopped early by a signal' in log, log[-2000:]


@pytest.mark.skipif(len(runner.cpu_cores()) < 2, reason='needs two CPU cores')
def test_a_program_a_one_core_process_compiled_computes_from_the_cache_as_compiled_here(tmp_path):
  """Split sweeps fill the compilation cache from processes pinned to one core, and jax's cache
  key does not name the cores: a run on all cores that loads such a program must compute what
  the program it compiles itself computes."""
  env = {key: value for key, value in os.environ.items() if key != 'JAX_COMPILATION_CACHE_DIR'}
  env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', JAX_LOG_COMPILES='1')

  def train(name, cache, cpus=None):
    command = [
        sys.executable, '-m', 'cyclegan_jax.main', '--config=configs/default.py',
        f'--workdir={tmp_path / name}', '--config.num_train_steps=6', '--config.log_every_steps=3',
        '--config.num_sample_images=0'
    ]
    result = subprocess.run(runner.pinned(command, cpus) if cpus else command,
                            cwd=ROOT,
                            env={**env, cli.COMPILATION_CACHE_ENV: str(tmp_path / cache)},
                            capture_output=True,
                            text=True,
                            timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((tmp_path / name / 'final.json').read_text())
    timing = {'wall_time_s', 'steps_per_s'}
    return result.stderr, {k: v for k, v in final.items() if k not in timing}

  train('pinned', 'shared', runner.cpu_cores()[:1])
  log, loaded = train('loaded', 'shared')
  assert "Persistent compilation cache hit for 'jit_train_step'" in log
  _, compiled = train('compiled', 'own')
  assert loaded == compiled
