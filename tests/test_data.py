"""Tests of the input pipeline: embedded regions, stateless sampling, sources, preprocessing,
bad files, sharding and the iterator state."""

import colorsys
import gc
import io
import json
import logging
import pathlib
import subprocess
import sys
import zipfile

import ml_collections
import numpy as np
from PIL import Image
import pytest

from conftest import train_batch
from conftest import train_batch_uint8

from cyclegan_jax import config_lib
from cyclegan_jax import data
from cyclegan_jax.data import embedded
from cyclegan_jax.data import image_io
from cyclegan_jax.data import preprocess
from cyclegan_jax import prepare_tfds

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def data_config(**overrides) -> ml_collections.ConfigDict:
  config = config_lib.base_config().data
  config.update(
      dict(
          source='embedded',
          root='',
          load_size=40,
          crop_size=32,
          preprocess='resize_and_crop',
          no_flip=False,
          num_heldout=0,
          prefetch=2,
          num_workers=2,
          skip_bad_images=True,
          tfds_name='',
          tfds_data_dir='',
      ))
  config.update(overrides)
  return config


def embedded_cells(crop_size: int) -> list[embedded.Cell]:
  photos = embedded.load_embedded_photos()
  shapes = {name: photo.shape for name, photo in photos.items()}
  return embedded.embedded_cells(shapes, embedded.embedded_cell_size(crop_size))


def expected_crop(dataset, example, domain, cell_pixels):
  augmentation = preprocess.sample_augmentation(dataset.seed, example, domain, cell_pixels.shape,
                                                dataset.crop_size, dataset.allow_flip)
  return preprocess.apply_augmentation(cell_pixels, augmentation,
                                       dataset.crop_size), augmentation.flip


# ----------------------------------------------------------------------------------------------
# Embedded photos.


def test_embedded_npz_is_small_rgb_uint8_and_needs_no_scikit_image():
  npz = REPO_ROOT / 'cyclegan_jax' / 'assets' / 'embedded_photos.npz'
  assert npz.stat().st_size < 2_000_000
  code = ('import sys\n'
          'from cyclegan_jax import data\n'
          'from cyclegan_jax.data import embedded\n'
          'photos = embedded.load_embedded_photos()\n'
          'from cyclegan_jax import config_lib\n'
          'config = config_lib.base_config().data\n'
          'config.update(dict(source="embedded", crop_size=16, prefetch=0))\n'
          'next(data.create_dataset(config, seed=0).train_iterator(2))\n'
          'assert "skimage" not in sys.modules\n'
          'print(sorted(photos))\n')
  result = subprocess.run([sys.executable, '-c', code],
                          cwd=REPO_ROOT,
                          capture_output=True,
                          text=True,
                          check=True)
  assert 'astronaut' in result.stdout
  photos = embedded.load_embedded_photos()
  assert len(photos) == 7
  for photo in photos.values():
    assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
    assert max(photo.shape[:2]) == 256


@pytest.mark.parametrize('crop_size', [16, 32, 64])
def test_embedded_regions_are_disjoint_and_balanced(crop_size):
  photos = embedded.load_embedded_photos()
  cells = embedded_cells(crop_size)
  owner = {name: np.full(photo.shape[:2], '', dtype=object) for name, photo in photos.items()}
  for cell in cells:
    rows, cols = slice(cell.top, cell.top + cell.size), slice(cell.left, cell.left + cell.size)
    region = owner[cell.photo][rows, cols]
    assert region.shape == (cell.size, cell.size)  # Inside the photo.
    assert (region == '').all()  # No pixel belongs to two cells.
    region[...] = cell.role
  counts = {role: sum(c.role == role for c in cells) for role in embedded.ROLE_PATTERN}
  assert abs(counts[embedded.TRAIN_A] - counts[embedded.TRAIN_B]) <= 1
  assert 0.15 <= counts[embedded.HELDOUT] / len(cells) <= 0.25


@pytest.mark.parametrize('crop_size, cells_per_domain, heldout_pairs', [(16, 240, 1080),
                                                                        (32, 56, 252), (64, 9, 36)])
def test_embedded_sizes(crop_size, cells_per_domain, heldout_pairs):
  dataset = data.create_dataset(data_config(crop_size=crop_size), seed=0)
  assert dataset.num_A == dataset.num_B == dataset.epoch_size == cells_per_domain
  positions_per_cell = (embedded.embedded_cell_size(crop_size) - crop_size + 1)**2
  assert dataset.num_A * positions_per_cell >= 300
  assert len(dataset.heldout_pairs()['A']) == heldout_pairs >= 30


