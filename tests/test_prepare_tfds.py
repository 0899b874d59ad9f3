"""Tests of prepare_tfds: a CycleGAN folder or zip -> TFDS cycle_gan/<name> in array_record."""

import io
import json
import logging
import os
import pathlib
import re
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import hashing

from cyclegan_jax import prepare_tfds

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
NAME = 'horse2zebra'
FULL_NAME = f'cycle_gan/{NAME}'
# split -> {file name: (format, mode)}; 8x12 px images with distinct random pixels.
IMAGES = {
    'trainA': {
        'n01.jpg': ('JPEG', 'RGB'),
        'n02.png': ('PNG', 'RGB'),
        'n03_grey.jpg': ('JPEG', 'L'),
    },
    'trainB': {
        'z01.JPG': ('JPEG', 'RGB'),
        'z02.png': ('PNG', 'RGB'),
    },
    'testA': {
        't01.jpg': ('JPEG', 'RGB'),
        't02.png': ('PNG', 'L'),
    },
    'testB': {
        'u01.jpeg': ('JPEG', 'RGB'),
    },
}
LABELS = {'trainA': 0, 'trainB': 1, 'testA': 0, 'testB': 1}


def encoded_image(image_format: str, mode: str, seed: int) -> bytes:
  """An 8x12 image of random pixels in the given PIL mode, encoded in the given format."""
  channels = {'L': (), 'I;16': (), 'LA': (2,), 'RGBA': (4,)}.get(mode, (3,))
  dtype = np.uint16 if mode == 'I;16' else np.uint8
  shape = (8, 12) + channels
  pixels = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
  image = Image.fromarray(pixels)
  if image.mode != mode:
    image = image.convert(mode)  # RGB -> P or CMYK.
  buffer = io.BytesIO()
  image.save(buffer, format=image_format)
  return buffer.getvalue()


def write_dataset(root: pathlib.Path) -> pathlib.Path:
  """The IMAGES as a CycleGAN folder, with a text file and hidden files that are not examples."""
  for seed, (split, files) in enumerate(IMAGES.items()):
    (root / split).mkdir(parents=True)
    for index, (file_name, (image_format, mode)) in enumerate(files.items()):
      (root / split / file_name).write_bytes(encoded_image(image_format, mode, 10 * seed + index))
  (root / 'trainA' / 'notes.txt').write_text('not an image')
  (root / 'trainA' / '._n01.jpg').write_bytes(b'AppleDouble metadata, not an image')
  (root / 'trainB' / '.cache').mkdir()
  (root / 'trainB' / '.cache' / 'thumb.jpg').write_bytes(encoded_image('JPEG', 'RGB', 99))
  return root


def zip_folder(folder: pathlib.Path, zip_path: pathlib.Path, prefix: str) -> pathlib.Path:
  """The folder's files as a zip, below `prefix`, with directory entries and a __MACOSX/ copy."""
  with zipfile.ZipFile(zip_path, 'w') as archive:
    for path in sorted(folder.rglob('*')):
      member = prefix + path.relative_to(folder).as_posix()
      if path.is_dir():
        archive.writestr(member + '/', b'')
      else:
        archive.write(path, member)
        archive.writestr(f'__MACOSX/{os.path.dirname(member)}/._{path.name}', b'metadata')
  return zip_path


def read_back(data_dir: pathlib.Path, raw: bool = False) -> dict[str, list[dict]]:
  decoders = {'image': tfds.decode.SkipDecoding()} if raw else None
  source = tfds.data_source(FULL_NAME, data_dir=str(data_dir), decoders=decoders)
  return {split: list(source[split]) for split in source}


def rgb_pixels(encoded: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(encoded)) as image:
    return np.asarray(image.convert('RGB'))


def stored_order(split: str, keys) -> list[str]:
  """The order TFDS stores examples with these keys in: by the key's hash salted with the split."""
  hasher = hashing.Hasher(split)
  return sorted(keys, key=hasher.hash_key)


def assert_prepared_from(data_dir: pathlib.Path, folder: pathlib.Path):
  """The prepared splits hold exactly folder's images, with their bytes, labels and order."""
  decoded, raw = read_back(data_dir), read_back(data_dir, raw=True)
  assert list(decoded) == list(IMAGES)
  for split, files in IMAGES.items():
    # Keys are file names, so TFDS's hash order of the names is the stored order.
    file_bytes = [(folder / split / name).read_bytes() for name in stored_order(split, files)]
    assert [example['image'] for example in raw[split]] == file_bytes
    for example, encoded in zip(decoded[split], file_bytes):
      assert example['image'].shape == (8, 12, 3) and example['image'].dtype == np.uint8
      np.testing.assert_array_equal(example['image'], rgb_pixels(encoded))
      assert example['label'] == LABELS[split]
  assert 'tensorflow' not in sys.modules


