"""Image files: decoding, the channel policy, 8-bit <-> [-1, 1] pixels, and which files are images.

Channel policy (`decode_image`), for domains of 3 or 1 channels: every image becomes 8-bit RGB
first: greyscale is replicated, palette images go through their palette, alpha is dropped (as the
official `convert('RGB')`), CMYK/YCbCr are converted, and 16-bit integer images are scaled from
0..65535 to 0..255 (16-bit RGB is read by Pillow as 8-bit). With 1 channel the RGB image is then
reduced to luma (ITU-R 601-2, Pillow's 'L', as torchvision's Grayscale).
"""

from collections.abc import Sequence
import io
import logging
import os
import pathlib

import numpy as np
from PIL import Image

from cyclegan_jax import errors

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.tif', '.tiff', '.webp')


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
  if not data:
    raise UnreadableImageError(f'cannot read image {name}: the file is empty')
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      return convert_channels(image, channels)
  except Image.UnidentifiedImageError as error:
    # PIL's message names the in-memory buffer (<_io.BytesIO object at 0x...>), not the file.
    raise UnreadableImageError(
        f'cannot read image {name}: not an image format PIL can decode (or the file is '
        'damaged)') from error
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
