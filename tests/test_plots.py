"""cyclegan_jax/plots.py on synthetic metrics files (no training)."""

import csv
import json
import logging
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from cyclegan_jax import errors
from cyclegan_jax import plots

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOSSES = ('loss/gan_G', 'loss/gan_F', 'loss/cycle_A', 'loss/cycle_B', 'loss/idt_G', 'loss/idt_F',
          'loss/D_X', 'loss/D_Y', 'loss/generators', 'score/D_X/real', 'score/D_Y/fake')


def write_run(workdir: pathlib.Path,
              seed: int = 0,
              steps=range(10, 101, 10),
              eval_every: int = 50) -> list[dict]:
  """A metrics.jsonl as a run writes it: losses per log step, eval/ metrics every eval_every."""
  rng = np.random.default_rng(seed)
  records = []
  for step in steps:
    records.append({
        'step': step,
        **{
            name: float(rng.uniform(0, 2)) for name in LOSSES
        }, 'lr': 2e-4,
        'steps_per_s': 12.0
    })
    if step % eval_every == 0:
      records.append({
          'step': step,
          'eval/heldout_mae_AtoB': 40.0 - step / 10 + seed,
          'eval/heldout_mae_BtoA': 41.0 - step / 10,
          'eval/baseline_mae_AtoB': 46.2,
          'eval/cycle_mae_A': 5.0,
          'eval/num_test_A': 16
      })
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  return records


def assert_png(path: pathlib.Path):
  with Image.open(path) as image:
    assert image.format == 'PNG' and image.width > 300 and image.height > 200


def test_plot_run_draws_losses_and_metrics(tmp_path):
  write_run(tmp_path)
  with open(tmp_path / 'metrics.jsonl', 'a') as file:  # Resumed from step 50: 60 is logged again.
    file.write(json.dumps({'step': 60, 'loss/gan_G': 9.0}) + '\n')
  (tmp_path / 'eval').mkdir()
  (tmp_path / 'eval' / 'step_00000100.json').write_text(
      json.dumps({
          'step': 100,
          'heldout_mae_AtoB': 30.0,
          'fid_AtoB': 80.0
      }))
  series = plots.run_series(tmp_path)
  assert series['loss/gan_G'][60] == 9.0  # The later line wins.
  assert series['eval/fid_AtoB'] == {100: 80.0}
  assert sorted(series['eval/heldout_mae_AtoB']) == [50, 100]
  paths = plots.plot_run(tmp_path)
  assert paths == [tmp_path / 'plots' / 'losses.png', tmp_path / 'plots' / 'metrics.png']
  for path in paths:
    assert_png(path)
  assert not list((tmp_path / 'plots').glob('*.tmp*'))


def test_metric_panels_pair_directions_and_baselines():
  assert plots.metric_family('eval/heldout_mae_AtoB') == 'heldout_mae'
  assert plots.metric_family('eval/baseline_mae_BtoA') == 'heldout_mae'
  assert plots.metric_family('heldout/heldout_psnr_AtoB') == 'heldout_psnr'
  assert plots.metric_family('eval/cycle_mae_A') == 'cycle_mae'
  assert plots.is_metric('eval/fid_AtoB') and not plots.is_metric('eval/num_test_A')
  assert not plots.is_metric('loss/D_X') and not plots.is_metric('steps_per_s')
  assert plots.summary_metrics([
      'step', 'loss_D_X', 'cycle_mae_A', 'heldout_mae_AtoB', 'eval_heldout_mae_AtoB',
      'eval_fid_AtoB', 'eval_kid_std_AtoB', 'baseline_mae_AtoB'
  ]) == ['heldout_mae_AtoB', 'eval_fid_AtoB', 'cycle_mae_A', 'baseline_mae_AtoB']


def test_a_run_without_metrics_gets_only_the_loss_plot(tmp_path):
  (tmp_path /
   'metrics.jsonl').write_text(json.dumps({
       'step': 2,
       'loss/gan_G': 1.0,
       'loss/D_Y': 0.5
   }) + '\n')
  assert plots.plot_run(tmp_path) == [tmp_path / 'plots' / 'losses.png']
  assert not (tmp_path / 'plots' / 'metrics.png').exists()


def test_a_truncated_last_line_is_skipped_with_a_warning(tmp_path, caplog):
  write_run(tmp_path)
  with open(tmp_path / 'metrics.jsonl', 'a') as file:
    file.write('{"step": 110, "loss/gan_G": 0.5, "loss/ga')  # Killed while writing.
  with caplog.at_level(logging.WARNING):
    series = plots.load_metrics(tmp_path / 'metrics.jsonl')
  assert 'truncated last line' in caplog.text and 'metrics.jsonl:13' in caplog.text
  assert max(series['loss/gan_G']) == 100
  # Then resumed: its first record was appended to the truncated one.
  with open(tmp_path / 'metrics.jsonl', 'a') as file:
    file.write(json.dumps({'step': 110, 'loss/gan_G': 0.25}) + '\n')
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    series = plots.load_metrics(tmp_path)
  assert 'truncated record' in caplog.text
  assert series['loss/gan_G'][110] == 0.25