@pytest.fixture(name='folder')
def folder_fixture(tmp_path):
  return write_dataset(tmp_path / 'source')


def test_prepare_from_folder(folder, tmp_path, caplog):
  data_dir = tmp_path / 'tfds'
  with caplog.at_level(logging.INFO):
    path = prepare_tfds.prepare(NAME, folder, data_dir)

  assert path == data_dir / 'cycle_gan' / NAME / '3.0.0'
  assert_prepared_from(data_dir, folder)
  builder = tfds.builder(FULL_NAME, data_dir=str(data_dir))
  assert str(builder.version) == '3.0.0' and builder.info.file_format.value == 'array_record'
  assert builder.info.features['label'].names == ['A', 'B']
  assert builder.info.features['image'].shape == (None, None, 3)
  assert builder.info.module_name == 'tensorflow_datasets.image_classification.cycle_gan'
  summary = caplog.text
  assert f'Prepared {FULL_NAME} (array_record) in {path}' in summary
  assert f'trainA: 3 examples from {folder / "trainA"}; skipped 1 non-image file' in summary
  assert 'testB: 1 example from' in summary


def test_prepare_from_official_zip(folder, tmp_path):
  zip_path = zip_folder(folder, tmp_path / f'{NAME}.zip', prefix=f'{NAME}/')
  data_dir = tmp_path / 'tfds'
  prepare_tfds.prepare(NAME, zip_path, data_dir)
  assert_prepared_from(data_dir, folder)


def test_prepare_from_zip_with_splits_at_its_root(folder, tmp_path):
  zip_path = zip_folder(folder, tmp_path / 'splits.zip', prefix='')
  data_dir = tmp_path / 'tfds'
  prepare_tfds.prepare(NAME, zip_path, data_dir)
  assert_prepared_from(data_dir, folder)


def test_nested_files_missing_test_split_and_default_data_dir(folder, tmp_path, monkeypatch,
                                                              caplog):
  (folder / 'trainA' / 'more').mkdir()
  (folder / 'trainA' / 'more' / 'n04.jpg').write_bytes(encoded_image('JPEG', 'RGB', 50))
  (folder / 'testB' / 'u01.jpeg').unlink()
  (folder / 'testA' / 't01.jpg').unlink()
  (folder / 'testA' / 't02.png').unlink()
  (folder / 'testA').rmdir()
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'default'))
  with caplog.at_level(logging.INFO):
    path = prepare_tfds.prepare(NAME, folder)

  assert path == tmp_path / 'default' / 'cycle_gan' / NAME / '3.0.0'
  raw = read_back(tmp_path / 'default', raw=True)
  assert list(raw) == ['trainA', 'trainB']  # TFDS cannot write an empty split.
  keys = ['n01.jpg', 'n02.png', 'n03_grey.jpg', 'more/n04.jpg']  # Relative paths as keys.
  expected = [(folder / 'trainA' / key).read_bytes() for key in stored_order('trainA', keys)]
  assert [example['image'] for example in raw['trainA']] == expected
  assert f'no testA/ folder in {folder}' in caplog.text
  assert f'{folder / "testB"} holds no jpg/' in caplog.text


@pytest.mark.parametrize('image_format, mode', [('PNG', 'RGBA'), ('PNG', 'P'), ('PNG', 'LA'),
                                                ('PNG', 'I;16'), ('JPEG', 'CMYK'), ('BMP', 'RGB'),
                                                ('TIFF', 'RGB'), ('WEBP', 'RGB')])
def test_other_images_are_stored_as_rgb_png(image_format, mode):
  encoded = encoded_image(image_format, mode, seed=3)
  stored, reencoded = prepare_tfds.encoded_for_tfds(encoded, 'x')

  assert reencoded
  with Image.open(io.BytesIO(stored)) as image:
    assert (image.format, image.mode) == ('PNG', 'RGB')
  with Image.open(io.BytesIO(encoded)) as original:
    if mode == 'I;16':
      expected = np.round(np.asarray(original, dtype=np.float64) / 257).astype(np.uint8)
      expected = np.repeat(expected[..., None], 3, axis=-1)
    else:
      expected = np.asarray(original.convert('RGB'))
  # What TFDS's own decoding of the stored bytes gives.
  np.testing.assert_array_equal(tfds.features.Image().decode_example_np(stored), expected)


@pytest.mark.parametrize('image_format, mode', [('JPEG', 'RGB'), ('JPEG', 'L'), ('PNG', 'RGB'),
                                                ('PNG', 'L')])
def test_rgb_and_grey_jpeg_and_png_are_stored_as_is(image_format, mode):
  encoded = encoded_image(image_format, mode, seed=4)
  assert prepare_tfds.encoded_for_tfds(encoded, 'x') == (encoded, False)
  decoded = tfds.features.Image().decode_example_np(encoded)
  np.testing.assert_array_equal(decoded, rgb_pixels(encoded))  # Grey repeated 3 times.