def test_embedded_crops_are_exact_cell_pixels_and_b_is_hue_rotated():
  dataset = data.create_dataset(data_config(crop_size=16), seed=3)
  photos = embedded.load_embedded_photos()
  cells = embedded_cells(16)
  cells_A = [c.pixels(photos) for c in cells if c.role == embedded.TRAIN_A]
  cells_B = [c.pixels(photos) for c in cells if c.role == embedded.TRAIN_B]
  step, batch_size = 5, 32
  batch = train_batch_uint8(dataset, step, batch_size)
  flips = []
  for j in range(batch_size):
    example = step * batch_size + j
    index_A, index_B = dataset.example_indices(example)
    crop_A, flip_A = expected_crop(dataset, example, 'A', cells_A[index_A])
    crop_B, flip_B = expected_crop(dataset, example, 'B', cells_B[index_B])
    np.testing.assert_array_equal(batch['A'][j], crop_A)
    np.testing.assert_array_equal(batch['B'][j], embedded.hue_rotate_120(crop_B))
    flips += [flip_A, flip_B]
  assert any(flips) and not all(flips)


def test_heldout_pairs_and_sample_images():
  dataset = data.create_dataset(data_config(crop_size=32), seed=0)
  pairs = dataset.heldout_pairs()
  assert pairs['A'].shape == pairs['B'].shape == (252, 32, 32, 3)
  assert pairs['A'].dtype == np.float32
  np.testing.assert_array_equal(pairs['B'], embedded.hue_rotate_120(pairs['A']))
  # The first pair is the centre crop of the first photo's first held-out cell.
  photos = embedded.load_embedded_photos()
  first = next(c for c in embedded_cells(32) if c.role == embedded.HELDOUT)
  centre = first.pixels(photos)[8:40, 8:40]
  np.testing.assert_array_equal(pairs['A'][0], image_io.from_uint8(centre))
  samples = dataset.sample_images(5)
  np.testing.assert_array_equal(samples['A'], pairs['A'][:5])
  np.testing.assert_array_equal(samples['B'], pairs['B'][:5])
  limited = data.create_dataset(data_config(crop_size=32, num_heldout=10), seed=0)
  np.testing.assert_array_equal(limited.heldout_pairs()['A'], pairs['A'][:10])


# ----------------------------------------------------------------------------------------------
# Pixel helpers.


def test_hue_rotate_120_permutes_primaries_and_inverts():
  red, green, blue = [255, 0, 0], [0, 255, 0], [0, 0, 255]
  primaries = np.array([red, green, blue], np.uint8)
  np.testing.assert_array_equal(embedded.hue_rotate_120(primaries), [green, blue, red])
  image = np.random.default_rng(0).random((4, 5, 3), dtype=np.float32) * 2 - 1
  np.testing.assert_array_equal(embedded.inverse_hue_rotate_120(embedded.hue_rotate_120(image)),
                                image)
  np.testing.assert_array_equal(embedded.hue_rotate_120(embedded.inverse_hue_rotate_120(image)),
                                image)


def test_hue_rotate_120_adds_a_third_of_a_turn_to_hue():
  for rgb in np.random.default_rng(1).random((50, 3)):
    hue, saturation, value = colorsys.rgb_to_hsv(*rgb)
    new_hue, new_saturation, new_value = colorsys.rgb_to_hsv(*embedded.hue_rotate_120(rgb))
    assert (new_hue - hue) % 1 == pytest.approx(1 / 3)
    assert (new_saturation, new_value) == pytest.approx((saturation, value))


def test_to_uint8_and_from_uint8_on_known_values():
  np.testing.assert_array_equal(image_io.from_uint8(np.array([0, 255, 51], np.uint8)),
                                np.float32([-1.0, 1.0, -0.6]))
  assert image_io.from_uint8(np.uint8(0)).dtype == np.float32
  # Truncation as the official tensor2im: 0 -> 127.5 -> 127, 0.5 -> 191.25 -> 191; clipped.
  np.testing.assert_array_equal(image_io.to_uint8(np.float32([-1.0, 1.0, 0.0, 0.5, -3.0, 3.0])),
                                [0, 255, 127, 191, 0, 255])
  values = np.arange(256, dtype=np.uint8)
  round_trip = image_io.to_uint8(image_io.from_uint8(values)).astype(int)
  assert set(values - round_trip) <= {0, 1}
  assert round_trip[0] == 0 and round_trip[255] == 255


# ----------------------------------------------------------------------------------------------
# Stateless sampling.