def test_missing_empty_or_corrupt_metrics_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='No metrics.jsonl at .*metrics.jsonl'):
    plots.plot_run(tmp_path)
  (tmp_path / 'metrics.jsonl').write_text('\n')
  with pytest.raises(plots.MetricsError, match='holds no metrics records'):
    plots.plot_run(tmp_path)
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1, "lr": 1}\nnot json\n{"step": 2, "lr": 1}\n')
  with pytest.raises(plots.MetricsError, match=r'metrics.jsonl:2: not a JSON object'):
    plots.plot_run(tmp_path)
  (tmp_path / 'metrics.jsonl').write_text('{"lr": 1}\n{"step": 2, "lr": 1}\n')
  with pytest.raises(ValueError, match='integer "step"'):
    plots.load_metrics(tmp_path)
  assert not (tmp_path / 'plots').exists()


def test_plot_sweep_groups_seeds_and_overlays_curves(tmp_path):
  rows = []
  for group in ('lambda_cycle=5', 'lambda_cycle=10'):
    for seed in range(3):
      name = f'{group},seed={seed}'
      write_run(tmp_path / name, seed=seed)
      rows.append({
          'name': name,
          'group': group,
          'status': 'done',
          'seed': seed,
          'heldout_mae_AtoB': 30.0 + seed,
          'baseline_mae_AtoB': 46.2,
          'eval_fid_AtoB': 80.0 - seed,
          'loss_D_X': 0.2
      })
  rows.append({'name': 'failed_run', 'group': 'failed_run', 'status': 'failed'})
  paths = plots.plot_sweep(tmp_path, rows)
  assert paths == [tmp_path / 'plots' / 'final_metrics.png', tmp_path / 'plots' / 'curves.png']
  for path in paths:
    assert_png(path)

  # The same from results.csv, on the command line.
  columns = list(dict.fromkeys(key for row in rows for key in row))
  with open(tmp_path / 'results.csv', 'w', newline='') as file:
    writer = csv.DictWriter(file, columns)
    writer.writeheader()
    writer.writerows(rows)
  for path in paths:
    path.unlink()
  result = subprocess.run([sys.executable, '-m', 'cyclegan_jax.plots', f'--root={tmp_path}'],
                          cwd=ROOT,
                          capture_output=True,
                          text=True,
                          timeout=120,
                          check=False)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [f'wrote {path}' for path in paths]
  assert all(path.exists() for path in paths)

  missing = subprocess.run(
      [sys.executable, '-m', 'cyclegan_jax.plots', f'--workdir={tmp_path / "nowhere"}'],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
      check=False)
  assert missing.returncode == 2 and missing.stderr.startswith('Error: No metrics.jsonl')


def test_an_ensemble_workdir_plots_its_members_grouped_by_seed(tmp_path):
  """Without a results.csv, --root reads the runs in its subfolders (an ensemble's members): their
  final.json and latest evaluation, members that differ only by seed as one group."""
  names = ('lambda_cycle=5.0,seed=0', 'lambda_cycle=5.0,seed=1', 'seed=2,lambda_cycle=10.0',
           'custom')
  for index, name in enumerate(names):
    run = tmp_path / name
    write_run(run, seed=index)
    (run / 'config.json').write_text('{}')
    (run / 'final.json').write_text(json.dumps({'step': 100, 'loss_D_X': 0.1 * index}))
    (run / 'eval').mkdir()
    for step in (50, 100):
      (run / 'eval' / f'step_{step:08d}.json').write_text(
          json.dumps({'step': step, 'heldout_mae_AtoB': step + index}))
  (tmp_path / 'not_a_run').mkdir()
  rows = {row['name']: row for row in plots.read_results(tmp_path)}
  assert sorted(rows) == sorted(names)
  assert [rows[name]['group'] for name in names] == [
      'lambda_cycle=5.0', 'lambda_cycle=5.0', 'lambda_cycle=10.0', 'custom'
  ]
  assert rows['custom']['eval_heldout_mae_AtoB'] == 103 and rows['custom']['eval_step'] == 100
  assert rows['lambda_cycle=5.0,seed=1']['loss_D_X'] == 0.1
  for path in plots.plot_sweep(tmp_path):
    assert_png(path)
  with pytest.raises(errors.PathNotFoundError, match='no runs in its subfolders'):
    plots.read_results(tmp_path / 'not_a_run')
