"""Damaged checkpoints: a run resumes from the newest intact one; readers skip or name them."""

import json
import logging
import pathlib
import shutil
import subprocess
import sys

from absl import logging as absl_logging
import jax
import numpy as np
import pytest

from conftest import load_config
from conftest import updated
from cyclegan_jax import checkpointing
from cyclegan_jax import errors
from cyclegan_jax import evaluation
from cyclegan_jax import inference
from cyclegan_jax import loop
from cyclegan_jax import workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]


def copy_run(finished_tiny_run, target: pathlib.Path) -> pathlib.Path:
  shutil.copytree(finished_tiny_run[0], target)
  return target


def truncate_largest_array_file(run: pathlib.Path, step: int) -> tuple[pathlib.Path, int]:
  """As a partial copy or a full disk leaves it: the checkpoint's largest data file cut short."""
  files = [path for path in (run / 'checkpoints' / str(step)).rglob('*') if path.is_file()]
  largest = max(files, key=lambda path: path.stat().st_size)
  size = largest.stat().st_size // 2
  with open(largest, 'r+b') as file:
    file.truncate(size)
  return largest, size


def restored_state(run: pathlib.Path):
  manager = checkpointing.create_manager(run, keep=3)
  try:
    return manager.latest_step(), manager.restore(manager.latest_step())['state']
  finally:
    manager.close()