def test_train_batch_is_a_pure_function_of_seed_step_and_batch_size():
  first = data.create_dataset(data_config(), seed=7)
  second = data.create_dataset(data_config(), seed=7)
  batch = train_batch(first, 11, 4)
  for domain in preprocess.DOMAINS:
    assert batch[domain].shape == (4, 32, 32, 3) and batch[domain].dtype == np.float32
    assert -1.0 <= batch[domain].min() and batch[domain].max() <= 1.0
    assert batch[domain].tobytes() == train_batch(second, 11, 4)[domain].tobytes()
    assert not np.array_equal(batch[domain], train_batch(first, 12, 4)[domain])
  other_seed = train_batch(data.create_dataset(data_config(), seed=8), 11, 4)
  assert not np.array_equal(batch['A'], other_seed['A'])
  # Example i = step * batch_size + j whatever the batch size.
  singles = [train_batch(first, step, 1) for step in range(44, 48)]
  for domain in preprocess.DOMAINS:
    np.testing.assert_array_equal(batch[domain],
                                  np.concatenate([single[domain] for single in singles]))


def test_each_epoch_visits_every_a_example_once():
  dataset = data.create_dataset(data_config(), seed=0)
  size = dataset.epoch_size
  assert dataset.num_A == size
  epochs = [
      [dataset.example_indices(i)[0] for i in range(e * size, (e + 1) * size)] for e in range(3)
  ]
  for indices in epochs:
    assert sorted(indices) == list(range(size))
  assert epochs[0] != epochs[1]
  indices_B = [dataset.example_indices(i)[1] for i in range(3 * size)]
  assert min(indices_B) >= 0 and max(indices_B) < dataset.num_B
  assert len(set(indices_B)) > size // 2


def test_flips_happen_half_the_time_and_never_with_no_flip():
  flips = [
      preprocess.sample_augmentation(0, example, domain, (48, 48, 3), 32, True).flip
      for example in range(1000)
      for domain in preprocess.DOMAINS
  ]
  assert 0.45 < np.mean(flips) < 0.55
  assert not any(
      preprocess.sample_augmentation(0, example, 'A', (48, 48, 3), 32, False).flip
      for example in range(1000))
  flipped = train_batch_uint8(data.create_dataset(data_config(), seed=0), 0, 64)
  unflipped = train_batch_uint8(data.create_dataset(data_config(no_flip=True), seed=0), 0, 64)
  same = [np.array_equal(a, b) for a, b in zip(flipped['A'], unflipped['A'])]
  mirrored = [np.array_equal(a[:, ::-1], b) for a, b in zip(flipped['A'], unflipped['A'])]
  assert all(s or m for s, m in zip(same, mirrored))  # no_flip leaves crop positions alone.
  assert 0.3 < np.mean(mirrored) < 0.7


def test_iterator_yields_train_batches_from_start_example():
  for prefetch in (0, 3):
    dataset = data.create_dataset(data_config(prefetch=prefetch), seed=2)
    with dataset.train_iterator(3, start_example=21) as iterator:
      assert iterator.state()['next_example'] == 21
      for step, batch in zip(range(7, 12), iterator):
        expected = train_batch(dataset, step, 3)
        for domain in preprocess.DOMAINS:
          assert batch[domain].tobytes() == expected[domain].tobytes()
      assert iterator.state() == dataset.iterator_state(36)
    with pytest.raises(StopIteration):
      next(iterator)


def test_dropping_an_iterator_stops_its_workers():
  iterator = data.create_dataset(data_config(prefetch=2), seed=0).train_iterator(2)
  next(iterator)
  threads = list(iterator._pool._threads)
  assert threads
  del iterator
  gc.collect()
  for thread in threads:
    thread.join(timeout=5)
    assert not thread.is_alive()


@pytest.mark.parametrize('process_count', [2, 4])
def test_processes_read_disjoint_rows_of_the_same_global_batches(process_count):
  dataset = data.create_dataset(data_config(), seed=3)
  iterators = [
      dataset.train_iterator(8, start_example=16, process_index=p, process_count=process_count)
      for p in range(process_count)
  ]
  for step in (2, 3):
    local = [next(iterator) for iterator in iterators]
    expected = train_batch(dataset, step, 8)
    for domain in preprocess.DOMAINS:
      assert all(part[domain].shape[0] == 8 // process_count for part in local)
      np.testing.assert_array_equal(np.concatenate([part[domain] for part in local]),
                                    expected[domain])
  for iterator in iterators:
    iterator.close()
  assert list(preprocess.local_rows(8, 1, 4)) == [2, 3]
  with pytest.raises(ValueError, match=r'config\.batch_size=6 .* 4 processes'):
    dataset.train_iterator(6, process_index=0, process_count=4)


def test_resume_example_warns_when_the_dataset_changed(caplog):
  dataset = data.create_dataset(data_config(), seed=0)
  state = dataset.iterator_state(40)
  with caplog.at_level(logging.WARNING):
    assert dataset.resume_example(state) == 40
  assert not caplog.records
  other = data.create_dataset(data_config(crop_size=28), seed=0)  # Other cells.
  with caplog.at_level(logging.WARNING):
    assert other.resume_example(state) == 40
  assert 'differs from the checkpoint' in caplog.text and 'num_A' in caplog.text


# ----------------------------------------------------------------------------------------------
# Folder source.


def save(path: pathlib.Path, image: Image.Image) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path)


