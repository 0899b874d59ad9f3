r"""Prepares the TFDS dataset cycle_gan/<name> in array_record format, offline and without TF.

  python -m cyclegan_jax.prepare_tfds --name=horse2zebra --source=/path/to/horse2zebra.zip \
      [--data_dir=DIR] [--overwrite]

writes `<data_dir>/cycle_gan/<name>/3.0.0/`: the dataset that TFDS's own builder
(`tensorflow_datasets.image_classification.cycle_gan.CycleGAN`) prepares with
`--file_format=array_record`, with the same name, config, version, features ({'image': Image(),
'label': ClassLabel(names=['A', 'B'])}) and split names (trainA, trainB, testA, testB), so that
`tfds.data_source('cycle_gan/<name>', data_dir=DIR)` reads it. The official builder downloads the
zip and lists it with TensorFlow; this reads the zip you already have, in place with `zipfile`, or
an extracted folder, and needs neither TensorFlow nor a network. --data_dir defaults to TFDS's
default data dir ($TFDS_DATA_DIR, else ~/tensorflow_datasets).

Source: the official CycleGAN zip (members `<name>/trainA/*.jpg`, `<name>/trainB/...`, testA,
testB) or a folder holding trainA/ and trainB/ (and normally testA/, testB/), found as training
finds them (`data.layout.find_layout`: at the top or in a folder at any depth; images searched
recursively; hidden files and `__MACOSX/` ignored, other files skipped and reported).

Examples: one per image, keyed by its path below the split folder, which in the official flat
layout is the file's basename, the key the official `_generate_examples` uses. TFDS stores a split's
examples in the order of a hash of (split name, key), so the stored order is the official
builder's. Label 'A' in trainA and testA, 'B' in trainB and testB.

Image bytes: JPEG files and 8-bit PNG files in RGB or greyscale are stored byte for byte, as the
official builder stores them (the official zips hold only such JPEGs). Greyscale ones, a few in
the official zips, are fine despite the feature's (None, None, 3) shape: TFDS does not decode
images while writing, and its decoders (TensorFlow's `decode_image(channels=3)`, and the OpenCV or
Pillow decoding of `tfds.data_source`) repeat the grey channel three times; readers that take the
raw bytes (`tfds.decode.SkipDecoding()`) convert channels themselves. Any other image (palette,
alpha, CMYK, 1- or 16-bit, BMP, PPM, TIFF, WebP) is stored as a lossless PNG of its RGB pixels
(alpha dropped, 16/32-bit grey scaled from 0..65535 to 0..255, as the folder input pipeline
converts), since TFDS's decoders would return palette indices or 4 channels for some of them and
TensorFlow cannot decode TIFF. Each image is decoded once here; one that Pillow cannot decode is
left out with a warning naming it (as the input pipeline skips unreadable images by default), and
a split none of whose images decodes is an error. A zip member that fails its CRC check is an
error: the zip is damaged.

Splits: trainA and trainB must exist and hold images. testA and testB are optional (the official
builder requires them): a missing or image-less test folder is left out of the prepared dataset,
with a warning, because TFDS cannot write an empty split.

A dataset already prepared at the target in array_record format is kept (its path is returned and
the source is not read) unless --overwrite; one in another format, e.g. tfrecord from
`tfds build`, is an error unless --overwrite, since `tfds.data_source` cannot read it.
"""

from collections.abc import Callable, Iterator
import io
import os
import pathlib
import shutil
import tempfile
import zipfile

from absl import flags
from absl import logging
from PIL import Image
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import cycle_gan

from cyclegan_jax import cli
from cyclegan_jax import errors
from cyclegan_jax import workdir as workdir_lib
from cyclegan_jax.data import image_io
from cyclegan_jax.data import layout

DATASET_NAME = 'cycle_gan'
CONFIG_NAMES = tuple(cycle_gan.CycleGAN.builder_configs)
SPLITS = layout.SPLITS
FILE_FORMAT = 'array_record'

_SOURCE_LAYOUT = ('expected the CycleGAN dataset zip (e.g. horse2zebra.zip, holding '
                  'horse2zebra/trainA/*.jpg, trainB, testA, testB) or a folder holding trainA/ and '
                  'trainB/ (and normally testA/, testB/) of images')
# Formats whose RGB or greyscale files TFDS's decoders all read as (H, W, 3) uint8 images; MPO is
# a JPEG whose first picture is the image (as photos from some phones are).
_FORMATS_STORED_AS_IS = ('JPEG', 'MPO', 'PNG')
_MODES_STORED_AS_IS = ('RGB', 'L')
_PNG_BIT_DEPTH_OFFSET = 24  # 8-byte signature, IHDR length, type, width, height.


def _count(number: int, noun: str) -> str:
  return f'{number} {noun}' if number == 1 else f'{number} {noun}s'


_PrepareFrom = Callable[[layout.Tree], pathlib.Path]


# ----------------------------------------------------------------------------------------------
# Image bytes.


