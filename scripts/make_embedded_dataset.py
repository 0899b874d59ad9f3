"""Builds `cyclegan_jax/assets/embedded_photos.npz`, the offline dataset shipped in the package.

The photos are the public-domain / CC0 colour images bundled with scikit-image (licences in
`cyclegan_jax/assets/LICENSES.md`). scikit-image is needed only to run this script, never at
training time. Run from the repository root:

  pip install scikit-image==0.26.0
  python scripts/make_embedded_dataset.py

Each photo is downscaled with Pillow's Lanczos filter (antialiased, area-weighted) to a long
side of 256 px and stored as a uint8 HWC RGB array keyed by its scikit-image name. The output is
byte-for-byte reproducible for a given scikit-image / Pillow / zlib (fixed zip timestamps, sorted
keys, no pickles); `np.load` reads it like any `np.savez_compressed` file.
"""

import argparse
import io
import pathlib
import zipfile

import numpy as np
from PIL import Image

SKIMAGE_VERSION = '0.26.0'
LONG_SIDE = 256
PHOTO_NAMES = (
    'astronaut',
    'chelsea',
    'coffee',
    'hubble_deep_field',
    'immunohistochemistry',
    'retina',
    'rocket',
)
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / 'cyclegan_jax' / 'assets' / 'embedded_photos.npz'
# 1980-01-01, the earliest zip timestamp: makes the archive independent of when it was written.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


def crop_retina_to_fundus(image: np.ndarray) -> np.ndarray:
  """The central 960x960 square, inside the fundus circle (radius ~696 px) of the 1411 px photo.

  Outside the circle the photo is black; cells there would be blank training examples.
  """
  centre_y, centre_x, half = 703, 704, 480
  return image[centre_y - half:centre_y + half, centre_x - half:centre_x + half]


def load_photo(name: str) -> np.ndarray:
  """One scikit-image sample photo as uint8 HWC RGB."""
  import skimage.data  # Imported here so the module stays importable without scikit-image.

  image = np.asarray(getattr(skimage.data, name)())
  if name == 'retina':
    image = crop_retina_to_fundus(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'{name}: expected uint8 RGB, got {image.dtype} {image.shape}')
  return image


def downscale(image: np.ndarray, long_side: int) -> np.ndarray:
  """Lanczos-resamples so that max(H, W) == long_side, keeping the aspect ratio."""
  height, width = image.shape[:2]
  scale = long_side / max(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))


def write_npz_reproducibly(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  """Same format as `np.savez_compressed`, but with fixed timestamps and sorted members."""
  with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
    for name in sorted(arrays):
      buffer = io.BytesIO()
      array = np.ascontiguousarray(arrays[name])
      np.lib.format.write_array(buffer, array, allow_pickle=False)
      info = zipfile.ZipInfo(f'{name}.npy', date_time=_ZIP_DATE_TIME)
      info.compress_type = zipfile.ZIP_DEFLATED
      archive.writestr(info, buffer.getvalue(), compresslevel=9)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--output', type=pathlib.Path, default=DEFAULT_OUTPUT)
  parser.add_argument('--long_side', type=int, default=LONG_SIDE)
  args = parser.parse_args()

  import skimage

  if skimage.__version__ != SKIMAGE_VERSION:
    raise SystemExit(f'needs scikit-image=={SKIMAGE_VERSION}, found {skimage.__version__}')
  photos = {name: downscale(load_photo(name), args.long_side) for name in PHOTO_NAMES}
  args.output.parent.mkdir(parents=True, exist_ok=True)
  write_npz_reproducibly(args.output, photos)
  for name, photo in photos.items():
    print(f'{name:22s} {photo.shape}')
  print(f'wrote {args.output} ({args.output.stat().st_size:,} bytes)')


if __name__ == '__main__':
  main()
