"""Evaluation on the test splits: paired metrics, cycle reconstruction, FID and KID.

Every metric is measured on the 0–255 scale of saved images. Keys (all per direction, AtoB is G
and BtoA is F):
- `heldout_mae_*`, `heldout_psnr_*`, `heldout_ssim_*`: against ground truth, where the test
  images come in pairs (the embedded dataset's held-out regions, or a folder/TFDS test split
  with `config.data.paired_test`), next to `baseline_mae_*` of leaving images untranslated;
- `cycle_mae_A` (F(G(a)) against a) and `cycle_mae_B` (G(F(b)) against b), always;
- `fid_*`, `kid_*` and `kid_std_*`: translated images against the real test images of the
  target domain, in Inception-v3 pool features, when FID Inception weights are given.
"""

import collections
from pathlib import Path
import re
from typing import Callable, Iterable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from cyclegan_jax import errors
from cyclegan_jax import data
from cyclegan_jax.data import image_io
from cyclegan_jax import checkpointing
from cyclegan_jax import models
from cyclegan_jax import state as state_lib
from cyclegan_jax import summaries
from cyclegan_jax import workdir as workdir_lib
from cyclegan_jax.evaluation import metrics

Translate = Callable[[np.ndarray], np.ndarray]  # float32 [-1, 1] NHWC -> the same
_PAIR_SUFFIX = re.compile(r'[_-]?[AB]$')


def to_255(images: jax.Array) -> jax.Array:
  """[-1, 1] floats to the 0–255 scale of saved images (clipped, not quantised)."""
  return (jnp.clip(images.astype(jnp.float32), -1.0, 1.0) + 1.0) * 127.5


def paired_errors(prediction: jax.Array, target: jax.Array) -> dict[str, jax.Array]:
  """Per-image MAE and PSNR (dB) of [-1, 1] batches, measured on the 0–255 scale."""
  difference = to_255(prediction) - to_255(target)
  axes = tuple(range(1, difference.ndim))
  mae = jnp.mean(jnp.abs(difference), axis=axes)
  mse = jnp.mean(jnp.square(difference), axis=axes)
  psnr = 10.0 * jnp.log10(255.0**2 / jnp.maximum(mse, 1e-10))
  return {'mae': mae, 'psnr': psnr}


def batched(fn: Callable[[jax.Array], jax.Array], images: np.ndarray,
            batch_size: int) -> np.ndarray:
  """Applies `fn` over `images` in fixed-size chunks (the last one padded) to compile once."""
  outputs = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    outputs.append(np.asarray(fn(chunk))[:batch_size - pad])
  return np.concatenate(outputs)


def _indices_by_shape(*images: Sequence[np.ndarray]) -> dict[tuple, list[int]]:
  """Indices into equally long lists of images, grouped by the shapes of the images at each index
  (a tuple of one shape per list), in order of first appearance."""
  groups = collections.defaultdict(list)
  for index, shapes in enumerate(zip(*(map(np.shape, list_) for list_ in images), strict=True)):
    groups[shapes].append(index)
  return groups


