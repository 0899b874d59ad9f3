"""The dataset the trainer uses: training batches, test images and held-out pairs.

A `Dataset` gives example i of a run as a pure function of (seed, i) (`preprocess`: sampling),
decoded from its sources (`sources`) by the channel policy (`images`). `BatchIterator` yields this
process's rows of consecutive global batches; its state is one integer, the next example
(`BatchIterator.state()`), saved with each checkpoint. Decoding and augmentation run on a pool of
`config.data.num_workers` threads (Pillow releases the GIL) up to `config.data.prefetch` batches
ahead of the train step.

Unreadable images (corrupt, truncated, vanished) are skipped with a warning naming the file and a
running count, the example taking the next readable image of its split, or raise if
`config.data.skip_bad_images` is False.
"""

import collections
from collections.abc import Callable, Iterator
import concurrent.futures
import copy
import hashlib
import io
import logging
import os
import threading
import weakref

import ml_collections
import numpy as np
from PIL import Image

from cyclegan_jax import config_lib
from cyclegan_jax import errors
from cyclegan_jax.data import embedded
from cyclegan_jax.data import sources as sources_lib
from cyclegan_jax.data.image_io import as_hwc
from cyclegan_jax.data.image_io import decode_image
from cyclegan_jax.data.image_io import DECODE_ERRORS
from cyclegan_jax.data.image_io import from_uint8
from cyclegan_jax.data.image_io import UnreadableImageError
from cyclegan_jax.data.preprocess import apply_augmentation
from cyclegan_jax.data.preprocess import DOMAINS
from cyclegan_jax.data.preprocess import example_indices
from cyclegan_jax.data.preprocess import local_rows
from cyclegan_jax.data.preprocess import preprocess_for_test
from cyclegan_jax.data.preprocess import preprocess_for_training
from cyclegan_jax.data.preprocess import sample_augmentation
from cyclegan_jax.data.preprocess import training_size



def half_columns(width: int, half: int) -> tuple[int, int]:
  """Columns [left, right) of half 0 (the left one: A in the official format) or half 1 of an
  A | B image `width` wide, split at width // 2 as the official AlignedDataset."""
  split = width // 2
  return (0, split) if half == 0 else (split, width)


def _stack(images: list[np.ndarray], describe: Callable[[int], str]) -> np.ndarray:
  shapes = [image.shape for image in images]
  if len(set(shapes)) > 1:
    first, other = 0, next(i for i, shape in enumerate(shapes) if shape != shapes[0])
    raise errors.InvalidValueError(
        f'a batch needs images of one size, but {describe(first)} is {shapes[first][1]}x'
        f'{shapes[first][0]} px and {describe(other)} is {shapes[other][1]}x{shapes[other][0]} '
        'px after preprocessing: use batch_size 1 or a cropping config.data.preprocess')
  return np.stack([np.ascontiguousarray(image) for image in images])


