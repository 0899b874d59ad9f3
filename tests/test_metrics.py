"""FID, KID, SSIM, MAE and PSNR against closed forms, direct formulas and reference values."""

from pathlib import Path

import numpy as np
import scipy.linalg
import pytest

from cyclegan_jax import evaluation
from cyclegan_jax.evaluation import metrics

REFERENCE = Path(__file__).parent / 'data' / 'fid_inception_reference.npz'


def _random_rotation(rng, dim):
  q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
  return q * np.sign(np.diag(r))


def _random_covariance(rng, dim):
  a = rng.normal(size=(dim, dim))
  return a @ a.T / dim + 0.1 * np.eye(dim)


# Frechet distance.


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
  expected = np.sum((mu1 - mu2)**2) + np.sum((np.sqrt(a) - np.sqrt(b))**2)
  assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected,
                                                                                     rel=1e-10)


def test_frechet_distance_of_commuting_covariances_is_closed_form():
  rng = np.random.default_rng(1)
  dim = 10
  rotation = _random_rotation(rng, dim)
  a, b = rng.uniform(0.05, 4.0, dim), rng.uniform(0.05, 4.0, dim)
  sigma1, sigma2 = rotation @ np.diag(a) @ rotation.T, rotation @ np.diag(b) @ rotation.T
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  expected = np.sum((mu1 - mu2)**2) + np.sum((np.sqrt(a) - np.sqrt(b))**2)
  assert metrics.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_scalars():
  # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with variances s^2.
  assert metrics.frechet_distance(1.0, 4.0, -2.0, 9.0) == pytest.approx(9.0 + 1.0)


def test_frechet_distance_is_symmetric_and_zero_for_identical_inputs():
  rng = np.random.default_rng(2)
  mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
  sigma1, sigma2 = _random_covariance(rng, 12), _random_covariance(rng, 12)
  forward = metrics.frechet_distance(mu1, sigma1, mu2, sigma2)
  assert forward > 0
  assert metrics.frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(forward, rel=1e-9)
  assert abs(metrics.frechet_distance(mu1, sigma1, mu1, sigma1)) < 1e-9


def test_fid_from_features_matches_pytorch_fid():
  """Values of pytorch-fid's calculate_frechet_distance (experiments/make_fid_reference.py)."""
  reference = np.load(REFERENCE)
  full = metrics.fid_from_features(reference['fid_a'], reference['fid_b'])
  singular = metrics.fid_from_features(reference['fid_c'], reference['fid_d'])
  # pytorch-fid offsets a singular product's diagonal by 1e-6 before its sqrtm; the exact value
  # differs from that by ~1e-9 relative.
  np.testing.assert_allclose([full, singular], reference['fid_values'], rtol=1e-8)


def test_fid_from_features_of_identical_sets_is_zero_even_when_singular():
  rng = np.random.default_rng(3)
  for count, dim in ((200, 16), (10, 32)):  # The second covariance has rank 9 of 32.
    features = rng.normal(size=(count, dim))
    assert abs(metrics.fid_from_features(features, features)) < 1e-6


def test_trace_of_the_square_root_product_equals_scipy_sqrtm():
  rng = np.random.default_rng(4)
  for count, dim in ((300, 24), (12, 24)):  # Full rank, then rank 11 of 24.
    a, b = rng.normal(size=(count, dim)), rng.normal(size=(count, dim)) * 2.0 + 0.5
    sigma1, sigma2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = np.trace(scipy.linalg.sqrtm(sigma1 @ sigma2)).real
    assert metrics.trace_sqrt_product(sigma1, sigma2) == pytest.approx(expected, rel=1e-8)


def test_fid_from_few_features_equals_the_covariance_route():
  """Fewer samples than dimensions (the usual test split) take the exact N x N route."""
  rng = np.random.default_rng(5)
  a, b = rng.normal(size=(30, 64)), rng.normal(size=(45, 64)) * 1.5 + 0.2
  covariance_route = metrics.frechet_distance(*metrics.feature_statistics(a),
                                              *metrics.feature_statistics(b))
  # The covariance route takes square roots of rounding-level eigenvalues: ~1e-8 relative.
  assert metrics.fid_from_features(a, b) == pytest.approx(covariance_route, rel=1e-7)
  assert abs(metrics.fid_from_features(a, a)) < 1e-9


def test_frechet_distance_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match='different lengths'):
    metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# KID.


