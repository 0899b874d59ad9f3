"""Unpaired training data for CycleGAN: the embedded offline photos or a CycleGAN folder dataset.

`create_dataset(config.data, seed=...)` returns a `Dataset` whose `train_batch(step, batch_size)`
is a pure function of (seed, step, batch_size), so a resumed run sees exactly the batches an
uninterrupted run would have seen; `train_iterator` prepares those batches in a background thread.

Sampling (the official unaligned dataset, made stateless). Example i = step * batch_size + j
belongs to epoch e = i // N, N = epoch_size = max(num_A, num_B). A permutation of range(N) seeded
from (seed, e) gives A index perm[i % N] % num_A (every A example once per epoch when
num_A == N); the B index is uniform, seeded from (seed, i); crop position and horizontal flip are
drawn per example and domain from (seed, i, domain). Each use has its own stream tag in the seed.

Source 'folder': `<root>/trainA`, `<root>/trainB` and optional `<root>/testA`, `<root>/testB`,
searched recursively for jpg/jpeg/png/bmp/ppm/tif/tiff/webp files (case-insensitive, hidden files
skipped), in sorted path order. Preprocess as the official code: 'resize_and_crop' (bicubic resize
to load_size x load_size, random crop_size crop), 'crop' (random crop of the image as is) or
'none' (bicubic resize of H and W to the nearest multiple of 4, as the official `__make_power_2`);
then a random horizontal flip unless no_flip; then scaling to [-1, 1].

Source 'embedded': the seven scikit-image photos in `assets/embedded_photos.npz` (see
`assets/LICENSES.md`), cut into square cells of side `crop_size + crop_size // 2`. Each photo's
grid of whole cells is centred in it; cell (row, col) of a photo whose cells are preceded by
`offset` cells of the earlier photos (sorted by name) gets role ROLE_PATTERN[(col + 2 * row +
offset) % 5] = train-A, train-B, train-A, train-B, held-out: 40/40/20 %, no two horizontal
neighbours alike. A crop never leaves its cell, so domains A and B and the held-out set never
share a pixel. Domain A = crops of train-A cells; domain B = hue_rotate_120 of crops of train-B
cells. One training example is one cell (num_A = number of train-A cells), cropped at a random
position inside it. Held-out pairs are the 3 x 3 grid of crops at offsets 0, (cell - crop) / 2
and cell - crop in every held-out cell, a, with ground truth T(a) = hue_rotate_120(a); they are
ordered centre crops first, interleaving the photos, so any prefix is spread over all photos.
"""

from collections.abc import Callable, Iterator
import dataclasses
import functools
import importlib.resources
import os
import pathlib
import queue
import threading
from typing import Protocol
import weakref

import ml_collections
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.tif', '.tiff', '.webp')
PREPROCESS_MODES = ('resize_and_crop', 'crop', 'none')
EMBEDDED_PHOTOS_FILE = 'embedded_photos.npz'

TRAIN_A, TRAIN_B, HELDOUT = 'train_A', 'train_B', 'heldout'
ROLE_PATTERN = (TRAIN_A, TRAIN_B, TRAIN_A, TRAIN_B, HELDOUT)

DOMAINS = ('A', 'B')
# Stream tags keep the three kinds of randomness independent even when e.g. epoch == example.
_EPOCH_STREAM, _B_INDEX_STREAM, _AUGMENT_STREAM = 0, 1, 2

_FOLDER_LAYOUT = (
    'expected <root>/trainA and <root>/trainB (optionally testA, testB) holding images, '
    'the layout of the CycleGAN datasets (e.g. horse2zebra.zip)')

# ----------------------------------------------------------------------------------------------
# Pixel helpers.


def hue_rotate_120(image):
  """RGB -> (B, R, G): a 120 degree hue rotation (pure red becomes pure green). NumPy or JAX."""
  return image[..., (2, 0, 1)]


def inverse_hue_rotate_120(image):
  """(R, G, B) -> (G, B, R): undoes `hue_rotate_120` (pure green becomes pure red)."""
  return image[..., (1, 2, 0)]