def rgb_noise(seed: int, height: int, width: int) -> Image.Image:
  pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
  return Image.fromarray(pixels)


@pytest.fixture
def folder_root(tmp_path) -> pathlib.Path:
  """trainA with one image of every awkward kind, trainB of JPEGs, a testA, no testB."""
  train_A = tmp_path / 'trainA'
  save(train_A / 'a_rgb.png', rgb_noise(0, 40, 50))
  save(train_A / 'b_gray.png', Image.fromarray(np.full((30, 30), 77, np.uint8), 'L'))
  rgba = np.zeros((36, 36, 4), np.uint8)
  rgba[...] = (10, 20, 30, 0)
  save(train_A / 'c_rgba.png', Image.fromarray(rgba, 'RGBA'))
  palette = Image.new('P', (33, 35))
  palette.putpalette([200, 100, 50] * 256)
  palette.info['transparency'] = 0
  save(train_A / 'd_palette.png', palette)
  save(train_A / 'e_16bit.png', Image.fromarray(np.full((32, 44), 128 * 257, np.uint16)))
  save(train_A / 'sub' / 'f_photo.JPG', rgb_noise(1, 48, 48))
  (train_A / 'notes.txt').write_text('not an image')
  for index in range(3):
    save(tmp_path / 'trainB' / f'{index}.jpg', rgb_noise(10 + index, 45, 60))
  for index in range(2):
    save(tmp_path / 'testA' / f'{index}.png', rgb_noise(20 + index, 24, 20))
  return tmp_path


def folder_config(root, **overrides):
  return data_config(**{'source': 'folder', 'root': str(root), **overrides})


def test_load_image_converts_every_mode(folder_root):
  train_A = folder_root / 'trainA'
  expected = {
      'b_gray.png': (77, 77, 77),
      'c_rgba.png': (10, 20, 30),
      'd_palette.png': (200, 100, 50),
      'e_16bit.png': (128, 128, 128),
  }
  for name, rgb in expected.items():
    image = image_io.as_hwc(image_io.load_image(train_A / name, 3))
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert (image == rgb).all(), name
    gray = image_io.as_hwc(image_io.load_image(train_A / name, 1))
    assert gray.shape[2] == 1
    expected_gray = round((rgb[0] * 299 + rgb[1] * 587 + rgb[2] * 114) / 1000)
    assert np.abs(gray.astype(int) - expected_gray).max() <= 1, name


@pytest.mark.parametrize('channels', [1, 3])
def test_folder_batches(folder_root, channels):
  dataset = data.create_dataset(folder_config(folder_root),
                                seed=0,
                                channels_A=channels,
                                channels_B=3)
  assert (dataset.num_A, dataset.num_B, dataset.epoch_size) == (6, 3, 6)
  assert dataset.heldout_pairs() is None
  for step in range(6):
    batch = train_batch(dataset, step, 2)
    assert batch['A'].shape == (2, 32, 32, channels) and batch['A'].dtype == np.float32
    assert batch['B'].shape == (2, 32, 32, 3)
    assert -1.0 <= min(batch['A'].min(), batch['B'].min())
    assert max(batch['A'].max(), batch['B'].max()) <= 1.0
  assert train_batch(dataset, 3, 2)['A'].tobytes() == train_batch(dataset, 3, 2)['A'].tobytes()
  # Example of the 16-bit image: constant 128 after scaling to 8 bit, resizing and cropping.
  index_16bit = 4
  example = next(i for i in range(100) if dataset.example_indices(i)[0] == index_16bit)
  crop = dataset.training_example(example, 'A')
  assert (crop == 128).all()


def test_folder_sample_images_use_test_split_or_fall_back_to_train(folder_root):
  dataset = data.create_dataset(folder_config(folder_root), seed=0)
  samples = dataset.sample_images(5)
  assert samples['A'].shape == (2, 32, 32, 3)  # testA has only two images.
  expected_A = image_io.load_image(folder_root / 'testA' / '0.png', 3).resize((32, 32),
                                                                              Image.BICUBIC)
  np.testing.assert_array_equal(samples['A'][0], image_io.from_uint8(image_io.as_hwc(expected_A)))
  assert samples['B'].shape == (3, 32, 32, 3)  # No testB: the three trainB images.
  expected_B = image_io.load_image(folder_root / 'trainB' / '0.jpg', 3).resize((32, 32),
                                                                               Image.BICUBIC)
  np.testing.assert_array_equal(samples['B'][0], image_io.from_uint8(image_io.as_hwc(expected_B)))