class Dataset:
  """Training batches, test images and (embedded source) paired held-out data.

  Attributes:
   num_A, num_B: training images per domain (embedded: train cells, each cropped at a random
    position, so there are many more distinct crops than examples).
   epoch_size: max(num_A, num_B), iterations per epoch at batch size 1.
   aligned: example i pairs image k of A with image k of B (pix2pix), both cropped and flipped
    alike; else (CycleGAN) the B image is drawn independently.
   halves: aligned A | B files, {'A': 0, 'B': 1} (the left half is A) or {'A': 1, 'B': 0}
    (config.data.direction 'BtoA'): each domain reads its half of the same image; None: each
    domain has its own images.
   crop_size: the training crop, None for preprocess modes without one.
   fingerprint: identifies the training images (names and counts), to detect a changed dataset
    when a run resumes.
   summary: one line describing the data, for logs.
  """

  def __init__(
      self,
      *,
      seed: int,
      train: dict[str, sources_lib.Source],
      test: dict[str, sources_lib.Source],
      channels: dict[str, int],
      preprocess: str,
      load_size: int,
      crop_size: int,
      allow_flip: bool,
      skip_bad_images: bool = True,
      num_workers: int = 0,
      prefetch: int = 2,
      heldout_uint8: dict[str, np.ndarray] | None = None,
      summary: str = '',
      aligned: bool = False,
      halves: dict[str, int] | None = None,
  ):
    self.seed = seed  # config_lib.validate checks it (>= 0), as every other field.
    self.sources = train
    self.test_sources = test
    self.channels = channels
    self.preprocess = preprocess
    self.load_size = load_size
    self.test_size = crop_size
    self.crop_size = None if preprocess in config_lib.UNCROPPED_MODES else crop_size
    self.allow_flip = allow_flip
    self.skip_bad_images = skip_bad_images
    self.num_workers = num_workers or os.cpu_count() or 1
    self.prefetch = prefetch
    self.num_A, self.num_B = len(train['A']), len(train['B'])
    if aligned and self.num_A != self.num_B:
      raise ValueError(f'aligned data needs as many A as B images, got {self.num_A}, {self.num_B}')
    self.aligned, self.halves = aligned, halves
    self.epoch_size = max(self.num_A, self.num_B)
    self.summary = summary
    self._heldout_uint8 = heldout_uint8
    self._bad = {domain: set() for domain in DOMAINS}
    self._bad_lock = threading.Lock()
    self._checked_uniform_size = False
    names = hashlib.sha256()
    for domain in DOMAINS:
      names.update(f'{domain}:{len(train[domain])}\n'.encode())
      names.update('\n'.join(train[domain].names()).encode())
    self.fingerprint = names.hexdigest()[:16]

  # -- Examples.

  def example_indices(self, example: int) -> tuple[int, int]:
    """(A index, B index) of global example `example` = step * batch_size + j."""
    index_A, index_B = example_indices(self.seed, example, self.num_A, self.num_B)
    return (index_A, index_A) if self.aligned else (index_A, index_B)

  def _decoded(self, source: sources_lib.Source, index: int,
               domain: str) -> Image.Image | np.ndarray:
    data = source.read(index)
    if isinstance(data, np.ndarray):
      return data
    image = decode_image(data, self.channels[domain], source.describe(index))
    if self.halves is None:
      return image
    left, right = half_columns(image.size[0], self.halves[domain])
    return image.crop((left, 0, right, image.size[1]))

  def _readable(self, sources: dict[str, sources_lib.Source], domain: str, index: int,
                load: Callable[[int], np.ndarray]) -> tuple[int, np.ndarray]:
    """(index, load(index)) for the first readable image from `index` on, skipping bad ones."""
    count = len(sources[domain])
    for offset in range(count):
      candidate = (index + offset) % count
      if candidate in self._bad[domain]:
        continue
      try:
        return candidate, load(candidate)
      except UnreadableImageError as error:
        if not self.skip_bad_images:
          raise UnreadableImageError(
              f'{error}. Remove the file, or set config.data.skip_bad_images=True to skip '
              'unreadable images') from error
        with self._bad_lock:
          self._bad[domain].add(candidate)
          skipped = sum(len(bad) for bad in self._bad.values())
        logging.warning('Skipping an unreadable image (%d skipped so far): %s', skipped, error)
    raise errors.InvalidValueError(
        f'every image of {sources[domain].describe(0)} and the rest of its split '
        f'({count}) is unreadable')

  def _training_image(self, domain: str, index: int) -> np.ndarray:
    source = self.sources[domain]

    def load(candidate: int) -> np.ndarray:
      image = self._decoded(source, candidate, domain)
      if isinstance(image, Image.Image):
        image = as_hwc(
            preprocess_for_training(image, self.preprocess, self.load_size, self.test_size))
      return image

    return self._readable(self.sources, domain, index, load)[1]

  def training_example(self, example: int, domain: str) -> np.ndarray:
    """uint8 [H, W, C]: global example `example` of `domain`, preprocessed, cropped, flipped."""
    index = self.example_indices(example)[DOMAINS.index(domain)]
    image = self._training_image(domain, index)
    # A pair shares one crop and flip (the draws of domain A).
    augmentation = sample_augmentation(self.seed, example, 'A' if self.aligned else domain,
                                       image.shape, self.crop_size, self.allow_flip)
    return apply_augmentation(image, augmentation, self.crop_size)

  def describe_example(self, example: int, domain: str) -> str:
    return self.sources[domain].describe(self.example_indices(example)[DOMAINS.index(domain)])

  def reseeded(self, seed: int) -> 'Dataset':
    """The same images with another seed (another data order and augmentation); what the two
    learn about the files (unreadable ones, sizes) stays shared."""
    if seed == self.seed:
      return self
    other = copy.copy(self)
    other.seed = seed
    return other

  def train_iterator(self,
                     batch_size: int,
                     start_example: int = 0,
                     process_index: int = 0,
                     process_count: int = 1,
                     prefetch: int | None = None) -> 'BatchIterator':
    """This process's rows of the global batches from global example `start_example` on:
    global batch k holds examples start_example + k * batch_size + j, a pure function of
    (seed, example). `prefetch` overrides config.data.prefetch (0: decode in next())."""
    rows = local_rows(batch_size, process_index, process_count)
    if len(rows) > 1:
      self._check_uniform_size()
    return BatchIterator(self, batch_size, start_example, rows, self.num_workers,
                         self.prefetch if prefetch is None else prefetch)

  def _check_uniform_size(self) -> None:
    """Preprocess modes without a crop can batch only images that end up the same size."""
    if self.crop_size is not None or self._checked_uniform_size:
      return
    for domain, source in self.sources.items():
      sizes = {}
      for index in range(len(source)):
        try:
          data = source.read(index)
          with Image.open(io.BytesIO(data)) as image:
            size = image.size
          if self.halves is not None:
            left, right = half_columns(size[0], self.halves[domain])
            size = (right - left, size[1])
          size = training_size(size, self.preprocess, self.load_size, self.test_size)
        except (UnreadableImageError, *DECODE_ERRORS):
          continue  # Skipped (or reported) when training reaches it.
        sizes.setdefault(size, source.describe(index))
      if len(sizes) > 1:
        examples = ', '.join(f'{name} ({w}x{h})' for (w, h), name in list(sizes.items())[:2])
        raise errors.InvalidValueError(
            f'config.data.preprocess="{self.preprocess}" keeps image proportions, and train'
            f'{domain} gives {len(sizes)} different sizes (e.g. {examples}): use batch_size 1 '
            'or a cropping preprocess such as "resize_and_crop"')
    self._checked_uniform_size = True

  # -- Resuming.

  def iterator_state(self, next_example: int) -> dict:
    """What a checkpoint records about the data: the next example and the dataset's identity."""
    return {
        'next_example': int(next_example),
        'seed': self.seed,
        'num_A': self.num_A,
        'num_B': self.num_B,
        'fingerprint': self.fingerprint,
    }

  def resume_example(self, state: dict) -> int:
    """The next example recorded by `iterator_state`, warning if the dataset has changed."""
    changed = [
        f'{key} {state.get(key)!r} -> {value!r}' for key, value in self.iterator_state(0).items()
        if key != 'next_example' and state.get(key) != value
    ]
    if changed:
      logging.warning(
          'The training data differs from the checkpoint\'s (%s): the run resumes at example %d, '
          'but the example order is no longer that of an uninterrupted run.', ', '.join(changed),
          state['next_example'])
    return int(state['next_example'])

  # -- Test images.

  def num_test(self, domain: str) -> int:
    return len(self.test_sources[domain])

  def test_images(self, domain: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, uint8 [H, W, C]) of every readable test image of `domain`, in order."""
    source = self.test_sources[domain]
    names = source.names()
    for index in range(len(source)):
      try:
        image = self._decoded(source, index, domain)
      except UnreadableImageError as error:
        if not self.skip_bad_images:
          raise
        logging.warning('Skipping an unreadable test image: %s', error)
        continue
      if isinstance(image, Image.Image):
        image = as_hwc(preprocess_for_test(image, self.preprocess, self.test_size))
      yield names[index], image

  def sample_images(self, n: int) -> dict[str, np.ndarray]:
    """The first n readable test images per domain (training images if there is no test split),
    float32 [-1, 1], crop_size square."""
    samples = {}
    for domain in DOMAINS:
      sources = self.test_sources if len(self.test_sources[domain]) else self.sources
      source, images, index = sources[domain], [], 0
      while len(images) < n and index < len(source):
        try:
          image = self._decoded(source, index, domain)
          if isinstance(image, Image.Image):
            image = as_hwc(preprocess_for_test(image, 'resize_and_crop', self.test_size))
          images.append(image)
        except UnreadableImageError as error:
          logging.warning('Skipping an unreadable sample image: %s', error)
        index += 1
      shape = (0, self.test_size, self.test_size, self.channels[domain])
      samples[domain] = from_uint8(np.stack(images) if images else np.zeros(shape, np.uint8))
    return samples

  def heldout_pairs(self) -> dict[str, np.ndarray] | None:
    """Embedded source: {'A': a, 'B': hue_rotate_120(a)} float32 [-1, 1]; other sources: None."""
    if self._heldout_uint8 is None:
      return None
    return {domain: from_uint8(images) for domain, images in self._heldout_uint8.items()}


class BatchIterator(Iterator[dict]):
  """Endless iterator over this process's rows of consecutive global batches.

  With prefetch > 0, a pool of worker threads decodes and augments the examples of up to
  `prefetch` batches ahead. `state()` is the iterator state a checkpoint records. Call close()
  (or use it as a context manager) to stop the workers; dropping the iterator also stops them.
  """

  def __init__(self, dataset: Dataset, batch_size: int, start_example: int, rows: range,
               num_workers: int, prefetch: int):
    if start_example < 0:
      raise ValueError(f'start_example must be >= 0, got {start_example}')
    self._dataset = dataset
    self._batch_size = batch_size
    self._rows = rows
    self._prefetch = prefetch
    self._next_example = start_example  # First example of the next batch next() returns.
    self._next_submitted = start_example
    self._pending = collections.deque()
    self._closed = False
    self._pool = None
    if prefetch > 0:
      self._pool = concurrent.futures.ThreadPoolExecutor(num_workers,
                                                         thread_name_prefix='cyclegan-data')
      self._shutdown = weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)

  def _examples(self, first_example: int) -> list[int]:
    return [first_example + row for row in self._rows]

  def _submit(self) -> None:
    examples = self._examples(self._next_submitted)
    futures = {
        domain: [self._pool.submit(self._dataset.training_example, e, domain) for e in examples]
        for domain in DOMAINS
    }
    self._pending.append((examples, futures))
    self._next_submitted += self._batch_size

  def __next__(self) -> dict:
    if self._closed:
      raise StopIteration
    try:
      if self._pool is None:
        examples = self._examples(self._next_example)
        images = {
            domain: [self._dataset.training_example(e, domain) for e in examples]
            for domain in DOMAINS
        }
      else:
        while len(self._pending) < self._prefetch:
          self._submit()
        examples, futures = self._pending.popleft()
        images = {domain: [future.result() for future in futures[domain]] for domain in DOMAINS}
      batch = {
          domain:
              _stack(images[domain],
                     lambda i, d=domain: self._dataset.describe_example(examples[i], d))
          for domain in DOMAINS
      }
    except BaseException:
      self.close()
      raise
    self._next_example += self._batch_size
    return {domain: from_uint8(images) for domain, images in batch.items()}

  def state(self) -> dict:
    """The dataset's `iterator_state` for the next batch this iterator returns."""
    return self._dataset.iterator_state(self._next_example)

  def close(self) -> None:
    """Stops the workers; later next() calls raise StopIteration."""
    self._closed = True
    if self._pool is not None:
      self._shutdown()

  def __enter__(self) -> 'BatchIterator':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def create_dataset(data_config: ml_collections.ConfigDict,
                   *,
                   seed: int,
                   channels_A: int = 3,
                   channels_B: int = 3) -> Dataset:
  """The `Dataset` described by `config.data` (see the module docstring); with
  config.data.direction 'BtoA' domains A and B of the source are swapped."""
  config_lib.validate_data(data_config)
  channels = {'A': channels_A, 'B': channels_B}
  swap = data_config.direction == 'BtoA'
  aligned = data_config.dataset_mode == 'aligned'
  if data_config.source == 'embedded':
    return _create_embedded(data_config, seed, channels, aligned, swap)
  if data_config.source == 'tfds':
    train, test, where = sources_lib.tfds_splits(data_config)
  else:
    train, test, where = sources_lib.folder_splits(data_config)
  halves = None
  if aligned:
    halves = {'A': 1, 'B': 0} if swap else {'A': 0, 'B': 1}
    summary = (f'{where}: {len(train["A"])} train and {len(test["A"])} test pairs (A | B images, '
               f'direction {data_config.direction})')
  else:
    if swap:
      train, test = _swapped(train), _swapped(test)
    summary = (f'{where}: {len(train["A"])} trainA, {len(train["B"])} trainB, '
               f'{len(test["A"])} testA, {len(test["B"])} testB images' +
               (' (direction BtoA: the source\'s B is domain A)' if swap else ''))
  summary += (f'; preprocess {data_config.preprocess} (load {data_config.load_size}, crop '
              f'{data_config.crop_size})')
  return Dataset(
      seed=seed,
      train=train,
      test=test,
      channels=channels,
      preprocess=data_config.preprocess,
      load_size=data_config.load_size,
      crop_size=data_config.crop_size,
      allow_flip=not data_config.no_flip,
      skip_bad_images=data_config.skip_bad_images,
      num_workers=data_config.num_workers,
      prefetch=data_config.prefetch,
      summary=summary,
      aligned=aligned,
      halves=halves,
  )