def png_16_bit_rgb(pixels: np.ndarray) -> bytes:
  """A 48-bit RGB PNG (Pillow cannot write one) of uint16 (H, W, 3) pixels."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

  height, width, _ = pixels.shape
  header = struct.pack('>IIBBBBB', width, height, 16, 2, 0, 0, 0)  # Bit depth 16, colour type RGB.
  rows = b''.join(b'\x00' + row.astype('>u2').tobytes() for row in pixels)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(rows)) +
          chunk(b'IEND', b''))


def test_16_bit_rgb_png_is_stored_as_8_bit_png():
  # Pillow opens it as 8-bit 'RGB', but OpenCV, which tfds.data_source prefers, would not.
  pixels = np.random.default_rng(5).integers(0, 65536, (8, 12, 3)).astype(np.uint16)
  stored, reencoded = prepare_tfds.encoded_for_tfds(png_16_bit_rgb(pixels), 'x')
  assert reencoded
  with Image.open(io.BytesIO(stored)) as image:
    assert (image.format, image.mode) == ('PNG', 'RGB')
    np.testing.assert_array_equal(np.asarray(image), pixels >> 8)


def test_unreadable_images_are_left_out_with_a_warning(folder, tmp_path, caplog):
  (folder / 'trainA' / 'broken.jpg').write_bytes(b'\xff\xd8\xff not really a jpeg')
  with caplog.at_level(logging.INFO):
    prepare_tfds.prepare(NAME, folder, tmp_path / 'tfds')
  assert len(read_back(tmp_path / 'tfds', raw=True)['trainA']) == 3
  assert f'{folder / "trainA" / "broken.jpg"} is not a readable image' in caplog.text
  assert 'skipped 1 unreadable image, e.g. broken.jpg' in caplog.text

  for path in (folder / 'trainB').iterdir():
    if path.is_file():
      path.write_bytes(b'garbage')
  with pytest.raises(ValueError, match=r'trainB holds no readable image: all 2 image files'):
    prepare_tfds.prepare(NAME, folder, tmp_path / 'tfds2')
  assert not (tmp_path / 'tfds2' / 'cycle_gan' / NAME / '3.0.0').exists()


def test_unknown_name(folder, tmp_path):
  with pytest.raises(ValueError, match=r"unknown CycleGAN dataset name 'horse2zebr'.*horse2zebra"):
    prepare_tfds.prepare('horse2zebr', folder, tmp_path / 'tfds')


def test_missing_source(tmp_path):
  with pytest.raises(FileNotFoundError, match=f'source {tmp_path / "absent.zip"} not found'):
    prepare_tfds.prepare(NAME, tmp_path / 'absent.zip', tmp_path / 'tfds')


def test_a_data_dir_that_is_a_file(folder, tmp_path):
  a_file = tmp_path / 'tfds'
  a_file.write_text('kept\n')
  with pytest.raises(FileExistsError, match=f'--data_dir={a_file}: {a_file} is a file'):
    prepare_tfds.prepare(NAME, folder, a_file)
  assert a_file.read_text() == 'kept\n'


def test_missing_train_a(folder, tmp_path):
  for path in (folder / 'trainA').iterdir():
    path.unlink()
  (folder / 'trainA').rmdir()
  with pytest.raises(
      FileNotFoundError,
      match=re.escape(f'{folder} has trainB/, testA/, testB/ but no trainA/ folder')):
    prepare_tfds.prepare(NAME, folder, tmp_path / 'tfds')
  zip_path = zip_folder(folder, tmp_path / f'{NAME}.zip', prefix=f'{NAME}/')
  with pytest.raises(FileNotFoundError, match=re.escape(f'{zip_path}:{NAME} has trainB/')):
    prepare_tfds.prepare(NAME, zip_path, tmp_path / 'tfds')


def test_several_datasets_in_one_folder(folder, tmp_path):
  write_dataset(tmp_path / 'both' / 'apples')
  write_dataset(tmp_path / 'both' / 'oranges')
  with pytest.raises(ValueError, match='holds several datasets, in apples, oranges'):
    prepare_tfds.prepare(NAME, tmp_path / 'both', tmp_path / 'tfds')
  (folder / 'trainA').rename(tmp_path / 'both' / 'trainA')
  (folder / 'trainB').rename(tmp_path / 'both' / 'trainB')
  prepare_tfds.prepare(NAME, tmp_path / 'both', tmp_path / 'tfds')  # Splits at the top win.


def test_no_split_folders(tmp_path):
  (tmp_path / 'photos').mkdir()
  with pytest.raises(FileNotFoundError, match='holds no trainA/ and trainB/ folders'):
    prepare_tfds.prepare(NAME, tmp_path / 'photos', tmp_path / 'tfds')


def test_train_b_without_images(folder, tmp_path):
  for file_name in IMAGES['trainB']:
    (folder / 'trainB' / file_name).unlink()
  (folder / 'trainB' / 'README.md').write_text('zebras')
  with pytest.raises(ValueError,
                     match=f'{folder / "trainB"} holds no jpg/.* images .only 1 other file'):
    prepare_tfds.prepare(NAME, folder, tmp_path / 'tfds')


def test_corrupt_zip(folder, tmp_path):
  not_a_zip = tmp_path / f'{NAME}.zip'
  not_a_zip.write_bytes(b'<html>403 Forbidden</html>')
  with pytest.raises(ValueError, match=f'source {not_a_zip} is not a valid zip file'):
    prepare_tfds.prepare(NAME, not_a_zip, tmp_path / 'tfds')

  text_file = folder / 'trainA' / 'notes.txt'
  with pytest.raises(ValueError, match='is neither a folder nor a zip file'):
    prepare_tfds.prepare(NAME, text_file, tmp_path / 'tfds')

  zip_path = zip_folder(folder, tmp_path / 'damaged.zip', prefix=f'{NAME}/')
  member = f'{NAME}/trainA/n01.jpg'
  data = bytearray(zip_path.read_bytes())
  content = (folder / 'trainA' / 'n01.jpg').read_bytes()
  data[data.index(content[-64:])] ^= 0xFF  # The file's own pixels: stored uncompressed, unique.
  zip_path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=f'{zip_path}:{member} cannot be read from the zip.*CRC'):
    prepare_tfds.prepare(NAME, zip_path, tmp_path / 'tfds')
  assert not (tmp_path / 'tfds' / 'cycle_gan' / NAME / '3.0.0').exists()


def test_prepared_dataset_is_kept_unless_overwrite(folder, tmp_path):
  data_dir = tmp_path / 'tfds'
  path = prepare_tfds.prepare(NAME, folder, data_dir)
  info_file = path / 'dataset_info.json'
  os.utime(info_file, (1e9, 1e9))
  (folder / 'trainA' / 'n05.jpg').write_bytes(encoded_image('JPEG', 'RGB', 60))

  assert prepare_tfds.prepare(NAME, tmp_path / 'absent', data_dir) == path
  assert info_file.stat().st_mtime == 1e9
  assert len(read_back(data_dir)['trainA']) == 3

  assert prepare_tfds.prepare(NAME, folder, data_dir, overwrite=True) == path
  assert info_file.stat().st_mtime != 1e9
  assert len(read_back(data_dir)['trainA']) == 4


def test_target_folder_without_dataset_needs_overwrite(folder, tmp_path):
  target = tmp_path / 'tfds' / 'cycle_gan' / NAME / '3.0.0'
  target.mkdir(parents=True)
  with pytest.raises(ValueError, match=f'{target} exists but holds no prepared dataset'):
    prepare_tfds.prepare(NAME, folder, tmp_path / 'tfds')
  assert prepare_tfds.prepare(NAME, folder, tmp_path / 'tfds', overwrite=True) == target
  assert (target / 'dataset_info.json').exists()


def test_dataset_in_another_format_needs_overwrite(folder, tmp_path):
  data_dir = tmp_path / 'tfds'
  path = prepare_tfds.prepare(NAME, folder, data_dir)
  info = json.loads((path / 'dataset_info.json').read_text())
  info['fileFormat'] = 'tfrecord'  # As `tfds build` writes it by default.
  (path / 'dataset_info.json').write_text(json.dumps(info))
  with pytest.raises(ValueError, match='already prepared in .* in the tfrecord format'):
    prepare_tfds.prepare(NAME, folder, data_dir)
  prepare_tfds.prepare(NAME, folder, data_dir, overwrite=True)
  assert_prepared_from(data_dir, folder)


def run_command_line(*flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'cyclegan_jax.prepare_tfds', *flags],
                        cwd=REPO_ROOT,
                        capture_output=True,
                        text=True,
                        check=False)


def test_command_line(folder, tmp_path):
  data_dir = tmp_path / 'tfds'
  result = run_command_line(f'--name={NAME}', f'--source={folder}', f'--data_dir={data_dir}')
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [str(data_dir / 'cycle_gan' / NAME / '3.0.0')]
  assert 'trainB: 2 examples from' in result.stderr

  absent = tmp_path / 'absent.zip'
  result = run_command_line(f'--name={NAME}', f'--source={absent}', f'--data_dir={data_dir}2')
  assert result.returncode == 2
  assert result.stderr.startswith(f'Error: source {absent} not found: expected the CycleGAN')
  assert len(result.stderr.strip().splitlines()) == 1  # No traceback.