def test_folder_preprocess_crop_and_none(tmp_path):
  for domain in preprocess.DOMAINS:
    save(tmp_path / f'train{domain}' / 'x.png', rgb_noise(0, 38, 34))
  cropped = data.create_dataset(folder_config(tmp_path, preprocess='crop'), seed=0)
  assert train_batch(cropped, 0, 2)['A'].shape == (2, 32, 32, 3)
  whole = data.create_dataset(folder_config(tmp_path, preprocess='none'), seed=0)
  # H x W = 38 x 34 -> nearest multiples of 4 with Python's round, as the official
  # __make_power_2: round(9.5) = 10, round(8.5) = 8, so 40 x 32.
  assert train_batch(whole, 0, 2)['A'].shape == (2, 40, 32, 3)
  save(tmp_path / 'trainB' / 'y.png', rgb_noise(1, 60, 60))
  mixed = data.create_dataset(folder_config(tmp_path, preprocess='none'), seed=0)
  assert train_batch(mixed, 0, 1)['B'].shape[0] == 1
  with pytest.raises(ValueError, match=r'trainB gives 2 different sizes.*batch_size 1'):
    train_batch(mixed, 0, 2)
  with pytest.raises(ValueError, match='batch_size 1'):
    mixed.train_iterator(2)


def test_resize_and_crop_is_a_bicubic_resize_then_the_sampled_crop(tmp_path):
  image = rgb_noise(5, 30, 50)
  for domain in preprocess.DOMAINS:
    save(tmp_path / f'train{domain}' / 'x.png', image)
  dataset = data.create_dataset(folder_config(tmp_path, load_size=40, crop_size=32), seed=4)
  resized = np.asarray(image.resize((40, 40), Image.BICUBIC))
  for example in range(6):
    augmentation = preprocess.sample_augmentation(4, example, 'A', resized.shape, 32, True)
    expected = resized[augmentation.top:augmentation.top + 32,
                       augmentation.left:augmentation.left + 32]
    if augmentation.flip:
      expected = expected[:, ::-1]
    np.testing.assert_array_equal(dataset.training_example(example, 'A'), expected)


def test_scale_width_modes_follow_the_official_rule(tmp_path):
  # 50 x 30 (W x H), load 40: width 40, height int(max(40 * 30 / 50, crop)) = 24 for crop 12;
  # for crop 28 the height is raised to 28.
  image = rgb_noise(6, 30, 50)
  for domain in preprocess.DOMAINS:
    save(tmp_path / f'train{domain}' / 'x.png', image)
  config = folder_config(tmp_path, load_size=40, crop_size=12, no_flip=True)
  scaled = data.create_dataset(updated(config, preprocess='scale_width'), seed=0)
  np.testing.assert_array_equal(scaled.training_example(0, 'A'),
                                np.asarray(image.resize((40, 24), Image.BICUBIC)))
  assert preprocess.scale_width_size((50, 30), 40, 28) == (40, 28)
  assert preprocess.scale_width_size((40, 30), 40, 28) == (40, 30)  # Already right: untouched.
  cropped = data.create_dataset(updated(config, preprocess='scale_width_and_crop'), seed=0)
  resized = np.asarray(image.resize((40, 24), Image.BICUBIC))
  augmentation = preprocess.sample_augmentation(0, 3, 'B', resized.shape, 12, False)
  np.testing.assert_array_equal(
      cropped.training_example(3, 'B'), resized[augmentation.top:augmentation.top + 12,
                                                augmentation.left:augmentation.left + 12])


def updated(config, **fields):
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.update(fields)
  return copy


def test_image_smaller_than_the_crop_is_upscaled(tmp_path):
  small = rgb_noise(0, 20, 24)
  for domain in preprocess.DOMAINS:
    save(tmp_path / f'train{domain}' / 'small.png', small)
  dataset = data.create_dataset(folder_config(tmp_path, preprocess='crop', no_flip=True), seed=0)
  upscaled = np.asarray(small.resize((38, 32), Image.BICUBIC))  # Short side 20 -> 32.
  augmentation = preprocess.sample_augmentation(0, 0, 'A', upscaled.shape, 32, False)
  assert augmentation.top == 0
  np.testing.assert_array_equal(dataset.training_example(0, 'A'),
                                upscaled[:, augmentation.left:augmentation.left + 32])