def from_uint8(image: np.ndarray) -> np.ndarray:
  """uint8 0..255 -> float32 in [-1, 1] (as torchvision ToTensor + Normalize(0.5, 0.5))."""
  return np.asarray(image).astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def to_uint8(image) -> np.ndarray:
  """float in [-1, 1] -> uint8, truncating like the official `util.tensor2im`.

  (x + 1) / 2 * 255 then astype(uint8); values outside [-1, 1] are clipped first (the official
  code leaves that cast undefined). Truncation makes to_uint8(from_uint8(u)) == u - 1 for 63 of
  the 256 values of u: faithful to the official PNGs, not a lossless round trip.
  """
  scaled = (np.asarray(image, dtype=np.float32) + 1.0) / 2.0 * 255.0
  return np.clip(scaled, 0.0, 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# The embedded photos and their cells.


def load_embedded_photos() -> dict[str, np.ndarray]:
  """The photos shipped in the package: name -> read-only uint8 [H, W, 3] RGB."""
  return dict(_embedded_photos())


@functools.cache
def _embedded_photos() -> dict[str, np.ndarray]:
  assets = importlib.resources.files(__package__).joinpath('assets')
  resource = assets.joinpath(EMBEDDED_PHOTOS_FILE)
  with resource.open('rb') as file, np.load(file, allow_pickle=False) as archive:
    photos = {name: archive[name] for name in sorted(archive.files)}
  for photo in photos.values():
    photo.flags.writeable = False
  return photos


def embedded_cell_size(crop_size: int) -> int:
  """Side of an embedded cell: room for random crops to move by half a crop."""
  return crop_size + crop_size // 2


@dataclasses.dataclass(frozen=True)
class Cell:
  """One square cell of an embedded photo and the role it plays."""

  photo: str
  top: int
  left: int
  size: int
  role: str
  rank_in_photo: int  # Position among this photo's cells of the same role.

  def pixels(self, photos: dict[str, np.ndarray]) -> np.ndarray:
    rows = slice(self.top, self.top + self.size)
    return photos[self.photo][rows, self.left:self.left + self.size]


def embedded_cells(photo_shapes: dict[str, tuple[int, ...]], cell_size: int) -> list[Cell]:
  """Every cell of every photo (sorted by name), with its role; see the module docstring."""
  cells = []
  offset = 0
  for photo in sorted(photo_shapes):
    height, width = photo_shapes[photo][:2]
    rows, cols = height // cell_size, width // cell_size
    top, left = (height - rows * cell_size) // 2, (width - cols * cell_size) // 2
    role_counts = dict.fromkeys(ROLE_PATTERN, 0)
    for row in range(rows):
      for col in range(cols):
        role = ROLE_PATTERN[(col + 2 * row + offset) % len(ROLE_PATTERN)]
        cells.append(
            Cell(
                photo,
                top + row * cell_size,
                left + col * cell_size,
                cell_size,
                role,
                role_counts[role],
            ))
        role_counts[role] += 1
    offset += rows * cols
  return cells


def heldout_crop_offsets(cell_size: int, crop_size: int) -> list[tuple[int, int]]:
  """The 3 x 3 grid of crop positions in a held-out cell, centre first."""
  steps = (0, (cell_size - crop_size) // 2, cell_size - crop_size)
  centre = (steps[1], steps[1])
  return [centre] + [(y, x) for y in steps for x in steps if (y, x) != centre]


def heldout_crops(photos: dict[str, np.ndarray], cells: list[Cell], crop_size: int) -> np.ndarray:
  """uint8 [n, crop, crop, 3] crops of the held-out cells, ordered to spread over all photos."""
  photo_order = {photo: index for index, photo in enumerate(sorted(photos))}
  keyed = []
  for cell in cells:
    if cell.role != HELDOUT:
      continue
    pixels = cell.pixels(photos)
    for position, (y, x) in enumerate(heldout_crop_offsets(cell.size, crop_size)):
      key = (position, cell.rank_in_photo, photo_order[cell.photo])
      keyed.append((key, pixels[y:y + crop_size, x:x + crop_size]))
  keyed.sort(key=lambda item: item[0])
  return np.stack([crop for _, crop in keyed])


# ----------------------------------------------------------------------------------------------
# Image files.


def list_images(folder: pathlib.Path) -> list[pathlib.Path]:
  """Image files under `folder` (recursive, sorted, hidden files skipped)."""
  return sorted(path for path in folder.rglob('*') if path.suffix.lower() in IMAGE_EXTENSIONS and
                not path.name.startswith('.') and path.is_file())


def _to_8_bit(image: Image.Image) -> Image.Image:
  """16/32-bit integer greyscale -> 'L' by scaling 0..65535 to 0..255 (PIL would clip at 255)."""
  values = np.asarray(image, dtype=np.float64)
  return Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), mode='L')