def _stored_as_is(image: Image.Image, encoded: bytes) -> bool:
  if image.format not in _FORMATS_STORED_AS_IS or image.mode not in _MODES_STORED_AS_IS:
    return False
  return image.format != 'PNG' or encoded[_PNG_BIT_DEPTH_OFFSET] == 8


UnreadableImageError = image_io.UnreadableImageError


def encoded_for_tfds(encoded: bytes, location: str) -> tuple[bytes, bool]:
  """(bytes to store, whether they were re-encoded) for an image file's bytes; see module doc.

  Args:
    encoded: the file's bytes.
    location: where the file is, for the error message.

  Raises:
    UnreadableImageError: Pillow cannot decode the bytes.
  """
  try:
    with Image.open(io.BytesIO(encoded)) as image:
      image.load()
      if _stored_as_is(image, encoded):
        return encoded, False
      rgb = image_io.convert_channels(image, 3)
  except image_io.DECODE_ERRORS as error:
    raise UnreadableImageError(f'{location} is not a readable image ({error})') from error
  buffer = io.BytesIO()
  rgb.save(buffer, format='PNG')
  return buffer.getvalue(), True


# ----------------------------------------------------------------------------------------------
# The builder.


class _CycleGANFromFiles(cycle_gan.CycleGAN, skip_registration=True):
  """TFDS's cycle_gan builder, fed from local files instead of a download."""

  name = DATASET_NAME
  # Recorded as the dataset's module_name, so the metadata is the official builder's and TFDS
  # finds no difference to report when its registered builder loads the dataset.
  __module__ = cycle_gan.__name__
  # Where the checksums of downloads would be looked up; nothing is downloaded, and looking it up
  # imports `importlib_resources`, which tensorflow-datasets does not depend on.
  code_path = None

  def __init__(self, *, source: layout.Tree, splits: dict[str, layout.SplitFiles], **kwargs):
    self._source = source
    self._splits = splits
    self.reencoded_counts = dict.fromkeys(splits, 0)
    self.unreadable_keys = {split: [] for split in splits}
    super().__init__(**kwargs)

  # TFDS's own two messages, printed to stdout, announce a download of unknown size and its end.
  def _log_download_bytes(self) -> None:
    logging.info('Preparing %s/%s in %s from %s.', self.name, self.builder_config.name,
                 self.data_dir, self._source.location(''))

  def _log_download_done(self) -> None:
    pass  # prepare() logs a summary instead.

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in self._splits}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, object]]]:
    split_files = self._splits[split]
    for key in split_files.images:
      relative_path = f'{split_files.folder}/{key}'
      try:
        image, reencoded = encoded_for_tfds(self._source.read(relative_path),
                                            self._source.location(relative_path))
      except UnreadableImageError as error:
        logging.warning('%s; leaving it out.', error)
        self.unreadable_keys[split].append(key)
        continue
      self.reencoded_counts[split] += reencoded
      yield key, {'image': image, 'label': split[-1]}
    if len(self.unreadable_keys[split]) == len(split_files.images):
      # Raised here, as TFDS cannot write an empty split either.
      raise errors.InvalidValueError(
          f'{split_files.location} holds no readable image: all '
          f'{_count(len(split_files.images), "image file")} failed to decode')


def _builder(name: str, data_dir: str, **kwargs) -> tfds.core.DatasetBuilder:
  return _CycleGANFromFiles(config=name, data_dir=data_dir, file_format=FILE_FORMAT, **kwargs)


def _open_source(source: pathlib.Path, prepare_from: _PrepareFrom) -> pathlib.Path:
  """prepare_from(the opened source), with the zip open while it runs."""
  if source.is_dir():
    return prepare_from(layout.FolderTree(source))
  if not source.exists():
    raise errors.PathNotFoundError(f'source {source} not found: {_SOURCE_LAYOUT}')
  if not zipfile.is_zipfile(source):
    if source.suffix.lower() == '.zip':
      raise errors.InvalidValueError(
          f'source {source} is not a valid zip file (corrupt or incomplete download?): '
          f'{_SOURCE_LAYOUT}')
    raise errors.InvalidValueError(
        f'source {source} is neither a folder nor a zip file: {_SOURCE_LAYOUT}')
  try:
    with zipfile.ZipFile(source) as archive:
      return prepare_from(layout.ZipTree(archive, source))
  except zipfile.BadZipFile as error:
    raise errors.InvalidValueError(
        f'source {source} is a corrupt zip file ({error}): {_SOURCE_LAYOUT}') from error