def test_test_images_are_every_test_image_in_order_resized_to_the_crop(tmp_path):
  for domain in preprocess.DOMAINS:
    save(tmp_path / f'train{domain}' / 'x.png', rgb_noise(0, 40, 40))
  for index in range(7):
    save(tmp_path / 'testA' / f'{index:02d}.jpg', rgb_noise(30 + index, 36 + index, 50))
  dataset = data.create_dataset(folder_config(tmp_path), seed=0)
  assert dataset.num_test('A') == 7 and dataset.num_test('B') == 0
  names, images = zip(*dataset.test_images('A'))
  assert list(names) == [f'{index:02d}.jpg' for index in range(7)]
  expected = image_io.load_image(tmp_path / 'testA' / '03.jpg', 3).resize((32, 32), Image.BICUBIC)
  np.testing.assert_array_equal(images[3], np.asarray(expected))
  assert list(dataset.test_images('B')) == []
  whole = data.create_dataset(folder_config(tmp_path, preprocess='none', prefetch=0), seed=0)
  # 50 x 36 and 50 x 37 -> 48 x 36 (round(12.5) = 12, round(9.25) = 9), as __make_power_2.
  assert [image.shape for _, image in whole.test_images('A')][:2] == [(36, 48, 3), (36, 48, 3)]


# ----------------------------------------------------------------------------------------------
# Errors.


def test_missing_root_names_the_field_and_layout(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'config\.data\.root.*trainA'):
    data.create_dataset(folder_config(tmp_path / 'nowhere'), seed=0)
  with pytest.raises(ValueError, match=r'config\.data\.root'):
    data.create_dataset(folder_config(''), seed=0)


def test_missing_train_b_and_empty_train_a(tmp_path):
  save(tmp_path / 'trainA' / 'x.png', rgb_noise(0, 8, 8))
  with pytest.raises(FileNotFoundError, match=r'trainB.*config\.data\.root'):
    data.create_dataset(folder_config(tmp_path), seed=0)
  (tmp_path / 'trainA' / 'x.png').unlink()
  save(tmp_path / 'trainB' / 'x.png', rgb_noise(0, 8, 8))
  with pytest.raises(ValueError, match=r'trainA holds no .*config\.data\.root'):
    data.create_dataset(folder_config(tmp_path), seed=0)


def truncated_jpeg(seed: int) -> bytes:
  buffer = io.BytesIO()
  rgb_noise(seed, 40, 40).save(buffer, format='JPEG')
  return buffer.getvalue()[:300]


def test_bad_images_are_skipped_with_a_warning_and_a_count(tmp_path, caplog):
  save(tmp_path / 'trainA' / 'a.png', rgb_noise(0, 40, 40))
  (tmp_path / 'trainA' / 'b_broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really a png')
  (tmp_path / 'trainA' / 'c_truncated.jpg').write_bytes(truncated_jpeg(1))
  save(tmp_path / 'trainA' / 'd.png', rgb_noise(2, 40, 40))
  save(tmp_path / 'trainB' / 'fine.png', rgb_noise(3, 40, 40))
  good = {'a.png': 0, 'd.png': 3}
  dataset = data.create_dataset(folder_config(tmp_path, no_flip=True), seed=0)
  with caplog.at_level(logging.WARNING):
    with dataset.train_iterator(1) as iterator:
      epoch = [next(iterator)['A'][0] for _ in range(8)]
  assert 'b_broken.png' in caplog.text and 'c_truncated.jpg' in caplog.text
  assert '2 skipped so far' in caplog.text
  for example, crop in enumerate(epoch):
    index = dataset.example_indices(example)[0]
    # A bad image's examples take the next readable image of the split: b, c -> d.
    replacement = 'a.png' if index == good['a.png'] else 'd.png'
    resized = image_io.load_image(tmp_path / 'trainA' / replacement, 3).resize((40, 40),
                                                                               Image.BICUBIC)
    augmentation = preprocess.sample_augmentation(0, example, 'A', (40, 40, 3), 32, False)
    expected = np.asarray(resized)[augmentation.top:augmentation.top + 32,
                                   augmentation.left:augmentation.left + 32]
    np.testing.assert_array_equal(crop, image_io.from_uint8(expected))


def test_an_unreadable_image_is_named_with_what_is_wrong_with_it(tmp_path):
  for content, problem in ((b'', 'the file is empty'), (b'plain text', 'not an image format'),
                           (truncated_jpeg(0), 'truncated')):
    path = tmp_path / 'x.jpg'
    path.write_bytes(content)
    with pytest.raises(image_io.UnreadableImageError) as raised:
      image_io.load_image(path, 3)
    message = str(raised.value)
    assert message.startswith(f'cannot read image {path}: ') and problem in message.lower(), message
    assert 'BytesIO' not in message


