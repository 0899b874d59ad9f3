"""End-to-end runs of `python -m cyclegan_jax.main` with the tiny config."""

import json
import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
from PIL import Image
import pytest

from conftest import assert_one_line_user_error
from conftest import make_jpeg_dataset
from conftest import simulated_devices_env
from cyclegan_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def command(workdir, *overrides):
  return [sys.executable, '-m', 'cyclegan_jax.main', '--config=configs/tiny.py',
          f'--workdir={workdir}', *overrides]


def final_line(stdout: str) -> dict[str, str]:
  lines = [line for line in stdout.splitlines() if line.startswith('final: ')]
  assert len(lines) == 1, stdout
  return dict(pair.split('=', 1) for pair in lines[0][len('final: '):].split())


def test_smoke_run_writes_checkpoints_summaries_and_samples(tmp_path):
  workdir = tmp_path / 'run'
  result = subprocess.run(command(workdir, '--config.plot_at_end=True'), cwd=ROOT,
                          capture_output=True, text=True,
                          timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]

  final = final_line(result.stdout)
  assert final['step'] == '6'
  for key in ('wall_time_s', 'steps_per_s', 'loss_cycle_A', 'loss_D_Y', 'heldout_mae_AtoB',
              'baseline_mae_AtoB', 'heldout_mae_BtoA', 'baseline_mae_BtoA', 'heldout_psnr_AtoB'):
    assert np.isfinite(float(final[key])), key
  assert re.search(r'step 6/6 .* steps/s {2}ETA', result.stderr)
  assert 'checkpoint_manager.py' not in result.stderr  # Orbax's per-save INFO lines are muted.

  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps == [3, 6]
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['model']['ngf'] == 8 and saved['num_train_steps'] == 6
  assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  # The same numbers, machine-readable without TensorBoard: a JSON line per log step, and the
  # final line as final.json.
  logged = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [entry['step'] for entry in logged if 'loss/cycle_A' in entry] == [2, 4, 6]
  assert any('eval/heldout_mae_AtoB' in entry for entry in logged)
  assert json.loads((workdir / 'eval' / 'step_00000006.json').read_text())['step'] == 6
  assert sorted(p.name for p in (workdir / 'plots').glob('*.png')) == ['losses.png', 'metrics.png']
  final_json = json.loads((workdir / 'final.json').read_text())
  assert set(final_json) == set(final)
  assert final_json['heldout_mae_AtoB'] == pytest.approx(float(final['heldout_mae_AtoB']), rel=1e-5)
  grids = sorted((workdir / 'samples').glob('*.png'))
  assert [g.name for g in grids] == ['step_00000003.png', 'step_00000006.png']
  grid = np.asarray(Image.open(grids[-1]))
  assert grid.shape == (2 * 32, 6 * 32, 3)  # 2 samples; A, G(A), F(G(A)), B, F(B), G(F(B)).

  # Rerunning a finished run resumes at its end and trains no further.
  again = subprocess.run(command(workdir), cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=False)
  assert again.returncode == 0, again.stderr[-3000:]
  assert final_line(again.stdout)['step'] == '6'
  assert 'Resumed from step 6' in again.stderr


