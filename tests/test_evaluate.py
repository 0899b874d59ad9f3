"""Evaluation: metrics against exact truths, the evaluate CLI, and its agreement with training."""

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments.make_fid_reference import random_state_dict
from conftest import load_config
from cyclegan_jax import evaluation
from cyclegan_jax.evaluation import inception
from cyclegan_jax import data
from cyclegan_jax.data import embedded

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def embedded_test_sets():
  config = load_config('tiny')
  dataset = data.create_dataset(config.data, seed=0)
  return evaluation.load_test_sets(dataset, paired_test=False)


def test_the_true_translation_scores_perfectly(embedded_test_sets):
  """The embedded domains differ by an exact channel permutation: applying it is error-free."""
  test, paired = embedded_test_sets
  assert paired and len(test['A']) == len(test['B']) == 16
  results = evaluation.evaluate(embedded.hue_rotate_120, embedded.inverse_hue_rotate_120, test,
                                paired)
  for direction in ('AtoB', 'BtoA'):
    assert results[f'heldout_mae_{direction}'] == 0.0
    assert results[f'heldout_ssim_{direction}'] == pytest.approx(1.0)
    assert results[f'baseline_mae_{direction}'] > 20
  assert results['cycle_mae_A'] == results['cycle_mae_B'] == 0.0


def test_identity_scores_the_baseline(embedded_test_sets):
  test, paired = embedded_test_sets
  results = evaluation.evaluate(lambda x: x, lambda x: x, test, paired)
  assert results['heldout_mae_AtoB'] == pytest.approx(results['baseline_mae_AtoB'])
  # Hand-computed from the uint8 images: the mean absolute difference in grey levels.
  expected = np.mean([np.abs(a.astype(float) - b).mean() for a, b in zip(test['A'], test['B'])])
  assert results['baseline_mae_AtoB'] == pytest.approx(expected, rel=1e-5)


def test_images_of_several_sizes_keep_their_order():
  images = [np.full((size, size, 3), value, np.float32)
            for size, value in ((8, 0.1), (12, 0.2), (8, 0.3))]
  outputs = evaluation.apply_by_size(lambda x: x * 2, images, batch_size=4)
  assert [float(o.mean()) for o in outputs] == pytest.approx([0.2, 0.4, 0.6])


def test_per_image_metrics_of_several_sizes_are_those_of_each_image_alone():
  """Images are measured in batches of equal sizes (several calls where a size exceeds the pixel
  budget); each value is the one its image gives alone, in input order."""
  rng = np.random.default_rng(0)
  sizes = (8, 12, 8, 8, 12, 8)
  prediction = [rng.uniform(-1, 1, (s, s, 3)).astype(np.float32) for s in sizes]
  target = [rng.uniform(-1, 1, (s, s, 3)).astype(np.float32) for s in sizes]
  alone = [evaluation.paired_errors(p[None], t[None]) for p, t in zip(prediction, target)]
  # A batch may sum an image's 12 x 12 x 3 float32 terms in another order: that many roundings.
  rtol = 12 * 12 * 3 * 2.0**-24
  for pixels_per_call in (2**20, 2 * 8 * 8):  # One call per size; at most two 8x8 images a call.
    values = evaluation.per_image(evaluation.paired_errors, prediction, target, pixels_per_call)
    for name in ('mae', 'psnr'):
      np.testing.assert_allclose(values[name], [float(a[name][0]) for a in alone], rtol=rtol)


def test_paired_test_splits_pair_by_name():
  evaluation.pair_test_images({'A': ['1_A.jpg', '2_A.jpg'], 'B': ['1_B.jpg', '2_B.jpg']})
  with pytest.raises(ValueError, match='do not pair'):
    evaluation.pair_test_images({'A': ['1_A.jpg', '2_A.jpg'], 'B': ['2_B.jpg', '1_B.jpg']})
  with pytest.raises(ValueError, match='one B image per A image'):
    evaluation.pair_test_images({'A': ['1_A.jpg'], 'B': []})


def test_cli_reports_what_training_reported(finished_tiny_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(finished_tiny_run[0], workdir)
  final = finished_tiny_run[1]
  result = subprocess.run([sys.executable, '-m', 'cyclegan_jax.evaluate', f'--workdir={workdir}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'FID/KID skipped' in result.stderr
  assert 'Type handler registry' not in result.stderr  # Our intended override is not a warning.
  line = result.stdout.strip().splitlines()[-1]
  assert line.startswith('eval: step=6 ')
  values = dict(pair.split('=') for pair in line[len('eval: '):].split())
  for key in ('heldout_mae_AtoB', 'heldout_mae_BtoA', 'heldout_ssim_AtoB', 'cycle_mae_A'):
    assert float(values[key]) == pytest.approx(final[key], rel=1e-4), key
  saved = json.loads((workdir / 'eval' / 'step_00000006.json').read_text())
  assert saved['heldout_mae_AtoB'] == pytest.approx(final['heldout_mae_AtoB'], rel=1e-6)
  logged = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert sum('eval/cycle_mae_A' in entry for entry in logged) == 2  # Training's, then the CLI's.


def test_fid_and_kid_with_inception_weights(embedded_test_sets):
  """On random Inception weights: translating exactly gives FID ~0, not translating does not."""
  test, paired = embedded_test_sets
  test = {domain: images[:4] for domain, images in test.items()}
  variables = inception.variables_from_state_dict(
      random_state_dict(inception.state_dict_shapes(), seed=0))
  features = inception.feature_extractor(variables, batch_size=4)
  exact = evaluation.evaluate(embedded.hue_rotate_120,
                              embedded.inverse_hue_rotate_120,
                              test,
                              paired,
                              features,
                              batch_size=4)
  untranslated = evaluation.evaluate(lambda x: x, lambda x: x, test, paired, features,
                                     batch_size=4)
  for direction in ('AtoB', 'BtoA'):
    assert untranslated[f'fid_{direction}'] > 1.0
    assert abs(exact[f'fid_{direction}']) < 1e-3 * untranslated[f'fid_{direction}']
    # Unbiased KID of identical sets is below zero (its cross term keeps the diagonal).
    assert untranslated[f'kid_{direction}'] > exact[f'kid_{direction}']
    assert untranslated[f'kid_std_{direction}'] >= 0


def test_missing_inception_weights_fail_before_any_work(finished_tiny_run, tmp_path):
  workdir, _ = finished_tiny_run
  with pytest.raises(FileNotFoundError, match='pt_inception'):
    evaluation.evaluate_workdir(str(workdir), inception_weights=str(tmp_path / 'absent.pth'))
