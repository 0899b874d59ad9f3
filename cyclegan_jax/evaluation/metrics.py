"""Image-quality metrics: FID and KID of feature sets, and SSIM (with MAE and PSNR) of image pairs.

FID and KID are computed in float64 numpy from features (e.g. `inception.load_fid_inception`):
- `frechet_distance` is the Fréchet distance ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) of
  pytorch-fid's `calculate_frechet_distance`, with the trace of the matrix square root computed
  from symmetric eigendecompositions (`trace_sqrt_product`) instead of scipy's `sqrtm`: equal to
  pytorch-fid's values to 1e-9 relative (tests), and seconds instead of a minute at 2048
  dimensions on a 2-core CPU;
- `kid_from_features` is the kernel inception distance of Binkowski et al. (2018) as clean-fid and
  torch-fidelity compute it: the unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3 over
  random subsets, its mean and standard deviation over the subsets.

Paired metrics take [-1, 1] NHWC batches and measure on the 0–255 scale of saved images (clipped,
not quantised), per image: MAE and PSNR are `evaluation.paired_errors`; `ssim` is the SSIM of
Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03 and L = 255,
averaged over the valid window positions and the channels. It equals scikit-image's
`structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255, channel_axis=-1)` (which crops the borders that its padded filtering touches).
"""

import numpy as np

KID_NUM_SUBSETS = 100
KID_SUBSET_SIZE = 1000
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): scikit-image's (scipy's) truncation at 3.5 sigma.
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 255.0


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """The symmetric square root of a (numerically) positive semi-definite matrix."""
  values, vectors = np.linalg.eigh(sigma)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """Tr(sqrtm(sigma1 @ sigma2)) for covariance matrices, by two symmetric eigendecompositions.

  sigma1 @ sigma2 is similar to the PSD matrix R sigma2 R with R = sqrtm(sigma1), so its square
  root's trace is the sum of the square roots of that matrix's eigenvalues. This is the quantity
  pytorch-fid gets from scipy.linalg.sqrtm (with its retry on an offset diagonal when the
  product is singular), without the complex Schur decomposition: about 20x faster at 2048
  dimensions and exact for singular covariances too.
  """
  root = _psd_sqrt(sigma1)
  product = root @ sigma2 @ root
  eigenvalues = np.linalg.eigvalsh((product + product.T) / 2.0)
  return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (the FID formula)."""
  mu1, mu2 = (np.atleast_1d(np.asarray(mu, np.float64)) for mu in (mu1, mu2))
  sigma1, sigma2 = (np.atleast_2d(np.asarray(sigma, np.float64)) for sigma in (sigma1, sigma2))
  if mu1.shape != mu2.shape:
    raise ValueError(f'Mean vectors of different lengths: {mu1.shape} and {mu2.shape}')
  if sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f'Covariances {sigma1.shape} and {sigma2.shape} do not match the means '
                     f'{mu1.shape}')
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) -
               2.0 * trace_sqrt_product(sigma1, sigma2))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
  """FID between two [N, D] feature sets (of possibly different N).

  With at most D features per set (a test split of a few hundred images, 2048 Inception
  features) the trace term comes exactly from the centred features A and B themselves: the
  nonzero eigenvalues of S1 S2 are the squared singular values of A B^T / sqrt((N1-1)(N2-1)),
  an N1 x N2 problem instead of two D x D eigendecompositions.
  """
  features1, features2 = (_feature_matrix(f) for f in (features1, features2))
  if features1.shape[1] != features2.shape[1]:
    raise ValueError(f'Feature sets of different widths: {features1.shape} and '
                     f'{features2.shape}')
  (n1, dim), n2 = features1.shape, len(features2)
  if max(n1, n2) > dim:
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))
  mean1, mean2 = features1.mean(axis=0), features2.mean(axis=0)
  centred1, centred2 = features1 - mean1, features2 - mean2
  scale = np.sqrt((n1 - 1) * (n2 - 1))
  trace_sqrt = np.linalg.svd(centred1 @ centred2.T, compute_uv=False).sum() / scale
  diff = mean1 - mean2
  return float(diff @ diff + np.sum(centred1 * centred1) / (n1 - 1) + np.sum(centred2 * centred2) /
               (n2 - 1) - 2.0 * trace_sqrt)


def _feature_matrix(features: np.ndarray) -> np.ndarray:
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f'Need [N, D] features with N >= 2, got shape {features.shape}')
  return features


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean, covariance) of [N, D] features in float64; the covariance with N - 1 (np.cov)."""
  features = _feature_matrix(features)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 of samples [m, d] and [n, d] with the kernel (x.y / d + 1)^3."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  m, n, dim = len(x), len(y), x.shape[1]
  k_xx = (x @ x.T / dim + 1.0)**3
  k_yy = (y @ y.T / dim + 1.0)**3
  k_xy = (x @ y.T / dim + 1.0)**3
  within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
  within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
  return float(within_x + within_y - 2.0 * k_xy.mean())