def start(workdir, *overrides, env=None):
  """A training process whose stderr lines are collected (and read) in the background."""
  process = subprocess.Popen(command(workdir, *overrides), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
  lines = []
  reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
  reader.start()
  return process, lines, reader


def wait_for(lines, pattern, process, timeout=300):
  deadline = time.monotonic() + timeout
  while not any(re.search(pattern, line) for line in list(lines)):
    assert process.poll() is None, ''.join(lines)[-3000:]
    assert time.monotonic() < deadline, ''.join(lines)[-3000:]
    time.sleep(0.1)


LONG_RUN = ('--config.num_train_steps=100000', '--config.checkpoint_every_steps=100000',
            '--config.log_every_steps=1', '--config.sample_every_steps=100000')


def test_a_second_writer_is_refused_sigterm_checkpoints_and_the_same_command_resumes(tmp_path):
  workdir = tmp_path / 'run'
  process, lines, reader = start(workdir, *LONG_RUN)
  try:
    wait_for(lines, r'step 3/100000', process)
    # The same command again while the run lives: refused, one line, nothing written.
    config_before = (workdir / 'config.json').stat()
    second = subprocess.run(command(workdir, *LONG_RUN), cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=False)
    assert second.returncode == 2, second.stderr[-3000:]
    assert 'Traceback' not in second.stderr
    errors = [line for line in second.stderr.splitlines() if line.startswith('Error:')]
    assert len(errors) == 1, second.stderr[-3000:]
    assert f'in use by another run: process {process.pid} on host' in errors[0]
    assert (workdir / 'config.json').stat().st_mtime_ns == config_before.st_mtime_ns
    assert process.poll() is None  # The first run goes on.
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=300)
    reader.join(timeout=60)
  finally:
    if process.poll() is None:
      process.kill()
  stderr = ''.join(lines)
  assert process.returncode == 0, stderr[-3000:]
  stopped_at = int(final_line(stdout)['step'])
  assert stopped_at >= 3
  assert (workdir / 'checkpoints' / str(stopped_at)).is_dir()
  assert not (workdir / 'run.lock').exists()

  resumed = subprocess.run(
      command(workdir, *LONG_RUN[1:], f'--config.num_train_steps={stopped_at + 2}'), cwd=ROOT,
      capture_output=True, text=True, timeout=600, check=False)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resumed from step {stopped_at}' in resumed.stderr
  assert final_line(resumed.stdout)['step'] == str(stopped_at + 2)


def compilation_cache_env(cache):
  """The environment of a command that keeps compiled programs in `cache` (its own cache, not
  the test session's), whatever their compile time (jax's threshold is 1 s, which a fast machine
  may beat for the tiny config), and logs each load from it."""
  env = {key: value for key, value in os.environ.items() if key != 'JAX_COMPILATION_CACHE_DIR'}
  return {**env, cli.COMPILATION_CACHE_ENV: str(cache), 'JAX_LOG_COMPILES': '1',
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}


def test_a_killed_run_resumes_despite_its_lock_with_its_train_step_from_the_cache(tmp_path):
  """The lock of a kill -9'd run does not block the rerun, and the rerun loads its train step
  from the compilation cache (`cli.use_compilation_cache`) instead of compiling it again."""
  workdir, cache = tmp_path / 'run', tmp_path / 'cache'
  env = compilation_cache_env(cache)
  overrides = (*LONG_RUN[:1], '--config.checkpoint_every_steps=2', *LONG_RUN[2:])
  process, lines, reader = start(workdir, *overrides, env=env)
  try:
    wait_for(lines, r'step 5/100000', process)  # The step-4 checkpoint is written by now.
  finally:
    process.kill()  # kill -9: no clean-up.
    process.wait()
    reader.join(timeout=60)
  assert (workdir / 'run.lock').exists()
  assert "Persistent compilation cache hit for 'jit_train_step'" not in ''.join(lines)
  resumed = subprocess.run(command(workdir, *overrides[1:], '--config.num_train_steps=6'),
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                           check=False)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert re.search(r'Resumed from step [24]\b', resumed.stderr)
  assert final_line(resumed.stdout)['step'] == '6'
  assert "Persistent compilation cache hit for 'jit_train_step'" in resumed.stderr
  machine, = cache.iterdir()  # One folder for this kind of machine.
  assert machine.name == cli.compilation_cache_dir({cli.COMPILATION_CACHE_ENV: '/x'}).name
  assert len(list(machine.glob('jit_train_step-*-cache'))) == 1