def apply_by_size(fn: Translate, images: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
  """`fn` over float images of possibly different sizes, batching equal sizes; input order."""
  outputs: list[np.ndarray] = [None] * len(images)  # type: ignore[list-item]
  for indices in _indices_by_shape(images).values():
    results = batched(fn, np.stack([images[i] for i in indices]), min(batch_size, len(indices)))
    for index, result in zip(indices, results):
      outputs[index] = result
  return outputs


def pair_test_images(names: dict[str, list[str]]) -> None:
  """Checks that test images i of A and B are a pair: equal names up to an A/B suffix."""
  if len(names['A']) != len(names['B']):
    raise errors.InvalidValueError(
        f'config.data.paired_test: testA has {len(names["A"])} images and testB '
        f'{len(names["B"])}; paired test splits need one B image per A image')
  for name_a, name_b in zip(names['A'], names['B']):
    stem_a, stem_b = (_PAIR_SUFFIX.sub('', Path(n).stem) for n in (name_a, name_b))
    if stem_a != stem_b:
      raise errors.InvalidValueError(
          f'config.data.paired_test: testA image {name_a} and testB image {name_b} '
          'do not pair by name (expected equal names up to an A/B suffix)')


def _mean(values: Iterable[float]) -> float:
  return float(np.mean(np.asarray(list(values), np.float64)))


def per_image(fn: Callable[..., dict[str, np.ndarray]],
              first: Sequence[np.ndarray],
              second: Sequence[np.ndarray],
              pixels_per_call: int = 2**20) -> dict[str, np.ndarray]:
  """`fn` of pairs of [N, H, W, C] batches (-> per-image values [N] by name) over two lists of
  images paired by index, called on batches of equal sizes of up to `pixels_per_call` pixels
  (at least one image); the values in list order."""
  values: dict[str, np.ndarray] = {}
  for (shape, _), indices in _indices_by_shape(first, second).items():
    size = max(1, pixels_per_call // (shape[0] * shape[1]))
    for start in range(0, len(indices), size):
      chunk = indices[start:start + size]
      batch = fn(np.stack([first[i] for i in chunk]), np.stack([second[i] for i in chunk]))
      for name, value in batch.items():
        values.setdefault(name, np.zeros(len(first), np.float64))[chunk] = np.asarray(value)
  return values


def evaluate(translate_AtoB: Translate,
             translate_BtoA: Translate | None,
             test: dict[str, list[np.ndarray]],
             paired: bool,
             features: Callable[[np.ndarray], np.ndarray] | None = None,
             batch_size: int = 16) -> dict[str, float]:
  """Metrics (module docstring) of the two generators on uint8 test images per domain; with
  `translate_BtoA` None (pix2pix) those of AtoB alone, without cycle errors.

  `features` maps float [-1, 1] NHWC images to Inception pool features (FID/KID), or None.
  """
  real = {
      domain: [image_io.from_uint8(image) for image in images] for domain, images in test.items()
  }
  results: dict[str, float] = {'num_test_A': len(real['A']), 'num_test_B': len(real['B'])}
  fake = {'B': apply_by_size(translate_AtoB, real['A'], batch_size)}
  directions = [('AtoB', 'A', 'B')]
  if translate_BtoA is not None:
    directions.append(('BtoA', 'B', 'A'))
    fake['A'] = apply_by_size(translate_BtoA, real['B'], batch_size)
    reconstructed = {
        'A': apply_by_size(translate_BtoA, fake['B'], batch_size),
        'B': apply_by_size(translate_AtoB, fake['A'], batch_size)
    }
    for domain in ('A', 'B'):
      results[f'cycle_mae_{domain}'] = _mean(
          per_image(paired_errors, reconstructed[domain], real[domain])['mae'])

  for direction, source, target in directions:
    prediction, truth = fake[target], real[target]
    if paired:
      heldout = per_image(lambda p, t: {
          **paired_errors(p, t), 'ssim': metrics.ssim(p, t)
      }, prediction, truth)
      for name in ('mae', 'psnr', 'ssim'):
        results[f'heldout_{name}_{direction}'] = _mean(heldout[name])
      if real[source][0].shape[-1] == truth[0].shape[-1]:
        results[f'baseline_mae_{direction}'] = _mean(
            per_image(paired_errors, real[source], truth)['mae'])
    if features is not None:
      fake_features = np.stack(apply_by_size(features, prediction, batch_size))
      real_features = np.stack(apply_by_size(features, truth, batch_size))
      results[f'fid_{direction}'] = metrics.fid_from_features(fake_features, real_features)
      kid_mean, kid_std = metrics.kid_from_features(fake_features, real_features)
      results[f'kid_{direction}'] = kid_mean
      results[f'kid_std_{direction}'] = kid_std
  return results


def load_test_sets(dataset: data.Dataset,
                   paired_test: bool) -> tuple[dict[str, list[np.ndarray]], bool]:
  """(uint8 test images per domain, whether they are pairs) of a dataset."""
  test, names = {}, {}
  for domain in ('A', 'B'):
    items = list(dataset.test_images(domain))
    if not items:
      raise errors.InvalidValueError(
          f'The dataset has no readable test{domain} images to evaluate on.')
    names[domain] = [name for name, _ in items]
    test[domain] = [image for _, image in items]
  paired = dataset.heldout_pairs() is not None or dataset.aligned  # Test i of A and B: a pair.
  if paired_test and not paired:
    try:
      pair_test_images(names)
      paired = True
    except ValueError as error:
      logging.warning('%s; evaluating without paired metrics.', error)
  return test, paired


def log_summary(step: int, results: dict[str, float]) -> None:
  parts = [
      f'{key} {results[key]:.3g}' for key in sorted(results)
      if key.startswith(('heldout_mae', 'heldout_ssim', 'cycle_mae', 'fid_', 'kid_A', 'kid_B'))
  ]
  logging.info('Evaluation at step %d: %s', step, ', '.join(parts))


def inception_features(weights_path: str) -> Callable[[np.ndarray], np.ndarray] | None:
  """The FID feature extractor for `weights_path`, or None (with a log line) if it is ''."""
  if not weights_path:
    logging.info('FID/KID skipped: no Inception weights given (config.inception_weights or '
                 '--inception_weights; see README, "Evaluate").')
    return None
  from cyclegan_jax.evaluation import inception  # pylint: disable=g-import-not-at-top
  return inception.load_fid_inception(weights_path)


def evaluate_workdir(workdir: str,
                     step: int | None = None,
                     inception_weights: str | None = None,
                     data_root: str | None = None,
                     batch_size: int = 16,
                     weights: str | None = None) -> tuple[int, dict[str, float]]:
  """(step, metrics) of the checkpoint at `step` (default latest), with G's and F's `weights`
  (`state.generator_weights`); also written to the workdir."""
  config = checkpointing.saved_config(workdir)
  if data_root:
    config.data.source, config.data.root = 'folder', data_root
  if inception_weights is None:
    inception_weights = config.inception_weights
  features = inception_features(inception_weights)  # Fails early on a missing weights file.
  dataset = data.create_dataset(config.data,
                                seed=config.seed,
                                channels_A=config.model.channels_A,
                                channels_B=config.model.channels_B)
  test_sets, paired = load_test_sets(dataset, config.data.paired_test)
  state, step = checkpointing.restore_train_state(workdir, step)
  imported = checkpointing.imported_networks(workdir)
  if imported is not None and 'F' in state.params and not {'G', 'F'} <= set(imported):
    logging.warning(
        '%s holds only %s converted weights; the other generator is untrained, so '
        'its metrics (and the cycle errors) mean nothing.', workdir, sorted(imported))
  networks = state_lib.build_networks(config)
  # As the official test.py: each image normalised by its own statistics; dropout (if any) on
  # unless config.model.eval_mode, with the masks of the run's own evaluations.
  dropout_key = state_lib.sample_key(config.seed)

  def translate(name):
    network = models.for_test(getattr(networks, name), config.model.eval_mode)
    params = state_lib.translation_params(
        state.params, weights, state.batch_stats if config.model.eval_mode else None)[name]
    return jax.jit(lambda x: models.network_fn(network, params, dropout_key)(x))

  translate_AtoB = translate('G')
  translate_BtoA = translate('F') if 'F' in state.params else None  # pix2pix has G alone.
  results = evaluate(translate_AtoB, translate_BtoA, test_sets, paired, features, batch_size)
  # The trained weights of a run that evaluates with their averages: apart from its own results.
  raw_weights = weights == 'raw' and 'G' + state_lib.EMA_SUFFIX in state.params
  if jax.process_index() == 0:
    writer = summaries.SummaryWriter(workdir)
    writer.scalars(step, {
        workdir_lib.eval_scalar(key, raw_weights): value for key, value in results.items()
    })
    writer.close()
    path = workdir_lib.eval_file(workdir, step, raw_weights)
    workdir_lib.write_json(path, {'step': step, **results})
    logging.info('Wrote %s.', path)
  return step, results
