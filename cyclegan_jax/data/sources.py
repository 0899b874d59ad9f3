"""Sources: random access to the images of one split (folder, zip, TFDS or in memory).

 - 'tfds': the prepared TFDS dataset `config.data.tfds_name` (e.g. 'cycle_gan/horse2zebra') in
   `config.data.tfds_data_dir`, read in array_record format without TensorFlow; splits trainA,
   trainB, testA, testB.
 - 'folder': `config.data.root` is a directory, or a zip file such as the official
   horse2zebra.zip read in place, holding trainA/ and trainB/ (testA/ and testB/ optional)
   where `layout.find_layout` finds them; aligned data (pix2pix's): train/ and test/ or val/.
"""

from collections.abc import Sequence
import dataclasses
import os
import pathlib
import posixpath
import threading
from typing import Protocol
import zipfile

import numpy as np

from cyclegan_jax import errors
from cyclegan_jax.data import layout
from cyclegan_jax.data.image_io import UnreadableImageError
from cyclegan_jax.data.preprocess import DOMAINS

_FOLDER_LAYOUT = (
    'expected a folder or .zip holding trainA/ and trainB/ (optionally testA/, testB/) with '
    'images, the layout of the CycleGAN datasets (e.g. horse2zebra.zip)')
_ALIGNED_LAYOUT = (
    'expected a folder or .zip holding train/ (optionally test/ or val/) with images that each '
    'show an A image and its B image side by side, the layout of the pix2pix datasets (e.g. '
    'facades.tar.gz, extracted)')
_TFDS_HELP = (
    'Prepare it once, without TensorFlow, from the official zip: `python -m '
    'cyclegan_jax.prepare_tfds --name={name} --source=/path/to/{name}.zip --data_dir={data_dir}`; '
    'or with TensorFlow and internet: `tfds build {tfds_name} --file_format=array_record '
    '--data_dir={data_dir}`. Or train from the zip or its folder directly: '
    '--config.data.source=folder --config.data.root=/path/to/{name}.zip')


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


def folder_splits(config) -> tuple[dict[str, Source], dict[str, Source], str]:
  """The splits of the folder or zip `config.root` (`layout.find_layout`). Aligned data
  (config.dataset_mode): both domains read the same A | B images, of train/ and of test/ (val/
  where there is no test/)."""
  aligned = config.dataset_mode == 'aligned'
  help_text = _ALIGNED_LAYOUT if aligned else _FOLDER_LAYOUT
  if not config.root:
    raise errors.InvalidValueError(
        f'config.data.root is empty; source "folder" needs it: {help_text}')
  root = pathlib.Path(config.root).expanduser()
  context = f' (config.data.root={config.root!r}): {help_text}'
  splits = ((layout.ALIGNED_SPLITS, layout.ALIGNED_REQUIRED_SPLITS) if aligned else
            (layout.SPLITS, layout.REQUIRED_SPLITS))
  if root.is_dir():
    found = layout.find_layout(layout.FolderTree(root), context, *splits)
    sources = {
        split:
            FileSource(root / posixpath.join(found.root, split),
                       tuple(root / path for path in layout.split_paths(found, split)))
        for split in splits[0]
    }
  elif root.is_file():
    try:
      archive = zipfile.ZipFile(root)
    except (zipfile.BadZipFile, OSError) as error:
      raise errors.InvalidValueError(
          f'config.data.root={config.root!r} is neither a folder nor a readable zip ({error}); '
          f'{_FOLDER_LAYOUT}') from error
    with archive:
      found = layout.find_layout(layout.ZipTree(archive, root), context, *splits)
    sources = {
        split:
            ZipSource(root,
                      posixpath.join(found.root, split) + '/', layout.split_paths(found, split))
        for split in splits[0]
    }
  else:
    raise errors.PathNotFoundError(
        f'config.data.root={config.root!r}: {root} does not exist; {help_text}')
  if aligned:
    test = sources['test'] if len(sources['test']) else sources['val']
    return dict.fromkeys(DOMAINS, sources['train']), dict.fromkeys(DOMAINS, test), str(root)
  return _by_domain(sources, 'train'), _by_domain(sources, 'test'), str(root)


def _by_domain(sources: dict[str, Source], prefix: str) -> dict[str, Source]:
  return {domain: sources[prefix + domain] for domain in DOMAINS}


def tfds_splits(config) -> tuple[dict[str, Source], dict[str, Source], str]:
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
  missing = [split for split in layout.SPLITS if split not in builder.info.splits]
  if any(split.startswith('train') for split in missing):
    raise errors.InvalidValueError(
        f'TFDS dataset {name} lacks the splits {missing}; it needs trainA and '
        'trainB (and testA, testB for evaluation)')
  sources = {
      split:
          TfdsSource(builder, split) if split not in missing else ArraySource(
              np.zeros((0, 1, 1, 3), np.uint8), split) for split in layout.SPLITS
  }
  for split in ('trainA', 'trainB'):
    if not len(sources[split]):
      raise errors.InvalidValueError(
          f'TFDS dataset {name} in {builder.data_dir} has an empty {split} split')
  return (_by_domain(sources, 'train'), _by_domain(sources,
                                                   'test'), f'TFDS {name} in {builder.data_dir}')