def kid_from_features(features1: np.ndarray,
                      features2: np.ndarray,
                      num_subsets: int = KID_NUM_SUBSETS,
                      subset_size: int = KID_SUBSET_SIZE,
                      seed: int = 0) -> tuple[float, float]:
  """(mean, std) of the unbiased polynomial-kernel MMD^2 over `num_subsets` random subsets.

  Each subset draws min(subset_size, N1, N2) rows of each feature set without replacement (as
  clean-fid does; torch-fidelity requires N >= subset_size): `np.random.default_rng(seed)`'s
  `choice` of rows of features1, then of features2, per subset. The std is over the subsets
  (ddof 0).
  """
  features1, features2 = (np.asarray(f, np.float64) for f in (features1, features2))
  if features1.ndim != 2 or features2.ndim != 2 or features1.shape[1] != features2.shape[1]:
    raise ValueError(f'Need [N, D] features of equal D, got {features1.shape} and '
                     f'{features2.shape}')
  size = min(subset_size, len(features1), len(features2))
  if size < 2:
    raise ValueError(f'KID needs at least 2 samples per set, got {len(features1)} and '
                     f'{len(features2)}')
  if num_subsets < 1:
    raise ValueError(f'num_subsets must be positive, got {num_subsets}')
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_subsets):
    x = features1[rng.choice(len(features1), size, replace=False)]
    y = features2[rng.choice(len(features2), size, replace=False)]
    values.append(polynomial_mmd2(x, y))
  return float(np.mean(values)), float(np.std(values))


def to_255(images: np.ndarray) -> np.ndarray:
  """[-1, 1] images to the 0–255 scale, clipped (as `evaluation.to_255`), in float64."""
  return (np.clip(np.asarray(images, np.float64), -1.0, 1.0) + 1.0) * 127.5


def gaussian_window(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> np.ndarray:
  """The normalised 1-D Gaussian taps of SSIM's separable window (2 * radius + 1 of them)."""
  offsets = np.arange(-radius, radius + 1, dtype=np.float64)
  taps = np.exp(-0.5 * (offsets / sigma)**2)
  return taps / taps.sum()


def _filter_valid(images: np.ndarray, taps: np.ndarray) -> np.ndarray:
  """Separable correlation of [N, H, W, C] with `taps` along H and W, valid positions only."""
  size = len(taps)
  height, width = images.shape[1] - size + 1, images.shape[2] - size + 1
  rows = sum(tap * images[:, k:k + height] for k, tap in enumerate(taps))
  return sum(tap * rows[:, :, k:k + width] for k, tap in enumerate(taps))


def ssim_255(x: np.ndarray, y: np.ndarray, data_range: float = DATA_RANGE) -> np.ndarray:
  """Per-image SSIM [N] of [N, H, W, C] images on a 0–`data_range` scale (module docstring)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.shape != y.shape or x.ndim != 4:
    raise ValueError(f'Need two NHWC batches of one shape, got {x.shape} and {y.shape}')
  taps = gaussian_window()
  if min(x.shape[1:3]) < len(taps):
    raise ValueError(f'SSIM needs images of at least {len(taps)}x{len(taps)} pixels, got '
                     f'{x.shape[1]}x{x.shape[2]}')
  c1 = (SSIM_K1 * data_range)**2
  c2 = (SSIM_K2 * data_range)**2
  mu_x, mu_y = _filter_valid(x, taps), _filter_valid(y, taps)
  var_x = _filter_valid(x * x, taps) - mu_x * mu_x
  var_y = _filter_valid(y * y, taps) - mu_y * mu_y
  cov_xy = _filter_valid(x * y, taps) - mu_x * mu_y
  numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
  ssim_map = numerator / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
  return ssim_map.mean(axis=(1, 2, 3))


def ssim(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Per-image SSIM [N] of [-1, 1] NHWC batches, measured on the 0–255 scale."""
  return ssim_255(to_255(prediction), to_255(target))