def default_data_dir() -> str:
  """TFDS's default data dir: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return tfds.core.constants.get_default_data_dir()


def prepare(name: str,
            source: str | os.PathLike,
            data_dir: str | os.PathLike | None = None,
            *,
            overwrite: bool = False) -> pathlib.Path:
  """Prepares cycle_gan/<name> in data_dir from the CycleGAN zip or folder `source`.

  Args:
    name: one of CONFIG_NAMES, e.g. 'horse2zebra'.
    source: the official `<name>.zip`, or a folder holding trainA/, trainB/ (testA/, testB/).
    data_dir: TFDS data dir; None for TFDS's default.
    overwrite: replace a dataset already prepared there instead of keeping it.

  Returns:
    The prepared version folder, `<data_dir>/cycle_gan/<name>/3.0.0`.

  Raises:
    ValueError: unknown name, unusable source or images, or a non-array_record dataset in the way.
    FileNotFoundError: no source, or no trainA/ or trainB/ folder in it.
  """
  if name not in CONFIG_NAMES:
    raise errors.InvalidValueError(f'unknown CycleGAN dataset name {name!r}: expected one of '
                                   f'{", ".join(CONFIG_NAMES)}')
  data_dir = str(pathlib.Path(data_dir or default_data_dir()).expanduser().absolute())
  workdir_lib.check_folder(data_dir, '--data_dir')
  source = pathlib.Path(source).expanduser().absolute()
  full_name = f'{DATASET_NAME}/{name}'

  version = str(cycle_gan.CycleGAN.builder_configs[name].version)
  target = pathlib.Path(data_dir, DATASET_NAME, name, version)
  # Checked by hand first: asking TFDS about an absent dataset logs a warning.
  already_prepared = (target / 'dataset_info.json').exists()
  if target.exists() and not already_prepared and not overwrite:
    # TFDS would take any existing folder for the prepared dataset and write nothing.
    raise errors.InvalidValueError(
        f'{target} exists but holds no prepared dataset (no dataset_info.json): '
        f'remove it or pass overwrite (--overwrite)')
  if already_prepared:
    file_format = tfds.builder(full_name, data_dir=data_dir).info.file_format.value
    if not overwrite and file_format == FILE_FORMAT:
      logging.info('%s is already prepared in %s; keeping it (overwrite to prepare it again).',
                   full_name, target)
      return target
    if not overwrite:
      raise errors.InvalidValueError(
          f'{full_name} is already prepared in {target} in the {file_format} format, '
          f'which tfds.data_source cannot read: pass overwrite (--overwrite) to '
          f'replace it with the {FILE_FORMAT} format')

  def prepare_from(opened_source: layout.Tree) -> pathlib.Path:
    found = layout.find_layout(opened_source, f': {_SOURCE_LAYOUT}')
    splits, left_out = found.splits, found.left_out
    if target.exists():
      logging.info('Deleting the existing %s.', target)
      shutil.rmtree(target)
    builder = _builder(name, data_dir, source=opened_source, splits=splits)
    with tempfile.TemporaryDirectory(prefix='prepare_tfds_downloads_') as unused_download_dir:
      builder.download_and_prepare(download_dir=unused_download_dir,
                                   download_config=tfds.download.DownloadConfig(
                                       compute_stats=tfds.download.ComputeStatsMode.SKIP,
                                       try_download_gcs=False))
    _log_summary(builder, data_dir, splits, left_out)
    return pathlib.Path(builder.data_dir)

  return _open_source(source, prepare_from)


def _log_summary(builder: _CycleGANFromFiles, data_dir: str, splits: dict[str, layout.SplitFiles],
                 left_out: dict[str, str]) -> None:
  full_name = f'{DATASET_NAME}/{builder.builder_config.name}'
  lines = [f'Prepared {full_name} ({FILE_FORMAT}) in {builder.data_dir}:']
  for split in SPLITS:
    if split in left_out:
      lines.append(f'  {split}: left out, {left_out[split]}')
      continue
    split_files = splits[split]
    line = (f'  {split}: {_count(builder.info.splits[split].num_examples, "example")} from '
            f'{split_files.location}')
    if reencoded := builder.reencoded_counts[split]:
      line += f'; {reencoded} stored as RGB PNG'
    if unreadable := builder.unreadable_keys[split]:
      line += (f'; skipped {_count(len(unreadable), "unreadable image")}, e.g. '
               f'{unreadable[0]}')
    if split_files.ignored:
      line += (f'; skipped {_count(len(split_files.ignored), "non-image file")}, e.g. '
               f'{split_files.ignored[0]}')
    lines.append(line)
  lines.append(f"Read it with tfds.data_source('{full_name}', data_dir='{data_dir}').")
  logging.info('\n'.join(lines))
  for split, reason in left_out.items():
    logging.warning('%s has no %s split: %s.', full_name, split, reason)


_NAME = flags.DEFINE_enum('name', None, CONFIG_NAMES, 'CycleGAN dataset (TFDS config) to prepare.')
_SOURCE = flags.DEFINE_string(
    'source', None, 'The dataset zip, e.g. horse2zebra.zip, or a folder holding trainA/ and '
    'trainB/ (and normally testA/, testB/).')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'TFDS data dir to prepare into; default: $TFDS_DATA_DIR, else '
    '~/tensorflow_datasets.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False,
                               'Replace the dataset if it is already prepared in data_dir.')


def main(argv):
  cli.no_extra_arguments(argv)
  print(prepare(_NAME.value, _SOURCE.value, _DATA_DIR.value, overwrite=_OVERWRITE.value))


if __name__ == '__main__':
  # Required only here, so that a program importing prepare() can still parse its own flags.
  flags.mark_flags_as_required(['name', 'source'])
  cli.run(main)