def _swapped(by_domain: dict) -> dict:
  return {'A': by_domain['B'], 'B': by_domain['A']}


def _create_embedded(config, seed: int, channels: dict[str, int], aligned: bool,
                     swap: bool) -> Dataset:
  if tuple(channels.values()) != (3, 3):
    raise errors.InvalidValueError(
        'the embedded photos are RGB: set model.channels_A and model.channels_B to 3, '
        f'got {channels["A"]} and {channels["B"]}')
  crop_size = config.crop_size
  cell_size = embedded.embedded_cell_size(crop_size)
  train_uint8, heldout = embedded.embedded_images(crop_size, config.num_heldout, aligned)
  if swap:
    train_uint8, heldout = _swapped(train_uint8), _swapped(heldout)
  train = {
      domain: sources_lib.ArraySource(images, f'embedded train-{domain} cell')
      for domain, images in train_uint8.items()
  }
  test = {
      domain: sources_lib.ArraySource(images, f'heldout_{domain}')
      for domain, images in heldout.items()
  }
  cells = (f'{len(train["A"])} train pairs (a, hue-rotated a)'
           if aligned else f'{len(train["A"])} train-A and {len(train["B"])} train-B')
  summary = (f'embedded photos: {cells} cells of {cell_size} px, {len(heldout["A"])} held-out '
             f'pairs, crop {crop_size} px' + (', direction BtoA' if swap else ''))
  return Dataset(
      seed=seed,
      train=train,
      test=test,
      channels=channels,
      preprocess='crop',
      load_size=cell_size,
      crop_size=crop_size,
      allow_flip=not config.no_flip,
      num_workers=config.num_workers,
      prefetch=config.prefetch,
      heldout_uint8=heldout,
      summary=summary,
      aligned=aligned,
  )
