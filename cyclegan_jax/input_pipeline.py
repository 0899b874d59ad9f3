"""Unpaired training data for CycleGAN from TFDS, image folders, zips or the embedded photos.

Sources (`config.data.source`):
 - 'tfds': the prepared TFDS dataset `config.data.tfds_name` (e.g. 'cycle_gan/horse2zebra') in
   `config.data.tfds_data_dir`, read in array_record format without TensorFlow; splits trainA,
   trainB, testA, testB.
 - 'folder': `config.data.root` is a directory, or a zip file such as the official
   horse2zebra.zip read in place, holding trainA/ and trainB/ (testA/ and testB/ optional; in a
   zip they may sit under one top-level folder). Splits are searched recursively for
   jpg/jpeg/png/bmp/ppm/tif/tiff/webp files (case-insensitive; hidden files, `__MACOSX` and other
   files ignored), in sorted path order.
 - 'embedded': the seven scikit-image photos in `assets/embedded_photos.npz` (see below).

Channel policy (`decode_image`), for `model.input_nc`/`output_nc` of 3 or 1: every image becomes
8-bit RGB first: greyscale is replicated, palette images go through their palette, alpha is
dropped (as the official `convert('RGB')`), CMYK/YCbCr are converted, and 16-bit integer images
are scaled from 0..65535 to 0..255 (16-bit RGB is read by Pillow as 8-bit). With 1 channel the
RGB image is then reduced to luma (ITU-R 601-2, Pillow's 'L', as torchvision's Grayscale).

Training preprocessing (`preprocess_for_training`, the official `get_transform`): 'resize_and_crop'
(bicubic resize to load_size x load_size, random crop_size crop), 'crop' (random crop of the image
as is), 'scale_width' (bicubic resize to width load_size keeping the aspect ratio, height at least
crop_size; no crop), 'scale_width_and_crop' (that, then a random crop), 'none' (bicubic resize of
each side to the nearest multiple of 4, as the official `__make_power_2`); then a random horizontal
flip unless no_flip; then scaling to [-1, 1]. A cropping mode upscales (bicubic, aspect kept) an
image whose short side is below crop_size instead of failing. Test images (`test_images`): sorted
order, no flip, bicubic resize to crop_size x crop_size ('none': to multiples of 4), every image.

Unreadable images (corrupt, truncated, vanished) are skipped with a warning naming the file and a
running count, the example taking the next readable image of its split, or raise if
`config.data.skip_bad_images` is False.

Sampling (the official unaligned dataset, made stateless). Example i belongs to epoch
e = i // N, N = epoch_size = max(num_A, num_B). A permutation of range(N) seeded from (seed, e)
gives A index perm[i % N] % num_A (every A example once per epoch when num_A == N); the B index is
uniform, seeded from (seed, i); crop position and flip are drawn per example and domain from
(seed, i, domain). Each use has its own stream tag in the seed. Global batch k of a run holds
examples start + k * B .. start + (k + 1) * B - 1, and process p of P reads its B / P consecutive
rows of it: every process reads a disjoint shard, and the global batch does not depend on the
number of processes. The iterator state is therefore one integer, the next example
(`BatchIterator.state()`), saved with each checkpoint. Decoding and augmentation run on a pool of
`config.data.num_workers` threads (Pillow releases the GIL) up to `config.data.prefetch` batches
ahead of the train step.

Source 'embedded': the photos are cut into square cells of side `crop_size + crop_size // 2`.
Each photo's grid of whole cells is centred in it; cell (row, col) of a photo whose cells are
preceded by `offset` cells of the earlier photos (sorted by name) gets role
ROLE_PATTERN[(col + 2 * row + offset) % 5] = train-A, train-B, train-A, train-B, held-out:
40/40/20 %, no two horizontal neighbours alike. A crop never leaves its cell, so domains A and B
and the held-out set never share a pixel. Domain A = crops of train-A cells; domain B =
hue_rotate_120 of crops of train-B cells. One training example is one cell (num_A = number of
train-A cells), cropped at a random position inside it (preprocess and load_size do not apply).
Held-out pairs are the 3 x 3 grid of crops at offsets 0, (cell - crop) / 2 and cell - crop in
every held-out cell, a, with ground truth T(a) = hue_rotate_120(a); they are ordered centre crops
first, interleaving the photos, so any prefix is spread over all photos. They are the test split.
"""