def run_monet(tmp_path, *overrides):
  return subprocess.run(
      [sys.executable, '-m', 'cyclegan_jax.main', '--config=configs/monet.py',
       f'--workdir={tmp_path / "run"}', *overrides],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def test_missing_dataset_fails_before_training_and_names_the_field(tmp_path):
  result = run_monet(tmp_path, '--config.data.source=folder',
                     f'--config.data.root={tmp_path / "nowhere"}')
  assert_one_line_user_error(result, 'config.data.root', str(tmp_path / 'nowhere'),
                             'does not exist')
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
  result = run_monet(tmp_path, f'--config.data.tfds_data_dir={tmp_path / "tfds"}')
  assert_one_line_user_error(result, 'cycle_gan/monet2photo is not prepared',
                             'nothing is downloaded',
                             'python -m cyclegan_jax.prepare_tfds --name=monet2photo')
  assert not (tmp_path / 'run' / 'checkpoints').exists()
  assert not list((tmp_path / 'tfds').rglob('*.array_record*'))


# The paper's recipe shrunk to test size: every other field is configs/horse2zebra.py's.
SHRUNK_PAPER_RECIPE = ('--config.model.generator=resnet_1blocks', '--config.model.ngf=8',
                       '--config.model.ndf=8', '--config.data.load_size=36',
                       '--config.data.crop_size=32', '--config.pool_size=4',
                       '--config.batch_size=2', '--config.num_train_steps=2',
                       '--config.log_every_steps=1', '--config.num_sample_images=2')


@pytest.mark.parametrize('source', ['folder', 'zip', 'tfds'])
def test_horse2zebra_config_trains_from_each_source(tmp_path, source):
  images = make_jpeg_dataset(tmp_path / 'horse2zebra')
  (images / 'trainB' / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 not a jpeg')
  (images / 'trainA' / 'README.txt').write_text('not an image')
  if source == 'folder':
    overrides = ['--config.data.source=folder', f'--config.data.root={images}']
  elif source == 'zip':
    with zipfile.ZipFile(tmp_path / 'horse2zebra.zip', 'w') as archive:
      for file in sorted(images.rglob('*')):
        archive.write(file, file.relative_to(tmp_path).as_posix())
    overrides = ['--config.data.source=folder', f'--config.data.root={tmp_path}/horse2zebra.zip']
  else:
    prepared = subprocess.run(
        [sys.executable, '-m', 'cyclegan_jax.prepare_tfds', '--name=horse2zebra',
         f'--source={images}', f'--data_dir={tmp_path / "tfds"}'],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    overrides = [f'--config.data.tfds_data_dir={tmp_path / "tfds"}']
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'cyclegan_jax.main', '--config=configs/horse2zebra.py',
       f'--workdir={workdir}', *SHRUNK_PAPER_RECIPE, *overrides],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-3000:]
  assert final_line(result.stdout)['step'] == '2'
  assert re.search(r'5 trainA, [45] trainB, 2 testA, 2 testB images', result.stderr)
  if source != 'tfds':  # Preparation already skipped (and reported) both files.
    assert 'corrupt.jpg' in result.stderr
    # A file that is not an image is listed as ignored, and never read as a (corrupt) image.
    mentions = [line for line in result.stderr.splitlines() if 'README.txt' in line]
    assert mentions and all('Ignoring 1 file(s) in' in line for line in mentions), mentions
  else:
    assert 'README.txt' not in result.stderr
  assert (workdir / 'samples' / 'step_00000002.png').exists()
  assert (workdir / 'checkpoints' / '2').is_dir()


def test_batch_shards_over_several_devices(tmp_path):
  env = simulated_devices_env(2)
  result = subprocess.run(command(tmp_path / 'run', '--config.num_train_steps=2'), cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'global batch 2 over 2 devices' in result.stderr
  assert final_line(result.stdout)['step'] == '2'

  env = simulated_devices_env(4)
  result = subprocess.run(command(tmp_path / 'other', '--config.num_train_steps=2'), cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False, env=env)
  assert_one_line_user_error(result, 'config.batch_size = 2', '4 devices')


def test_library_info_filter_keeps_orbax_warnings_and_other_info():
  from cyclegan_jax import main  # pylint: disable=g-import-not-at-top

  def record(path, level):
    return logging.LogRecord('absl', level, path, 1, 'message', None, None)

  orbax_file = '/venv/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert not main._quiet_library_info(record(orbax_file, logging.INFO))
  assert main._quiet_library_info(record(orbax_file, logging.WARNING))
  assert main._quiet_library_info(record('/repo/cyclegan_jax/loop.py', logging.INFO))