def _direct_mmd2(x, y):
  """The unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, one pair at a time."""
  dim = x.shape[1]
  kernel = lambda a, b: (np.dot(a, b) / dim + 1.0)**3
  m, n = len(x), len(y)
  xx = sum(kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(kernel(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  xy = sum(kernel(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return xx + yy - 2.0 * xy


def test_polynomial_mmd2_matches_direct_formula():
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(9, 5)), rng.normal(0.3, 1.2, size=(11, 5))
  assert metrics.polynomial_mmd2(x, y) == pytest.approx(_direct_mmd2(x, y), rel=1e-10)


def test_kid_of_whole_sets_is_the_direct_formula():
  rng = np.random.default_rng(5)
  x, y = rng.normal(size=(12, 4)), rng.normal(0.5, 1.0, size=(12, 4))
  mean, std = metrics.kid_from_features(x, y, num_subsets=3, subset_size=100)
  # Subsets of all 12 rows are permutations of the sets: the same value each time.
  assert mean == pytest.approx(_direct_mmd2(x, y), rel=1e-10)
  assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_subsets_as_documented():
  rng = np.random.default_rng(6)
  x, y = rng.normal(size=(15, 3)), rng.normal(size=(20, 3))
  mean, std = metrics.kid_from_features(x, y, num_subsets=4, subset_size=6, seed=11)
  draw = np.random.default_rng(11)
  values = []
  for _ in range(4):
    rows_x = draw.choice(15, 6, replace=False)
    rows_y = draw.choice(20, 6, replace=False)
    values.append(_direct_mmd2(x[rows_x], y[rows_y]))
  assert mean == pytest.approx(np.mean(values), rel=1e-10)
  assert std == pytest.approx(np.std(values), rel=1e-8)
  assert metrics.kid_from_features(x, y, num_subsets=4, subset_size=6, seed=11) == (mean, std)


def test_kid_is_unbiased_for_samples_of_one_distribution():
  rng = np.random.default_rng(7)
  unbiased, biased = [], []
  for _ in range(300):
    x, y = rng.normal(size=(10, 4)), rng.normal(size=(10, 4))
    unbiased.append(metrics.kid_from_features(x, y, num_subsets=1)[0])
    k = lambda a, b: (a @ b.T / 4 + 1.0)**3
    biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
  standard_error = np.std(unbiased) / np.sqrt(len(unbiased))
  assert abs(np.mean(unbiased)) < 3 * standard_error
  # The check has power: the biased (V-statistic) estimate is far above zero.
  assert np.mean(biased) > 10 * standard_error


def test_kid_separates_distributions():
  rng = np.random.default_rng(8)
  x, y = rng.normal(size=(100, 8)), rng.normal(1.0, 1.0, size=(100, 8))
  same = rng.normal(size=(100, 8))
  mean, std = metrics.kid_from_features(x, y, num_subsets=10, subset_size=50)
  same_mean, same_std = metrics.kid_from_features(x, same, num_subsets=10, subset_size=50)
  assert mean > 3 * std > 0
  assert abs(same_mean) < 3 * same_std < 0.1 * mean


def test_kid_rejects_too_few_samples():
  with pytest.raises(ValueError, match='at least 2'):
    metrics.kid_from_features(np.zeros((1, 3)), np.zeros((5, 3)))


# SSIM, MAE, PSNR.


def _taps():
  offsets = np.arange(-5, 6)
  taps = np.exp(-offsets**2 / (2 * 1.5**2))
  return taps / taps.sum()


C1, C2 = (0.01 * 255)**2, (0.03 * 255)**2


def test_ssim_of_identical_images_is_one():
  rng = np.random.default_rng(9)
  images = rng.uniform(-1, 1, (2, 20, 17, 3))
  np.testing.assert_allclose(metrics.ssim(images, images), 1.0, rtol=1e-12)


def test_ssim_of_constant_images():
  a, b = 200.0, 50.0
  x, y = np.full((1, 16, 16, 1), a), np.full((1, 16, 16, 1), b)
  expected = (2 * a * b + C1) / (a * a + b * b + C1)  # No variance: contrast term C2 / C2.
  np.testing.assert_allclose(metrics.ssim_255(x, y), [expected], rtol=1e-12)


def test_ssim_of_inverted_checkerboards():
  """x = m + A c and y = m - A c for a checkerboard c = (-1)^(i+j): a constant SSIM map.

  The checkerboard is separable, so the window averages it to alpha^2 c with alpha the
  alternating sum of the 1-D taps; the local moments are then mu = m +- A alpha^2 c,
  var = A^2 (1 - alpha^4) and cov = -A^2 (1 - alpha^4).
  """
  m, amplitude = 120.0, 40.0
  rows, cols = np.meshgrid(np.arange(24), np.arange(21), indexing='ij')
  board = (-1.0)**(rows + cols)
  x = (m + amplitude * board)[None, :, :, None]
  y = (m - amplitude * board)[None, :, :, None]
  alpha = np.sum(_taps() * (-1.0)**np.arange(11))
  mu_xy = m * m - amplitude**2 * alpha**4
  mu_sq = 2 * m * m + 2 * amplitude**2 * alpha**4
  var = amplitude**2 * (1 - alpha**4)
  expected = (2 * mu_xy + C1) * (-2 * var + C2) / ((mu_sq + C1) * (2 * var + C2))
  assert expected < 0
  np.testing.assert_allclose(metrics.ssim_255(x, y), [expected], rtol=1e-10)


def test_ssim_averages_channels_and_keeps_images_apart():
  rng = np.random.default_rng(10)
  x = rng.uniform(0, 255, (3, 16, 18, 2))
  y = np.clip(x + rng.normal(0, 20, x.shape), 0, 255)
  per_image = metrics.ssim_255(x, y)
  per_channel = [[
      metrics.ssim_255(x[i:i + 1, ..., c:c + 1], y[i:i + 1, ..., c:c + 1])[0] for c in range(2)
  ] for i in range(3)]
  np.testing.assert_allclose(per_image, np.mean(per_channel, axis=1), rtol=1e-12)


def test_ssim_matches_scikit_image():
  skimage_metrics = pytest.importorskip('skimage.metrics')
  rng = np.random.default_rng(11)
  smooth = np.cumsum(np.cumsum(rng.normal(size=(2, 40, 33, 3)), axis=1), axis=2)
  prediction = np.clip(smooth / np.abs(smooth).max(), -1, 1)
  target = np.clip(prediction + rng.normal(0, 0.2, prediction.shape), -1, 1)
  ours = metrics.ssim(prediction.astype(np.float32), target.astype(np.float32))
  theirs = [
      skimage_metrics.structural_similarity((np.float32(p).astype(np.float64) + 1) * 127.5,
                                            (np.float32(t).astype(np.float64) + 1) * 127.5,
                                            gaussian_weights=True,
                                            sigma=1.5,
                                            use_sample_covariance=False,
                                            data_range=255,
                                            channel_axis=-1) for p, t in zip(prediction, target)
  ]
  np.testing.assert_allclose(ours, theirs, atol=1e-9)  # Both in float64: far below 1e-4.


def test_ssim_rejects_small_or_mismatched_images():
  with pytest.raises(ValueError, match='11x11'):
    metrics.ssim_255(np.zeros((1, 10, 30, 3)), np.zeros((1, 10, 30, 3)))
  with pytest.raises(ValueError, match='one shape'):
    metrics.ssim_255(np.zeros((1, 12, 12, 3)), np.zeros((1, 12, 13, 3)))


def test_mae_psnr_ssim_hand_computed():
  prediction = np.zeros((2, 12, 12, 3), np.float32)  # 127.5 everywhere.
  target = np.zeros_like(prediction)
  target[0] = 1.0  # 255: every pixel off by 127.5.
  target[1, 0, 0, 0] = -1.0  # 0: one pixel of 432 off by 127.5.
  prediction[1, 5, 5, 2] = 3.0  # Clipped to 1 (255): another pixel off by 127.5.
  errors = evaluation.paired_errors(prediction, target)
  result = {'mae': np.asarray(errors['mae']), 'psnr': np.asarray(errors['psnr']),
            'ssim': metrics.ssim(prediction, target)}
  np.testing.assert_allclose(result['mae'], [127.5, 2 * 127.5 / 432], rtol=1e-6)
  mse = np.array([127.5**2, 2 * 127.5**2 / 432])
  # evaluation.paired_errors computes in float32.
  np.testing.assert_allclose(result['psnr'], 10 * np.log10(255.0**2 / mse), rtol=1e-5)
  np.testing.assert_allclose(result['psnr'][0], 20 * np.log10(2.0), rtol=1e-5)
  assert result['ssim'].shape == (2,)
  expected = (2 * 127.5 * 255 + C1) / (127.5**2 + 255**2 + C1)
  np.testing.assert_allclose(result['ssim'][0], expected, rtol=1e-10)
  assert 0 < result['ssim'][1] < 1