def test_bad_image_raises_without_skipping_and_all_bad_always_raises(tmp_path):
  (tmp_path / 'trainA').mkdir()
  (tmp_path / 'trainA' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really a png')
  save(tmp_path / 'trainB' / 'fine.png', rgb_noise(0, 40, 40))
  strict = data.create_dataset(folder_config(tmp_path, skip_bad_images=False), seed=0)
  with pytest.raises(ValueError, match=r'broken\.png.*skip_bad_images'):
    train_batch(strict, 0, 1)
  with strict.train_iterator(1) as iterator, pytest.raises(ValueError, match=r'broken\.png'):
    next(iterator)
  lenient = data.create_dataset(folder_config(tmp_path), seed=0)
  with pytest.raises(ValueError, match=r'broken\.png.*is unreadable'):
    train_batch(lenient, 0, 1)


def official_zip(path: pathlib.Path, folder: pathlib.Path, top: str = 'horse2zebra/') -> None:
  """A zip of `folder` in the official layout, with the clutter macOS zips carry."""
  with zipfile.ZipFile(path, 'w') as archive:
    for file in sorted(folder.rglob('*')):
      if file.is_file():
        archive.write(file, top + file.relative_to(folder).as_posix())
    archive.writestr(f'__MACOSX/{top}trainA/._a_rgb.png', b'resource fork')
    archive.writestr(f'{top}trainA/.DS_Store', b'finder')


def test_official_zip_reads_like_its_folder(folder_root, tmp_path_factory):
  zips = tmp_path_factory.mktemp('zips')
  official_zip(zips / 'horse2zebra.zip', folder_root)
  official_zip(zips / 'flat.zip', folder_root, top='')
  from_folder = data.create_dataset(folder_config(folder_root), seed=1)
  for name in ('horse2zebra.zip', 'flat.zip'):
    from_zip = data.create_dataset(folder_config(zips / name), seed=1)
    assert (from_zip.num_A, from_zip.num_B, from_zip.num_test('A')) == (6, 3, 2)
    assert from_zip.fingerprint == from_folder.fingerprint
    with from_zip.train_iterator(2) as iterator:
      for step in range(4):
        batch, expected = next(iterator), train_batch(from_folder, step, 2)
        for domain in preprocess.DOMAINS:
          np.testing.assert_array_equal(batch[domain], expected[domain])
    zip_test, folder_test = list(from_zip.test_images('A')), list(from_folder.test_images('A'))
    assert [n for n, _ in zip_test] == [n for n, _ in folder_test] == ['0.png', '1.png']
    np.testing.assert_array_equal(zip_test[1][1], folder_test[1][1])


def test_zip_errors_name_the_problem(tmp_path):
  (tmp_path / 'not_a.zip').write_bytes(b'PK\x03\x04 broken')
  with pytest.raises(ValueError, match=r'not_a\.zip.*neither a folder nor a readable zip'):
    data.create_dataset(folder_config(tmp_path / 'not_a.zip'), seed=0)
  with zipfile.ZipFile(tmp_path / 'only_a.zip', 'w') as archive:
    archive.writestr('data/trainA/x.png', b'')
  with pytest.raises(FileNotFoundError,
                     match=r'only_a\.zip:data has trainA/ but no trainB/ folder'):
    data.create_dataset(folder_config(tmp_path / 'only_a.zip'), seed=0)


def tfds_config(data_dir, **overrides):
  return data_config(
      **{
          'source': 'tfds',
          'tfds_name': 'cycle_gan/horse2zebra',
          'tfds_data_dir': str(data_dir),
          **overrides
      })


def test_tfds_source_reads_a_prepared_array_record_dataset(folder_root, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  prepare_tfds.prepare('horse2zebra', folder_root, data_dir)
  from_tfds = data.create_dataset(tfds_config(data_dir), seed=0)
  from_folder = data.create_dataset(folder_config(folder_root), seed=0)
  assert (from_tfds.num_A, from_tfds.num_B) == (6, 3)
  assert (from_tfds.num_test('A'), from_tfds.num_test('B')) == (2, 0)  # No testB folder.
  # The same images (TFDS stores them in its own order): compare the resized training images.
  for domain in preprocess.DOMAINS:
    tfds_images = {from_tfds._training_image(domain, i).tobytes() for i in range(3)}
    folder_images = {
        from_folder._training_image(domain, i).tobytes()
        for i in range(len(from_folder.sources[domain]))
    }
    assert tfds_images <= folder_images
  with from_tfds.train_iterator(2) as iterator:
    for step in range(3):
      batch, expected = next(iterator), train_batch(from_tfds, step, 2)
      for domain in preprocess.DOMAINS:
        assert batch[domain].shape == (2, 32, 32, 3)
        np.testing.assert_array_equal(batch[domain], expected[domain])
  assert 'tensorflow' not in sys.modules


def test_training_and_prepare_tfds_find_the_same_splits_two_levels_down_a_zip(
    folder_root, tmp_path_factory):
  """One layout finder: the splits of an odd zip (downloads/horse2zebra/trainA/...) are found
  alike by the folder source and by prepare_tfds, with the same images in each split."""
  zip_path = tmp_path_factory.mktemp('odd') / 'odd.zip'
  with zipfile.ZipFile(zip_path, 'w') as archive:
    for file in sorted(folder_root.rglob('*')):
      if file.is_file():
        archive.write(file, f'downloads/horse2zebra/{file.relative_to(folder_root).as_posix()}')
  from_zip = data.create_dataset(folder_config(zip_path), seed=0)
  data_dir = tmp_path_factory.mktemp('tfds')
  prepare_tfds.prepare('horse2zebra', zip_path, data_dir)
  from_tfds = data.create_dataset(tfds_config(data_dir), seed=0)
  assert (from_zip.num_A, from_zip.num_B) == (from_tfds.num_A, from_tfds.num_B) == (6, 3)
  for domain in preprocess.DOMAINS:
    assert from_zip.num_test(domain) == from_tfds.num_test(domain)
    images = [{
        dataset._training_image(domain, i).tobytes() for i in range(len(dataset.sources[domain]))
    } for dataset in (from_zip, from_tfds)]
    assert images[0] == images[1]


def test_tfds_source_errors_say_how_to_prepare(tmp_path, folder_root):
  with pytest.raises(FileNotFoundError,
                     match=r'cycle_gan/horse2zebra is not prepared in .*'
                     r'nothing is downloaded.*prepare_tfds --name=horse2zebra'):
    data.create_dataset(tfds_config(tmp_path / 'empty'), seed=0)
  assert not list((tmp_path / 'empty').rglob('*.array_record*'))
  with pytest.raises(ValueError, match=r'config\.data\.tfds_name=.cycle_gan/horse2zebr. is not'):
    data.create_dataset(tfds_config(tmp_path, tfds_name='cycle_gan/horse2zebr'), seed=0)
  version_dir = prepare_tfds.prepare('horse2zebra', folder_root, tmp_path / 'tfrecord')
  info_path = version_dir / 'dataset_info.json'
  info = json.loads(info_path.read_text())
  info['fileFormat'] = 'tfrecord'  # As `tfds build` writes without --file_format.
  info_path.write_text(json.dumps(info))
  with pytest.raises(ValueError, match=r'stored as tfrecord.*array_record'):
    data.create_dataset(tfds_config(tmp_path / 'tfrecord'), seed=0)


@pytest.mark.parametrize('source', ['embedded', 'folder'])
def test_crop_size_must_be_a_multiple_of_4(source, folder_root):
  with pytest.raises(ValueError, match=r'config\.data\.crop_size.*multiple of 4'):
    data.create_dataset(data_config(source=source, root=str(folder_root), crop_size=30), seed=0)


def test_embedded_rejects_crops_without_room_and_grayscale():
  with pytest.raises(ValueError, match=r'config\.data\.crop_size=128'):
    data.create_dataset(data_config(crop_size=128), seed=0)
  with pytest.raises(ValueError, match='RGB'):
    data.create_dataset(data_config(), seed=0, channels_A=1)


# ----------------------------------------------------------------------------------------------
# The generating script.


def test_script_reproduces_the_shipped_npz(tmp_path):
  skimage = pytest.importorskip('skimage')
  script = REPO_ROOT / 'scripts' / 'make_embedded_dataset.py'
  if f'scikit-image=={skimage.__version__}' not in script.read_text():
    pytest.skip(f'the script pins another scikit-image than {skimage.__version__}')
  output = tmp_path / 'photos.npz'
  subprocess.run([sys.executable, str(script), '--output',
                  str(output)],
                 check=True,
                 capture_output=True)
  shipped = REPO_ROOT / 'cyclegan_jax' / 'assets' / 'embedded_photos.npz'
  with np.load(output, allow_pickle=False) as made, np.load(shipped, allow_pickle=False) as ours:
    assert made.files == ours.files
    for name in made.files:
      np.testing.assert_array_equal(made[name], ours[name])