import collections
from collections.abc import Callable, Iterator, Sequence
import concurrent.futures
import dataclasses
import functools
import hashlib
import importlib.resources
import io
import logging
import os
import pathlib
import threading
from typing import Protocol
import weakref
import zipfile

import ml_collections
import numpy as np
from PIL import Image

from cyclegan_jax import errors

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.tif', '.tiff', '.webp')
SOURCES = ('embedded', 'folder', 'tfds')
PREPROCESS_MODES = ('resize_and_crop', 'crop', 'scale_width', 'scale_width_and_crop', 'none')
# Modes whose output size depends on the image: batches need equal sizes, pools are impossible.
UNCROPPED_MODES = ('scale_width', 'none')
EMBEDDED_PHOTOS_FILE = 'embedded_photos.npz'
SPLITS = ('trainA', 'trainB', 'testA', 'testB')

TRAIN_A, TRAIN_B, HELDOUT = 'train_A', 'train_B', 'heldout'
ROLE_PATTERN = (TRAIN_A, TRAIN_B, TRAIN_A, TRAIN_B, HELDOUT)

DOMAINS = ('A', 'B')
# Stream tags keep the three kinds of randomness independent even when e.g. epoch == example.
_EPOCH_STREAM, _B_INDEX_STREAM, _AUGMENT_STREAM = 0, 1, 2

_FOLDER_LAYOUT = (
    'expected a folder or .zip holding trainA/ and trainB/ (optionally testA/, testB/) with '
    'images, the layout of the CycleGAN datasets (e.g. horse2zebra.zip)')
_TFDS_HELP = (
    'Prepare it once, without TensorFlow, from the official zip: `python -m '
    'cyclegan_jax.prepare_tfds --name={name} --source=/path/to/{name}.zip --data_dir={data_dir}`; '
    'or with TensorFlow and internet: `tfds build {tfds_name} --file_format=array_record '
    '--data_dir={data_dir}`. Or train from the zip or its folder directly: '
    '--config.data.source=folder --config.data.root=/path/to/{name}.zip')

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
# Decoding and the channel policy.


class UnreadableImageError(errors.InvalidValueError):
  """An image file that cannot be read or decoded; the message names it."""


def _to_8_bit(image: Image.Image) -> Image.Image:
  """16/32-bit integer greyscale -> 'L' by scaling 0..65535 to 0..255 (PIL would clip at 255)."""
  values = np.asarray(image, dtype=np.float64)
  return Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), mode='L')


def convert_channels(image: Image.Image, channels: int) -> Image.Image:
  """Any PIL image -> 'RGB' (channels 3) or 'L' (channels 1), by the module's channel policy."""
  if image.mode == 'I' or image.mode.startswith('I;16'):
    image = _to_8_bit(image)
  elif image.mode == 'P' and 'transparency' in image.info:
    image = image.convert('RGBA')  # Avoids PIL's warning; the alpha is dropped below.
  image = image.convert('RGB')
  return image if channels == 3 else image.convert('L')


DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def decode_image(data: bytes, channels: int, name: str) -> Image.Image:
  """Encoded image bytes -> 'RGB' or 'L' PIL image; UnreadableImageError naming `name`."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      return convert_channels(image, channels)
  except DECODE_ERRORS as error:
    raise UnreadableImageError(f'cannot read image {name}: {error}') from error


def load_image(path: os.PathLike | str, channels: int) -> Image.Image:
  """Decodes an image file to 'RGB' or 'L'; UnreadableImageError naming the file if it cannot."""
  try:
    data = pathlib.Path(path).read_bytes()
  except OSError as error:
    raise UnreadableImageError(f'cannot read image {path}: {error}') from error
  return decode_image(data, channels, str(path))


def as_hwc(image: Image.Image) -> np.ndarray:
  """PIL image -> uint8 [H, W, C]."""
  array = np.asarray(image, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def is_hidden(name: str) -> bool:
  """A hidden or `__MACOSX` path component: an archiver's or file manager's file."""
  parts = pathlib.PurePosixPath(name.replace(os.sep, '/')).parts
  return any(part.startswith('.') or part == '__MACOSX' for part in parts)


def is_image_name(name: str) -> bool:
  """An image extension, and no hidden or `__MACOSX` path component."""
  return pathlib.PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(name)


def list_images(folder: pathlib.Path) -> list[pathlib.Path]:
  """Image files under `folder` (recursive, sorted, hidden files skipped); the other files are
  reported (`report_ignored`)."""
  files = sorted(path for path in folder.rglob('*')
                 if path.is_file() and not is_hidden(str(path.relative_to(folder))))
  report_ignored([str(path.relative_to(folder)) for path in files if not is_image_name(path.name)],
                 str(folder))
  return [path for path in files if is_image_name(path.name)]


def report_ignored(names: Sequence[str], where: str, limit: int = 10) -> None:
  """A warning listing files that are skipped because they are not images of a known type."""
  if not names:
    return
  shown = ', '.join(
      names[:limit]) + (f' and {len(names) - limit} more' if len(names) > limit else '')
  logging.warning('Ignoring %d file(s) in %s that are not %s images: %s.', len(names), where,
                  '/'.join(extension[1:] for extension in IMAGE_EXTENSIONS), shown)


# ----------------------------------------------------------------------------------------------
# Preprocessing (the official get_transform).


def nearest_multiple_of_4(size: tuple[int, int]) -> tuple[int, int]:
  """The official `__make_power_2(base=4)` size: each side rounded to the nearest multiple."""
  return tuple(max(4, int(round(side / 4) * 4)) for side in size)


def scale_width_size(size: tuple[int, int], target_width: int, crop_size: int) -> tuple[int, int]:
  """The official `__scale_width` (width, height): width target_width, height >= crop_size."""
  width, height = size
  if width == target_width and height >= crop_size:
    return size
  return target_width, int(max(target_width * height / width, crop_size))


def _at_least(image: Image.Image, crop_size: int) -> Image.Image:
  """Upscales (bicubic, aspect kept) so that both sides are >= crop_size."""
  width, height = image.size
  if min(width, height) >= crop_size:
    return image
  if width <= height:
    size = (crop_size, max(crop_size, round(height * crop_size / width)))
  else:
    size = (max(crop_size, round(width * crop_size / height)), crop_size)
  return image.resize(size, Image.BICUBIC)


def preprocess_for_training(image: Image.Image, preprocess: str, load_size: int,
                            crop_size: int) -> Image.Image:
  """The resize step of `preprocess` (before the random crop and flip)."""
  if preprocess == 'resize_and_crop':
    image = image.resize((load_size, load_size), Image.BICUBIC)
  elif preprocess.startswith('scale_width'):
    size = scale_width_size(image.size, load_size, crop_size)
    if size != image.size:
      image = image.resize(size, Image.BICUBIC)
  elif preprocess == 'none':
    size = nearest_multiple_of_4(image.size)
    if size != image.size:
      image = image.resize(size, Image.BICUBIC)
  if preprocess.endswith('crop'):
    image = _at_least(image, crop_size)
  return image


def training_size(size: tuple[int, int], preprocess: str, load_size: int,
                  crop_size: int) -> tuple[int, int]:
  """(width, height) of a training example of an image of `size`, for preprocess modes without a
  crop (with one, it is crop_size x crop_size)."""
  if preprocess == 'none':
    return nearest_multiple_of_4(size)
  if preprocess == 'scale_width':
    return scale_width_size(size, load_size, crop_size)
  return crop_size, crop_size


def preprocess_for_test(image: Image.Image, preprocess: str, crop_size: int) -> Image.Image:
  """Test images: bicubic resize to crop_size x crop_size, or to multiples of 4 for 'none'."""
  size = nearest_multiple_of_4(image.size) if preprocess == 'none' else (crop_size, crop_size)
  return image if size == image.size else image.resize(size, Image.BICUBIC)


# ----------------------------------------------------------------------------------------------
# Sources: random access to the images of one split.


class Source(Protocol):
  """The images of one split: encoded bytes, or (embedded source) uint8 [H, W, C] arrays."""

  def __len__(self) -> int:
    ...

  def read(self, index: int) -> bytes | np.ndarray:
    """Raises UnreadableImageError naming the image if it cannot be read."""

  def describe(self, index: int) -> str:
    """Where image `index` comes from, for messages."""

  def names(self) -> list[str]:
    """A name per image (relative path, or position), in order."""


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """Images held in memory (the embedded cells)."""

  images: np.ndarray
  name: str

  def __len__(self) -> int:
    return len(self.images)

  def read(self, index: int) -> np.ndarray:
    return self.images[index]

  def describe(self, index: int) -> str:
    return f'{self.name}[{index}]'

  def names(self) -> list[str]:
    return [f'{self.name}_{index:05d}' for index in range(len(self))]


@dataclasses.dataclass(frozen=True)
class FileSource:
  """Image files of one split folder."""

  folder: pathlib.Path
  paths: tuple[pathlib.Path, ...]

  def __len__(self) -> int:
    return len(self.paths)

  def read(self, index: int) -> bytes:
    try:
      return self.paths[index].read_bytes()
    except OSError as error:
      raise UnreadableImageError(f'cannot read image {self.paths[index]}: {error}') from error

  def describe(self, index: int) -> str:
    return str(self.paths[index])

  def names(self) -> list[str]:
    return [path.relative_to(self.folder).as_posix() for path in self.paths]


class ZipSource:
  """Image members of one split of a zip, read in place (one open handle per thread)."""

  def __init__(self, zip_path: pathlib.Path, split_prefix: str, members: Sequence[str]):
    self.zip_path = zip_path
    self.split_prefix = split_prefix
    self.members = tuple(members)
    self._local = threading.local()

  def __len__(self) -> int:
    return len(self.members)

  def read(self, index: int) -> bytes:
    member = self.members[index]
    try:
      archive = getattr(self._local, 'archive', None)
      if archive is None:
        archive = self._local.archive = zipfile.ZipFile(self.zip_path)
      return archive.read(member)
    except (OSError, zipfile.BadZipFile, KeyError, EOFError, ValueError) as error:
      raise UnreadableImageError(f'cannot read image {self.describe(index)}: {error}') from error

  def describe(self, index: int) -> str:
    return f'{self.zip_path}:{self.members[index]}'

  def names(self) -> list[str]:
    return [member[len(self.split_prefix):] for member in self.members]


class TfdsSource:
  """One split of a prepared TFDS image dataset in array_record format, images left encoded."""

  def __init__(self, builder, split: str):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self.dataset = builder.info.full_name
    self.split = split
    self._records = builder.as_data_source(split=split,
                                           decoders={'image': tfds.decode.SkipDecoding()})

  def __len__(self) -> int:
    return len(self._records)

  def read(self, index: int) -> bytes:
    try:
      return self._records[index]['image']
    except (OSError, ValueError, RuntimeError) as error:
      raise UnreadableImageError(f'cannot read {self.describe(index)}: {error}') from error

  def describe(self, index: int) -> str:
    return f'{self.dataset} {self.split}[{index}]'

  def names(self) -> list[str]:
    return [f'{self.split}_{index:05d}' for index in range(len(self))]


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


def local_rows(batch_size: int, process_index: int, process_count: int) -> range:
  """The rows of a global batch that process `process_index` of `process_count` reads."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} outside 0..{process_count - 1}')
  if batch_size % process_count:
    raise errors.InvalidValueError(
        f'config.batch_size={batch_size} does not divide over {process_count} '
        'processes; use a multiple of the process count')
  per_process = batch_size // process_count
  return range(process_index * per_process, (process_index + 1) * per_process)