def _convert(image: Image.Image, channels: int) -> Image.Image:
  """Any PIL image -> 'RGB' (channels 3) or 'L' (channels 1); alpha is dropped, as official."""
  if image.mode == 'I' or image.mode.startswith('I;16'):
    image = _to_8_bit(image)
  elif image.mode == 'P' and 'transparency' in image.info:
    image = image.convert('RGBA')  # Avoids PIL's warning; the alpha is dropped below.
  image = image.convert('RGB')
  return image if channels == 3 else image.convert('L')


def load_image(path: os.PathLike | str, channels: int) -> Image.Image:
  """Decodes an image file to 'RGB' or 'L'; a ValueError naming the file if it cannot."""
  try:
    with Image.open(path) as image:
      image.load()
      return _convert(image, channels)
  except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
    raise ValueError(f'cannot read image file {path}: {error}') from error


def image_size(path: os.PathLike | str) -> tuple[int, int]:
  """(width, height) from the file header, without decoding the pixels."""
  try:
    with Image.open(path) as image:
      return image.size
  except (OSError, SyntaxError, ValueError, EOFError) as error:
    raise ValueError(f'cannot read image file {path}: {error}') from error


def as_hwc(image: Image.Image) -> np.ndarray:
  """PIL image -> uint8 [H, W, C]."""
  array = np.asarray(image, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def nearest_multiple_of_4(size: tuple[int, int]) -> tuple[int, int]:
  """The official `__make_power_2(base=4)` size: each side rounded to the nearest multiple."""
  return tuple(max(4, int(round(side / 4) * 4)) for side in size)


# ----------------------------------------------------------------------------------------------
# Training sources: indexable collections of uint8 images, each cropped and flipped afterwards.


class TrainingSource(Protocol):

  def __len__(self) -> int:
    ...

  def training_image(self, index: int) -> np.ndarray:
    """uint8 [H, W, C], before the random crop and flip."""

  def describe(self, index: int) -> str:
    """Where example `index` comes from, for error messages."""


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """Examples held in memory (the embedded cells)."""

  images: np.ndarray
  name: str

  def __len__(self) -> int:
    return len(self.images)

  def training_image(self, index: int) -> np.ndarray:
    return self.images[index]

  def describe(self, index: int) -> str:
    return f'{self.name}[{index}]'


@dataclasses.dataclass(frozen=True)
class FolderSource:
  """Image files, decoded and resized on demand."""

  paths: tuple[pathlib.Path, ...]
  channels: int
  preprocess: str
  load_size: int

  def __len__(self) -> int:
    return len(self.paths)

  def training_image(self, index: int) -> np.ndarray:
    image = load_image(self.paths[index], self.channels)
    if self.preprocess == 'resize_and_crop':
      image = image.resize((self.load_size, self.load_size), Image.BICUBIC)
    elif self.preprocess == 'none' and nearest_multiple_of_4(image.size) != image.size:
      image = image.resize(nearest_multiple_of_4(image.size), Image.BICUBIC)
    return as_hwc(image)

  def describe(self, index: int) -> str:
    return str(self.paths[index])

  def training_sizes(self) -> dict[tuple[int, int], pathlib.Path]:
    """For preprocess 'none': each distinct (width, height) and one file that has it."""
    sizes = {}
    for path in self.paths:
      sizes.setdefault(nearest_multiple_of_4(image_size(path)), path)
    return sizes


# ----------------------------------------------------------------------------------------------
# Stateless sampling.


@dataclasses.dataclass(frozen=True)
class Augmentation:
  top: int
  left: int
  flip: bool


def sample_augmentation(
    seed: int,
    example: int,
    domain: str,
    image_shape: tuple[int, ...],
    crop_size: int | None,
    allow_flip: bool,
) -> Augmentation:
  """Crop position and flip of one example in one domain; crop_size None means no crop.

  All three numbers are always drawn, so no_flip and crop_size leave the others unchanged.
  """
  rng = np.random.default_rng([seed, _AUGMENT_STREAM, example, DOMAINS.index(domain)])
  height, width = image_shape[:2]
  crop_height, crop_width = (height, width) if crop_size is None else (crop_size, crop_size)
  top = int(rng.integers(0, height - crop_height + 1))
  left = int(rng.integers(0, width - crop_width + 1))
  flip = bool(rng.random() < 0.5)
  return Augmentation(top, left, flip and allow_flip)


def apply_augmentation(image: np.ndarray, augmentation: Augmentation,
                       crop_size: int | None) -> np.ndarray:
  if crop_size is not None:
    top, left = augmentation.top, augmentation.left
    image = image[top:top + crop_size, left:left + crop_size]
  return image[:, ::-1] if augmentation.flip else image


@functools.lru_cache(maxsize=16)
def epoch_permutation(seed: int, epoch: int, epoch_size: int) -> np.ndarray:
  """The order of epoch `epoch`: a read-only permutation of range(epoch_size)."""
  permutation = np.random.default_rng([seed, _EPOCH_STREAM, epoch]).permutation(epoch_size)
  permutation.flags.writeable = False
  return permutation


def _stack(images: list[np.ndarray]) -> np.ndarray:
  return np.stack([np.ascontiguousarray(image) for image in images])


# ----------------------------------------------------------------------------------------------
# The dataset the trainer uses.


class Dataset:
  """Training batches, sample images and (embedded source) paired held-out data.

  Attributes:
   num_A, num_B: training examples per domain: image files, or embedded train cells (each
    cropped at a random position, so there are many more distinct crops than examples).
   epoch_size: max(num_A, num_B), iterations per epoch at batch size 1.
   summary: one line describing the data, for logs.
  """

  def __init__(
      self,
      *,
      seed: int,
      source_A: TrainingSource,
      source_B: TrainingSource,
      crop_size: int | None,
      allow_flip: bool,
      prefetch: int,
      test_images: Callable[[int], dict[str, np.ndarray]],
      heldout_uint8: dict[str, np.ndarray] | None,
      summary: str,
  ):
    if seed < 0:
      raise ValueError(f'seed must be >= 0, got {seed}')
    self.seed = seed
    self.sources = {'A': source_A, 'B': source_B}
    self.crop_size = crop_size
    self.allow_flip = allow_flip
    self.prefetch = prefetch
    self.num_A, self.num_B = len(source_A), len(source_B)
    self.epoch_size = max(self.num_A, self.num_B)
    self.summary = summary
    self._test_images = test_images
    self._heldout_uint8 = heldout_uint8
    self._checked_uniform_size = False

  def example_indices(self, example: int) -> tuple[int, int]:
    """(A index, B index) of global example `example` = step * batch_size + j."""
    epoch, position = divmod(example, self.epoch_size)
    index_A = int(epoch_permutation(self.seed, epoch, self.epoch_size)[position]) % self.num_A
    rng = np.random.default_rng([self.seed, _B_INDEX_STREAM, example])
    return index_A, int(rng.integers(self.num_B))

  def training_example(self, example: int, domain: str, index: int) -> np.ndarray:
    """uint8 [H, W, C]: source image `index` of `domain`, cropped and flipped for `example`."""
    source = self.sources[domain]
    image = source.training_image(index)
    if self.crop_size is not None and min(image.shape[:2]) < self.crop_size:
      raise ValueError(
          f'{source.describe(index)} is {image.shape[1]}x{image.shape[0]} px, smaller than '
          f'config.data.crop_size={self.crop_size}; use preprocess "resize_and_crop" or a '
          'smaller crop_size')
    augmentation = sample_augmentation(self.seed, example, domain, image.shape, self.crop_size,
                                       self.allow_flip)
    return apply_augmentation(image, augmentation, self.crop_size)

  def train_batch_uint8(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """`train_batch` before scaling: uint8 [n, H, W, C] per domain."""
    if step < 0 or batch_size < 1:
      raise ValueError(f'need step >= 0 and batch_size >= 1, got {step}, {batch_size}')
    if batch_size > 1:
      self._check_uniform_size()
    examples = range(step * batch_size, (step + 1) * batch_size)
    crops = {'A': [], 'B': []}
    for example in examples:
      for domain, index in zip(DOMAINS, self.example_indices(example)):
        crops[domain].append(self.training_example(example, domain, index))
    return {domain: _stack(images) for domain, images in crops.items()}

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """{'A', 'B'}: float32 [n, H, W, C] in [-1, 1], a pure function of (seed, step, batch_size).

    Example j of the batch is global example step * batch_size + j.
    """
    return {
        domain: from_uint8(images)
        for domain, images in self.train_batch_uint8(step, batch_size).items()
    }

  def train_iterator(self, start_step: int, batch_size: int) -> 'BatchIterator':
    """train_batch(start_step), train_batch(start_step + 1), ... prepared `prefetch` ahead."""
    return BatchIterator(functools.partial(self.train_batch, batch_size=batch_size), start_step,
                         self.prefetch)

  def sample_images(self, n: int) -> dict[str, np.ndarray]:
    """Up to n fixed test (or held-out) images per domain, float32 [-1, 1], crop_size square."""
    return {domain: from_uint8(images) for domain, images in self._test_images(n).items()}

  def heldout_pairs(self) -> dict[str, np.ndarray] | None:
    """Embedded source: {'A': a, 'B': hue_rotate_120(a)} float32 [-1, 1]; folder: None."""
    if self._heldout_uint8 is None:
      return None
    return {domain: from_uint8(images) for domain, images in self._heldout_uint8.items()}

  def _check_uniform_size(self) -> None:
    """Batches of preprocess 'none' images need every image of a domain to share a size."""
    if self.crop_size is not None or self._checked_uniform_size:
      return
    for domain, source in self.sources.items():
      sizes = source.training_sizes()
      if len(sizes) > 1:
        first_two = list(sizes.items())[:2]
        examples = ', '.join(f'{path} ({w}x{h})' for (w, h), path in first_two)
        raise ValueError(f'config.data.preprocess="none" keeps image sizes, and train{domain} has '
                         f'{len(sizes)} different ones (e.g. {examples}): use batch_size 1 or '
                         'preprocess "resize_and_crop"')
    self._checked_uniform_size = True


# ----------------------------------------------------------------------------------------------
# Background prefetching.


@dataclasses.dataclass(frozen=True)
class _Failure:
  error: BaseException


def _produce_batches(make_batch: Callable[[int], dict], step: int, out: queue.Queue,
                     stop: threading.Event) -> None:
  while not stop.is_set():
    try:
      item = make_batch(step)
    except BaseException as error:  # Handed to the consumer, which re-raises it.
      item = _Failure(error)
    while not stop.is_set():
      try:
        out.put(item, timeout=0.05)
        break
      except queue.Full:
        pass
    if isinstance(item, _Failure):
      return
    step += 1


class BatchIterator(Iterator[dict]):
  """Endless iterator over make_batch(start_step), make_batch(start_step + 1), ...

  With prefetch > 0, a daemon thread computes up to `prefetch` batches ahead. Call close() (or
  use it as a context manager) to stop the thread; dropping the iterator also stops it.
  """

  def __init__(self, make_batch: Callable[[int], dict], start_step: int, prefetch: int):
    self._make_batch = make_batch
    self._next_step = start_step
    self._closed = False
    self._thread = None
    if prefetch > 0:
      self._queue = queue.Queue(maxsize=prefetch)
      stop = threading.Event()
      # The thread must not reference self, or the iterator could never be collected.
      self._thread = threading.Thread(
          target=_produce_batches,
          args=(make_batch, start_step, self._queue, stop),
          name='cyclegan-prefetch',
          daemon=True,
      )
      self._stop = weakref.finalize(self, stop.set)
      self._thread.start()

  def __next__(self) -> dict:
    if self._closed:
      raise StopIteration
    if self._thread is None:
      batch = self._make_batch(self._next_step)
    else:
      batch = self._queue.get()
      if isinstance(batch, _Failure):
        self.close()
        raise batch.error
    self._next_step += 1
    return batch

  def close(self) -> None:
    """Stops the background thread; later next() calls raise StopIteration."""
    self._closed = True
    if self._thread is not None:
      self._stop()
      self._thread.join(timeout=5.0)

  def __enter__(self) -> 'BatchIterator':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


# ----------------------------------------------------------------------------------------------
# Construction from the config.


def _validate(config: ml_collections.ConfigDict, channels_A: int, channels_B: int) -> None:
  if config.source not in ('embedded', 'folder'):
    raise ValueError(f'config.data.source must be "embedded" or "folder", got {config.source!r}')
  if config.crop_size < 4 or config.crop_size % 4:
    raise ValueError(
        f'config.data.crop_size must be a positive multiple of 4 (the generator downsamples '
        f'twice by 2), got {config.crop_size}')
  if config.preprocess not in PREPROCESS_MODES:
    raise ValueError(
        f'config.data.preprocess must be one of {PREPROCESS_MODES}, got {config.preprocess!r}')
  if config.source == 'folder' and config.preprocess == 'resize_and_crop':
    if config.load_size < config.crop_size:
      raise ValueError(f'config.data.load_size={config.load_size} is smaller than '
                       f'config.data.crop_size={config.crop_size}')
  if config.prefetch < 0 or config.num_heldout < 0:
    raise ValueError('config.data.prefetch and config.data.num_heldout must be >= 0')
  for name, channels in (('A', channels_A), ('B', channels_B)):
    if channels not in (1, 3):
      raise ValueError(f'channels_{name} must be 1 or 3, got {channels}')


def create_dataset(data_config: ml_collections.ConfigDict,
                   *,
                   seed: int,
                   channels_A: int = 3,
                   channels_B: int = 3) -> Dataset:
  """The `Dataset` described by `config.data` (see the module docstring)."""
  _validate(data_config, channels_A, channels_B)
  if data_config.source == 'embedded':
    return _create_embedded(data_config, seed, channels_A, channels_B)
  return _create_folder(data_config, seed, channels_A, channels_B)


def _create_embedded(config, seed: int, channels_A: int, channels_B: int) -> Dataset:
  if (channels_A, channels_B) != (3, 3):
    raise ValueError('the embedded photos are RGB: set the model input_nc and output_nc to 3, '
                     f'got {channels_A} and {channels_B}')
  crop_size = config.crop_size
  photos = _embedded_photos()
  cell_size = embedded_cell_size(crop_size)
  cells = embedded_cells({name: photo.shape for name, photo in photos.items()}, cell_size)
  by_role = {role: [c.pixels(photos) for c in cells if c.role == role] for role in ROLE_PATTERN}
  if not all(by_role.values()):
    counts = {role: len(found) for role, found in by_role.items()}
    raise ValueError(
        f'config.data.crop_size={crop_size} is too large for the embedded photos (long side '
        f'{max(max(p.shape[:2]) for p in photos.values())} px): cells of {cell_size} px give '
        f'{counts}; use a smaller crop_size (64 works)')
  all_heldout_A = heldout_crops(photos, cells, crop_size)
  all_heldout_B = hue_rotate_120(all_heldout_A)
  num_heldout = min(config.num_heldout or len(all_heldout_A), len(all_heldout_A))
  heldout = {'A': all_heldout_A[:num_heldout], 'B': all_heldout_B[:num_heldout]}
  source_A = ArraySource(np.stack(by_role[TRAIN_A]), 'embedded train-A cell')
  source_B = ArraySource(hue_rotate_120(np.stack(by_role[TRAIN_B])), 'embedded train-B cell')
  summary = (f'embedded photos: {len(source_A)} train-A and {len(source_B)} train-B cells of '
             f'{cell_size} px, {num_heldout} held-out pairs, crop {crop_size} px')
  return Dataset(
      seed=seed,
      source_A=source_A,
      source_B=source_B,
      crop_size=crop_size,
      allow_flip=not config.no_flip,
      prefetch=config.prefetch,
      test_images=lambda n: {
          'A': all_heldout_A[:max(n, 0)],
          'B': all_heldout_B[:max(n, 0)]
      },
      heldout_uint8=heldout,
      summary=summary,
  )


def _require_images(root: pathlib.Path, split: str) -> list[pathlib.Path]:
  folder = root / split
  if not folder.is_dir():
    raise FileNotFoundError(
        f'{folder} not found (config.data.root={str(root)!r}): {_FOLDER_LAYOUT}')
  paths = list_images(folder)
  if not paths:
    raise ValueError(f'{folder} holds no {"/".join(e[1:] for e in IMAGE_EXTENSIONS)} images '
                     f'(config.data.root={str(root)!r}): {_FOLDER_LAYOUT}')
  return paths


def _resized_test_images(paths: list[pathlib.Path], n: int, channels: int, size: int) -> np.ndarray:
  """The first n images of `paths`, bicubic-resized to size x size, uint8 [n, size, size, C]."""
  images = [
      as_hwc(load_image(path, channels).resize((size, size), Image.BICUBIC))
      for path in paths[:max(n, 0)]
  ]
  return np.stack(images) if images else np.zeros((0, size, size, channels), np.uint8)


def _create_folder(config, seed: int, channels_A: int, channels_B: int) -> Dataset:
  if not config.root:
    raise ValueError(f'config.data.root is empty; source "folder" needs it: {_FOLDER_LAYOUT}')
  root = pathlib.Path(config.root).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(
        f'config.data.root={config.root!r}: folder {root} does not exist; {_FOLDER_LAYOUT}')
  train = {domain: _require_images(root, f'train{domain}') for domain in DOMAINS}
  channels = {'A': channels_A, 'B': channels_B}
  # Sample grids use the test split when there is one, else the first training images.
  test = {
      domain: (list_images(root / f'test{domain}') if
               (root / f'test{domain}').is_dir() else []) or train[domain] for domain in DOMAINS
  }
  sources = {
      domain:
          FolderSource(tuple(train[domain]), channels[domain], config.preprocess, config.load_size)
      for domain in DOMAINS
  }
  crop_size = None if config.preprocess == 'none' else config.crop_size
  test_size = config.crop_size
  summary = (f'folder {root}: {len(train["A"])} trainA, {len(train["B"])} trainB images, '
             f'preprocess {config.preprocess} (load {config.load_size}, crop {config.crop_size})')
  return Dataset(
      seed=seed,
      source_A=sources['A'],
      source_B=sources['B'],
      crop_size=crop_size,
      allow_flip=not config.no_flip,
      prefetch=config.prefetch,
      test_images=lambda n: {
          domain: _resized_test_images(test[domain], n, channels[domain], test_size)
          for domain in DOMAINS
      },
      heldout_uint8=None,
      summary=summary,
  )
