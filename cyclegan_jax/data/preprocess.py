"""Training and test preprocessing: the official `get_transform`, and stateless random draws.

Training (`preprocess_for_training`): 'resize_and_crop' (bicubic resize to load_size x load_size,
random crop_size crop), 'crop' (random crop of the image as is), 'scale_width' (bicubic resize to
width load_size keeping the aspect ratio, height at least crop_size; no crop),
'scale_width_and_crop' (that, then a random crop), 'none' (bicubic resize of each side to the
nearest multiple of 4, as the official `__make_power_2`); then a random horizontal flip unless
no_flip; then scaling to [-1, 1]. A cropping mode upscales (bicubic, aspect kept) an image whose
short side is below crop_size instead of failing. Test images (`preprocess_for_test`): no flip,
bicubic resize to crop_size x crop_size ('none': to multiples of 4).

Sampling (the official unaligned dataset, made stateless). Example i belongs to epoch
e = i // N, N = epoch_size = max(num_A, num_B). A permutation of range(N) seeded from (seed, e)
gives A index perm[i % N] % num_A (every A example once per epoch when num_A == N); the B index is
uniform, seeded from (seed, i); crop position and flip are drawn per example and domain from
(seed, i, domain). Each use has its own stream tag in the seed. Global batch k of a run holds
examples start + k * B .. start + (k + 1) * B - 1, and process p of P reads its B / P consecutive
rows of it: every process reads a disjoint shard, and the global batch does not depend on the
number of processes.
"""

import dataclasses
import functools

import numpy as np
from PIL import Image

from cyclegan_jax import errors

DOMAINS = ('A', 'B')
# Stream tags keep the three kinds of randomness independent even when e.g. epoch == example.
_EPOCH_STREAM, _B_INDEX_STREAM, _AUGMENT_STREAM = 0, 1, 2


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


def example_indices(seed: int, example: int, num_A: int, num_B: int) -> tuple[int, int]:
  """(A index, B index) of global example `example` = step * batch_size + j."""
  epoch_size = max(num_A, num_B)
  epoch, position = divmod(example, epoch_size)
  index_A = int(epoch_permutation(seed, epoch, epoch_size)[position]) % num_A
  rng = np.random.default_rng([seed, _B_INDEX_STREAM, example])
  return index_A, int(rng.integers(num_B))


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