def _stack(images: list[np.ndarray], describe: Callable[[int], str]) -> np.ndarray:
  shapes = [image.shape for image in images]
  if len(set(shapes)) > 1:
    first, other = 0, next(i for i, shape in enumerate(shapes) if shape != shapes[0])
    raise errors.InvalidValueError(
        f'a batch needs images of one size, but {describe(first)} is {shapes[first][1]}x'
        f'{shapes[first][0]} px and {describe(other)} is {shapes[other][1]}x{shapes[other][0]} '
        'px after preprocessing: use batch_size 1 or a cropping config.data.preprocess')
  return np.stack([np.ascontiguousarray(image) for image in images])


# ----------------------------------------------------------------------------------------------
# The dataset the trainer uses.


class Dataset:
  """Training batches, test images and (embedded source) paired held-out data.

  Attributes:
   num_A, num_B: training images per domain (embedded: train cells, each cropped at a random
    position, so there are many more distinct crops than examples).
   epoch_size: max(num_A, num_B), iterations per epoch at batch size 1.
   crop_size: the training crop, None for preprocess modes without one.
   fingerprint: identifies the training images (names and counts), to detect a changed dataset
    when a run resumes.
   summary: one line describing the data, for logs.
  """

  def __init__(
      self,
      *,
      seed: int,
      train: dict[str, Source],
      test: dict[str, Source],
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
  ):
    if seed < 0:
      raise ValueError(f'seed must be >= 0, got {seed}')
    self.seed = seed
    self.sources = train
    self.test_sources = test
    self.channels = channels
    self.preprocess = preprocess
    self.load_size = load_size
    self.test_size = crop_size
    self.crop_size = None if preprocess in UNCROPPED_MODES else crop_size
    self.allow_flip = allow_flip
    self.skip_bad_images = skip_bad_images
    self.num_workers = num_workers or os.cpu_count() or 1
    self.prefetch = prefetch
    self.num_A, self.num_B = len(train['A']), len(train['B'])
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
    epoch, position = divmod(example, self.epoch_size)
    index_A = int(epoch_permutation(self.seed, epoch, self.epoch_size)[position]) % self.num_A
    rng = np.random.default_rng([self.seed, _B_INDEX_STREAM, example])
    return index_A, int(rng.integers(self.num_B))

  def _decoded(self, source: Source, index: int, channels: int) -> Image.Image | np.ndarray:
    data = source.read(index)
    if isinstance(data, np.ndarray):
      return data
    return decode_image(data, channels, source.describe(index))

  def _readable(self, sources: dict[str, Source], domain: str, index: int,
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
      image = self._decoded(source, candidate, self.channels[domain])
      if isinstance(image, Image.Image):
        image = as_hwc(
            preprocess_for_training(image, self.preprocess, self.load_size, self.test_size))
      return image

    return self._readable(self.sources, domain, index, load)[1]

  def training_example(self, example: int, domain: str) -> np.ndarray:
    """uint8 [H, W, C]: global example `example` of `domain`, preprocessed, cropped, flipped."""
    index = self.example_indices(example)[DOMAINS.index(domain)]
    image = self._training_image(domain, index)
    augmentation = sample_augmentation(self.seed, example, domain, image.shape, self.crop_size,
                                       self.allow_flip)
    return apply_augmentation(image, augmentation, self.crop_size)

  def describe_example(self, example: int, domain: str) -> str:
    return self.sources[domain].describe(self.example_indices(example)[DOMAINS.index(domain)])

  def examples_uint8(self, examples: Sequence[int]) -> dict[str, np.ndarray]:
    """uint8 [n, H, W, C] per domain for the given global examples."""
    if len(examples) > 1:
      self._check_uniform_size()
    return {
        domain:
            _stack([self.training_example(e, domain) for e in examples],
                   lambda i, d=domain: self.describe_example(examples[i], d)) for domain in DOMAINS
    }

  def train_batch_uint8(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """`train_batch` before scaling: uint8 [n, H, W, C] per domain."""
    if step < 0 or batch_size < 1:
      raise ValueError(f'need step >= 0 and batch_size >= 1, got {step}, {batch_size}')
    return self.examples_uint8(range(step * batch_size, (step + 1) * batch_size))

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """{'A', 'B'}: float32 [n, H, W, C] in [-1, 1], a pure function of (seed, step, batch_size).

    Example j of the batch is global example step * batch_size + j.
    """
    return {
        domain: from_uint8(images)
        for domain, images in self.train_batch_uint8(step, batch_size).items()
    }

  def train_iterator(self,
                     batch_size: int,
                     start_example: int = 0,
                     process_index: int = 0,
                     process_count: int = 1) -> 'BatchIterator':
    """This process's rows of the global batches from global example `start_example` on."""
    rows = local_rows(batch_size, process_index, process_count)
    if len(rows) > 1:
      self._check_uniform_size()
    return BatchIterator(self, batch_size, start_example, rows, self.num_workers, self.prefetch)

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
            size = training_size(image.size, self.preprocess, self.load_size, self.test_size)
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
        image = self._decoded(source, index, self.channels[domain])
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
          image = self._decoded(source, index, self.channels[domain])
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


# ----------------------------------------------------------------------------------------------
# Parallel, prefetching iteration.


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
    if self._pool is None:
      batch = self._dataset.examples_uint8(self._examples(self._next_example))
    else:
      while len(self._pending) < self._prefetch:
        self._submit()
      examples, futures = self._pending.popleft()
      try:
        batch = {
            domain:
                _stack([future.result() for future in futures[domain]],
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


# ----------------------------------------------------------------------------------------------
# Construction from the config.


def _validate(config: ml_collections.ConfigDict, channels: dict[str, int]) -> None:
  if config.source not in SOURCES:
    raise errors.InvalidValueError(
        f'config.data.source must be one of {SOURCES}, got {config.source!r}')
  if config.crop_size < 4 or config.crop_size % 4:
    raise errors.InvalidValueError(
        f'config.data.crop_size must be a positive multiple of 4 (the generator downsamples '
        f'twice by 2), got {config.crop_size}')
  if config.preprocess not in PREPROCESS_MODES:
    raise errors.InvalidValueError(
        f'config.data.preprocess must be one of {PREPROCESS_MODES}, got {config.preprocess!r}')
  if config.source != 'embedded' and config.preprocess in ('resize_and_crop',
                                                           'scale_width_and_crop'):
    if config.load_size < config.crop_size:
      raise errors.InvalidValueError(f'config.data.load_size={config.load_size} is smaller than '
                                     f'config.data.crop_size={config.crop_size}')
  if config.prefetch < 0 or config.num_heldout < 0 or config.num_workers < 0:
    raise errors.InvalidValueError('config.data.prefetch, num_workers and num_heldout must be >= 0')
  for domain, count in channels.items():
    if count not in (1, 3):
      raise errors.InvalidValueError(f'domain {domain} must have 1 or 3 channels, got {count}')


def create_dataset(data_config: ml_collections.ConfigDict,
                   *,
                   seed: int,
                   channels_A: int = 3,
                   channels_B: int = 3) -> Dataset:
  """The `Dataset` described by `config.data` (see the module docstring)."""
  channels = {'A': channels_A, 'B': channels_B}
  _validate(data_config, channels)
  if data_config.source == 'embedded':
    return _create_embedded(data_config, seed, channels)
  if data_config.source == 'tfds':
    train, test, where = _tfds_splits(data_config)
  else:
    train, test, where = _folder_splits(data_config)
  summary = (f'{where}: {len(train["A"])} trainA, {len(train["B"])} trainB, '
             f'{len(test["A"])} testA, {len(test["B"])} testB images; preprocess '
             f'{data_config.preprocess} (load {data_config.load_size}, crop '
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
  )


def _create_embedded(config, seed: int, channels: dict[str, int]) -> Dataset:
  if tuple(channels.values()) != (3, 3):
    raise errors.InvalidValueError(
        'the embedded photos are RGB: set the model input_nc and output_nc to 3, '
        f'got {channels["A"]} and {channels["B"]}')
  crop_size = config.crop_size
  photos = _embedded_photos()
  cell_size = embedded_cell_size(crop_size)
  cells = embedded_cells({name: photo.shape for name, photo in photos.items()}, cell_size)
  by_role = {role: [c.pixels(photos) for c in cells if c.role == role] for role in ROLE_PATTERN}
  if not all(by_role.values()):
    counts = {role: len(found) for role, found in by_role.items()}
    raise errors.InvalidValueError(
        f'config.data.crop_size={crop_size} is too large for the embedded photos (long side '
        f'{max(max(p.shape[:2]) for p in photos.values())} px): cells of {cell_size} px give '
        f'{counts}; use a smaller crop_size (64 works)')
  all_heldout_A = heldout_crops(photos, cells, crop_size)
  all_heldout_B = hue_rotate_120(all_heldout_A)
  num_heldout = min(config.num_heldout or len(all_heldout_A), len(all_heldout_A))
  heldout = {'A': all_heldout_A[:num_heldout], 'B': all_heldout_B[:num_heldout]}
  train = {
      'A': ArraySource(np.stack(by_role[TRAIN_A]), 'embedded train-A cell'),
      'B': ArraySource(hue_rotate_120(np.stack(by_role[TRAIN_B])), 'embedded train-B cell'),
  }
  test = {domain: ArraySource(images, f'heldout_{domain}') for domain, images in heldout.items()}
  summary = (f'embedded photos: {len(train["A"])} train-A and {len(train["B"])} train-B cells '
             f'of {cell_size} px, {num_heldout} held-out pairs, crop {crop_size} px')
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
  )


def _folder_splits(config) -> tuple[dict[str, Source], dict[str, Source], str]:
  if not config.root:
    raise errors.InvalidValueError(
        f'config.data.root is empty; source "folder" needs it: {_FOLDER_LAYOUT}')
  root = pathlib.Path(config.root).expanduser()
  if root.is_file():
    sources = _zip_sources(root)
  elif root.is_dir():
    sources = _directory_sources(root)
  else:
    raise errors.PathNotFoundError(
        f'config.data.root={config.root!r}: {root} does not exist; {_FOLDER_LAYOUT}')
  return _by_domain(sources, 'train'), _by_domain(sources, 'test'), str(root)


def _by_domain(sources: dict[str, Source], prefix: str) -> dict[str, Source]:
  return {domain: sources[prefix + domain] for domain in DOMAINS}


def _no_images(where: str, root: pathlib.Path) -> errors.InvalidValueError:
  return errors.InvalidValueError(
      f'{where} holds no {"/".join(e[1:] for e in IMAGE_EXTENSIONS)} images '
      f'(config.data.root={str(root)!r}): {_FOLDER_LAYOUT}')


def _directory_sources(root: pathlib.Path) -> dict[str, Source]:
  sources = {}
  for split in SPLITS:
    folder = root / split
    if not folder.is_dir():
      if split.startswith('train'):
        raise errors.PathNotFoundError(
            f'{folder} not found (config.data.root={str(root)!r}): {_FOLDER_LAYOUT}')
      sources[split] = FileSource(folder, ())
      continue
    sources[split] = FileSource(folder, tuple(list_images(folder)))
    if split.startswith('train') and not sources[split].paths:
      raise _no_images(str(folder), root)
  return sources


def _zip_sources(zip_path: pathlib.Path) -> dict[str, Source]:
  """The splits of a zip in the CycleGAN layout, at its root or under one top-level folder."""
  try:
    with zipfile.ZipFile(zip_path) as archive:
      names = [info.filename for info in archive.infolist() if not info.is_dir()]
  except (zipfile.BadZipFile, OSError) as error:
    raise errors.InvalidValueError(
        f'config.data.root={str(zip_path)!r} is neither a folder nor a readable zip '
        f'({error}); {_FOLDER_LAYOUT}') from error
  by_prefix = collections.defaultdict(lambda: collections.defaultdict(list))
  ignored = collections.defaultdict(list)
  for name in names:
    if is_hidden(name):
      continue
    parts = name.split('/')
    for depth, part in enumerate(parts[:-1]):
      if part in SPLITS:
        prefix = '/'.join(parts[:depth])
        if is_image_name(name):
          by_prefix[prefix][part].append(name)
        else:
          ignored[(prefix, part)].append('/'.join(parts[depth + 1:]))
        break
  candidates = sorted(
      prefix for prefix, splits in by_prefix.items() if 'trainA' in splits and 'trainB' in splits)
  if not candidates:
    found = sorted(
        {f'{prefix}/{split}'.lstrip('/') for prefix in by_prefix for split in by_prefix[prefix]})
    raise errors.InvalidValueError(
        f'{zip_path} has no trainA/ and trainB/ folders with images (found: '
        f'{", ".join(found) or "no image folders"}); {_FOLDER_LAYOUT}')
  if len(candidates) > 1:
    raise errors.InvalidValueError(
        f'{zip_path} holds several datasets ({", ".join(candidates)}); unpack the '
        'one you want and point config.data.root at its folder')
  prefix = candidates[0]
  for split in SPLITS:
    report_ignored(sorted(ignored[(prefix, split)]),
                   f'{zip_path}:{prefix}/{split}'.replace(':/', ':'))
  return {
      split: ZipSource(zip_path, f'{prefix}/{split}/'.lstrip('/'), sorted(by_prefix[prefix][split]))
      for split in SPLITS
  }


def _tfds_splits(config) -> tuple[dict[str, Source], dict[str, Source], str]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name = config.tfds_name
  data_dir = os.path.expanduser(config.tfds_data_dir) if config.tfds_data_dir else None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except (ValueError, tfds.core.registered.DatasetNotFoundError) as error:
    raise errors.InvalidValueError(
        f'config.data.tfds_name={name!r} is not a TFDS dataset ({error})') from error
  where = pathlib.Path(builder.data_dir).parents[2]  # <data_dir>/<name>/<config>/<version>
  help_text = _TFDS_HELP.format(name=name.split('/')[-1], tfds_name=name, data_dir=where)
  if not builder.is_prepared():
    raise errors.PathNotFoundError(
        f'TFDS dataset {name} is not prepared in {builder.data_dir} (config.data.tfds_data_dir='
        f'{config.tfds_data_dir!r}; nothing is downloaded at run time). {help_text}')
  file_format = builder.info.file_format
  if file_format != tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
    raise errors.InvalidValueError(
        f'TFDS dataset {name} in {builder.data_dir} is stored as {file_format.value}, and '
        'reading it without TensorFlow needs array_record. Prepare it again with '
        f'--file_format=array_record. {help_text}')
  missing = [split for split in SPLITS if split not in builder.info.splits]
  if any(split.startswith('train') for split in missing):
    raise errors.InvalidValueError(
        f'TFDS dataset {name} lacks the splits {missing}; it needs trainA and '
        'trainB (and testA, testB for evaluation)')
  sources = {
      split:
          TfdsSource(builder, split) if split not in missing else ArraySource(
              np.zeros((0, 1, 1, 3), np.uint8), split) for split in SPLITS
  }
  for split in ('trainA', 'trainB'):
    if not len(sources[split]):
      raise errors.InvalidValueError(
          f'TFDS dataset {name} in {builder.data_dir} has an empty {split} split')
  return (_by_domain(sources, 'train'), _by_domain(sources,
                                                   'test'), f'TFDS {name} in {builder.data_dir}')