def test_readers_skip_a_damaged_newest_checkpoint_and_name_it(finished_tiny_run, tmp_path,
                                                              caplog):
  run = copy_run(finished_tiny_run, tmp_path / 'run')
  truncate_largest_array_file(run, 6)
  with caplog.at_level(logging.WARNING):
    state, step = checkpointing.restore_train_state(run)
  assert step == 3 and int(state.step) == 3
  assert any('Checkpoint step 6' in r.getMessage() and 'damaged' in r.getMessage() and
             'OUT_OF_RANGE' in r.getMessage() for r in caplog.records)
  with pytest.raises(errors.CheckpointError, match=r'step 6 .* damaged .*Steps there: 3, 6\.'):
    checkpointing.restore_train_state(run, step=6)
  assert evaluation.evaluate_workdir(str(run))[0] == 3
  assert 'at step 3' in inference.load_generator(workdir=run).description
  # A warm start from the damaged step is refused, naming it.
  config = updated(load_config('tiny'), init_from=str(run / 'checkpoints' / '6'))
  with pytest.raises(errors.CheckpointError, match='step 6'):
    loop.train_and_evaluate(config, str(tmp_path / 'warm'))
  assert not (tmp_path / 'warm').exists()  # Refused before the new run wrote anything.
  # Readers never move or delete anything.
  assert (run / 'checkpoints' / '6').is_dir() and not (run / workdir.DAMAGED_DIR).exists()

  result = subprocess.run(
      [sys.executable, '-m', 'cyclegan_jax.translate', f'--workdir={run}', '--step=6',
       f'--input={ROOT / "tests" / "data" / "official_test_outputs" / "photo32.png"}',
       f'--output={tmp_path / "out"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  error_lines = [line for line in result.stderr.splitlines() if line.startswith('Error:')]
  assert len(error_lines) == 1
  assert 'step 6' in error_lines[0] and 'Steps there: 3, 6' in error_lines[0]


def test_training_resumes_from_the_newest_intact_checkpoint(finished_tiny_run, tmp_path, caplog):
  damaged = copy_run(finished_tiny_run, tmp_path / 'damaged')
  truncated_file, truncated_size = truncate_largest_array_file(damaged, 6)
  reference = copy_run(finished_tiny_run, tmp_path / 'reference')
  shutil.rmtree(reference / 'checkpoints' / '6')  # As if the run had stopped at step 3.
  config = updated(load_config('tiny'), num_train_steps=8)

  with caplog.at_level(logging.WARNING):
    final = loop.train_and_evaluate(config, str(damaged))
  assert final['step'] == 8
  messages = [record.getMessage() for record in caplog.records]
  assert any('Checkpoint step 6' in m and 'damaged' in m for m in messages), messages
  set_aside = damaged / workdir.DAMAGED_DIR / '6'
  assert any(str(set_aside) in m for m in messages), messages
  # Kept as it was, out of the way of the new step-6 checkpoint.
  kept = set_aside / truncated_file.relative_to(damaged / 'checkpoints' / '6')
  assert kept.stat().st_size == truncated_size

  loop.train_and_evaluate(config, str(reference))
  (step_a, state_a), (step_b, state_b) = restored_state(damaged), restored_state(reference)
  assert step_a == step_b == 8
  # Bitwise: both resume from the same step-3 checkpoint and run the same compiled step.
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


def test_no_intact_checkpoint_is_one_clear_error(finished_tiny_run, tmp_path):
  run = copy_run(finished_tiny_run, tmp_path / 'run')
  for step in (3, 6):
    truncate_largest_array_file(run, step)
  config = updated(load_config('tiny'), num_train_steps=8)
  with pytest.raises(errors.CheckpointError,
                     match=r'No checkpoint in .* can be restored.*step 6: .*step 3: .*afresh'):
    loop.train_and_evaluate(config, str(run))
  assert sorted(p.name for p in (run / 'checkpoints').iterdir()) == ['3', '6']
  assert not (run / workdir.LOCK_FILE).exists()  # Released on the way out.
  # Nor can a new run warm-start from it; the new run's folder is left as it was: absent.
  warm = tmp_path / 'warm'
  with pytest.raises(errors.CheckpointError,
                     match=r'No checkpoint in .* can be restored.*warm-start from another run'):
    loop.train_and_evaluate(updated(load_config('tiny'), init_from=str(run)), str(warm))
  assert not warm.exists()
  # Each reader's message says what helps it: a resume starts afresh, a reader reads another run.
  with pytest.raises(errors.CheckpointError, match=r'can be restored.*give another run\.$'):
    evaluation.evaluate_workdir(str(run))


def test_a_run_saved_before_the_channel_fields_were_renamed_still_restores_and_resumes(
    finished_tiny_run, tmp_path):
  run = copy_run(finished_tiny_run, tmp_path / 'run')
  saved = json.loads((run / workdir.CONFIG_FILE).read_text())
  saved['model']['input_nc'] = saved['model'].pop('channels_A')
  saved['model']['output_nc'] = saved['model'].pop('channels_B')
  (run / workdir.CONFIG_FILE).write_text(json.dumps(saved))
  assert checkpointing.restore_train_state(run)[1] == 6
  final = loop.train_and_evaluate(updated(load_config('tiny'), num_train_steps=7), str(run))
  assert final['step'] == 7


def test_a_run_without_pools_checkpoints_and_resumes(tiny_config, tmp_path):
  """pool_size 0 (as pix2pix, or CycleGAN with uncropped images) leaves zero-size pool arrays,
  which Orbax cannot save; they are left out of the checkpoint and restored empty."""
  tiny_config.pool_size = 0
  tiny_config.num_train_steps = 3
  loop.train_and_evaluate(tiny_config, str(tmp_path))
  state, step = checkpointing.restore_train_state(tmp_path)
  assert step == 3 and state.pool_A.images.shape == (0, 32, 32, 3)
  tiny_config.num_train_steps = 4
  assert loop.train_and_evaluate(tiny_config, str(tmp_path))['step'] == 4


def test_installing_the_array_handler_is_silent_and_leaves_log_levels_alone(caplog):
  """Orbax's warning about our intended override is dropped, and nothing else: the absl logger's
  own level (which decides whether other modules' INFO lines show) is what it was."""
  absl_logger = absl_logging.get_absl_logger()
  level = absl_logger.level
  with caplog.at_level(logging.INFO):
    checkpointing._write_replicated_arrays_whole()  # pylint: disable=protected-access
    absl_logging.info('still shown')
  assert absl_logger.level == level
  messages = [record.getMessage() for record in caplog.records]
  assert 'still shown' in messages
  assert not any('Type handler registry' in message for message in messages)
