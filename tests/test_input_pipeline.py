"""Tests of the input pipeline: embedded regions, stateless sampling, folder decoding, errors."""

import colorsys
import gc
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
from PIL import Image
import pytest

from cyclegan_jax import input_pipeline as ip

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def data_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(
      dict(
          source='embedded',
          root='',
          load_size=40,
          crop_size=32,
          preprocess='resize_and_crop',
          no_flip=False,
          num_heldout=0,
          prefetch=2,
      ))
  config.update(overrides)
  return config


def embedded_cells(crop_size: int) -> list[ip.Cell]:
  photos = ip.load_embedded_photos()
  shapes = {name: photo.shape for name, photo in photos.items()}
  return ip.embedded_cells(shapes, ip.embedded_cell_size(crop_size))


def expected_crop(dataset, example, domain, cell_pixels):
  augmentation = ip.sample_augmentation(dataset.seed, example, domain, cell_pixels.shape,
                                        dataset.crop_size, dataset.allow_flip)
  return ip.apply_augmentation(cell_pixels, augmentation, dataset.crop_size), augmentation.flip


# ----------------------------------------------------------------------------------------------
# Embedded photos.


def test_embedded_npz_is_small_rgb_uint8_and_needs_no_scikit_image():
  npz = REPO_ROOT / 'cyclegan_jax' / 'assets' / 'embedded_photos.npz'
  assert npz.stat().st_size < 2_000_000
  code = ('import sys, ml_collections\n'
          'from cyclegan_jax import input_pipeline as ip\n'
          'photos = ip.load_embedded_photos()\n'
          'ip.create_dataset(ml_collections.ConfigDict(dict(source="embedded", root="", '
          'load_size=0, crop_size=16, preprocess="none", no_flip=False, num_heldout=0, '
          'prefetch=0)), seed=0).train_batch(0, 2)\n'
          'assert "skimage" not in sys.modules\n'
          'print(sorted(photos))\n')
  result = subprocess.run([sys.executable, '-c', code],
                          cwd=REPO_ROOT,
                          capture_output=True,
                          text=True,
                          check=True)
  assert 'astronaut' in result.stdout
  photos = ip.load_embedded_photos()
  assert len(photos) == 7
  for photo in photos.values():
    assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
    assert max(photo.shape[:2]) == 256


@pytest.mark.parametrize('crop_size', [16, 32, 64])
def test_embedded_regions_are_disjoint_and_balanced(crop_size):
  photos = ip.load_embedded_photos()
  cells = embedded_cells(crop_size)
  owner = {name: np.full(photo.shape[:2], '', dtype=object) for name, photo in photos.items()}
  for cell in cells:
    rows, cols = slice(cell.top, cell.top + cell.size), slice(cell.left, cell.left + cell.size)
    region = owner[cell.photo][rows, cols]
    assert region.shape == (cell.size, cell.size)  # Inside the photo.
    assert (region == '').all()  # No pixel belongs to two cells.
    region[...] = cell.role
  counts = {role: sum(c.role == role for c in cells) for role in ip.ROLE_PATTERN}
  assert abs(counts[ip.TRAIN_A] - counts[ip.TRAIN_B]) <= 1
  assert 0.15 <= counts[ip.HELDOUT] / len(cells) <= 0.25


@pytest.mark.parametrize('crop_size, cells_per_domain, heldout_pairs', [(16, 240, 1080),
                                                                        (32, 56, 252), (64, 9, 36)])
def test_embedded_sizes(crop_size, cells_per_domain, heldout_pairs):
  dataset = ip.create_dataset(data_config(crop_size=crop_size), seed=0)
  assert dataset.num_A == dataset.num_B == dataset.epoch_size == cells_per_domain
  positions_per_cell = (ip.embedded_cell_size(crop_size) - crop_size + 1)**2
  assert dataset.num_A * positions_per_cell >= 300
  assert len(dataset.heldout_pairs()['A']) == heldout_pairs >= 30


def test_embedded_crops_are_exact_cell_pixels_and_b_is_hue_rotated():
  dataset = ip.create_dataset(data_config(crop_size=16), seed=3)
  photos = ip.load_embedded_photos()
  cells = embedded_cells(16)
  cells_A = [c.pixels(photos) for c in cells if c.role == ip.TRAIN_A]
  cells_B = [c.pixels(photos) for c in cells if c.role == ip.TRAIN_B]
  step, batch_size = 5, 32
  batch = dataset.train_batch_uint8(step, batch_size)
  flips = []
  for j in range(batch_size):
    example = step * batch_size + j
    index_A, index_B = dataset.example_indices(example)
    crop_A, flip_A = expected_crop(dataset, example, 'A', cells_A[index_A])
    crop_B, flip_B = expected_crop(dataset, example, 'B', cells_B[index_B])
    np.testing.assert_array_equal(batch['A'][j], crop_A)
    np.testing.assert_array_equal(batch['B'][j], ip.hue_rotate_120(crop_B))
    flips += [flip_A, flip_B]
  assert any(flips) and not all(flips)


def test_heldout_pairs_and_sample_images():
  dataset = ip.create_dataset(data_config(crop_size=32), seed=0)
  pairs = dataset.heldout_pairs()
  assert pairs['A'].shape == pairs['B'].shape == (252, 32, 32, 3)
  assert pairs['A'].dtype == np.float32
  np.testing.assert_array_equal(pairs['B'], ip.hue_rotate_120(pairs['A']))
  # The first pair is the centre crop of the first photo's first held-out cell.
  photos = ip.load_embedded_photos()
  first = next(c for c in embedded_cells(32) if c.role == ip.HELDOUT)
  centre = first.pixels(photos)[8:40, 8:40]
  np.testing.assert_array_equal(pairs['A'][0], ip.from_uint8(centre))
  samples = dataset.sample_images(5)
  np.testing.assert_array_equal(samples['A'], pairs['A'][:5])
  np.testing.assert_array_equal(samples['B'], pairs['B'][:5])
  limited = ip.create_dataset(data_config(crop_size=32, num_heldout=10), seed=0)
  np.testing.assert_array_equal(limited.heldout_pairs()['A'], pairs['A'][:10])


# ----------------------------------------------------------------------------------------------
# Pixel helpers.


def test_hue_rotate_120_permutes_primaries_and_inverts():
  red, green, blue = [255, 0, 0], [0, 255, 0], [0, 0, 255]
  primaries = np.array([red, green, blue], np.uint8)
  np.testing.assert_array_equal(ip.hue_rotate_120(primaries), [green, blue, red])
  image = np.random.default_rng(0).random((4, 5, 3), dtype=np.float32) * 2 - 1
  np.testing.assert_array_equal(ip.inverse_hue_rotate_120(ip.hue_rotate_120(image)), image)
  np.testing.assert_array_equal(ip.hue_rotate_120(ip.inverse_hue_rotate_120(image)), image)


def test_hue_rotate_120_adds_a_third_of_a_turn_to_hue():
  for rgb in np.random.default_rng(1).random((50, 3)):
    hue, saturation, value = colorsys.rgb_to_hsv(*rgb)
    new_hue, new_saturation, new_value = colorsys.rgb_to_hsv(*ip.hue_rotate_120(rgb))
    assert (new_hue - hue) % 1 == pytest.approx(1 / 3)
    assert (new_saturation, new_value) == pytest.approx((saturation, value))


def test_to_uint8_and_from_uint8_on_known_values():
  np.testing.assert_array_equal(ip.from_uint8(np.array([0, 255, 51], np.uint8)),
                                np.float32([-1.0, 1.0, -0.6]))
  assert ip.from_uint8(np.uint8(0)).dtype == np.float32
  # Truncation as the official tensor2im: 0 -> 127.5 -> 127, 0.5 -> 191.25 -> 191; clipped.
  np.testing.assert_array_equal(ip.to_uint8(np.float32([-1.0, 1.0, 0.0, 0.5, -3.0, 3.0])),
                                [0, 255, 127, 191, 0, 255])
  values = np.arange(256, dtype=np.uint8)
  round_trip = ip.to_uint8(ip.from_uint8(values)).astype(int)
  assert set(values - round_trip) <= {0, 1}
  assert round_trip[0] == 0 and round_trip[255] == 255


# ----------------------------------------------------------------------------------------------
# Stateless sampling.


def test_train_batch_is_a_pure_function_of_seed_step_and_batch_size():
  first = ip.create_dataset(data_config(), seed=7)
  second = ip.create_dataset(data_config(), seed=7)
  batch = first.train_batch(11, 4)
  for domain in ip.DOMAINS:
    assert batch[domain].shape == (4, 32, 32, 3) and batch[domain].dtype == np.float32
    assert -1.0 <= batch[domain].min() and batch[domain].max() <= 1.0
    assert batch[domain].tobytes() == second.train_batch(11, 4)[domain].tobytes()
    assert not np.array_equal(batch[domain], first.train_batch(12, 4)[domain])
  other_seed = ip.create_dataset(data_config(), seed=8).train_batch(11, 4)
  assert not np.array_equal(batch['A'], other_seed['A'])
  # Example i = step * batch_size + j whatever the batch size.
  singles = [first.train_batch(step, 1) for step in range(44, 48)]
  for domain in ip.DOMAINS:
    np.testing.assert_array_equal(batch[domain],
                                  np.concatenate([single[domain] for single in singles]))


def test_each_epoch_visits_every_a_example_once():
  dataset = ip.create_dataset(data_config(), seed=0)
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
      ip.sample_augmentation(0, example, domain, (48, 48, 3), 32, True).flip
      for example in range(1000)
      for domain in ip.DOMAINS
  ]
  assert 0.45 < np.mean(flips) < 0.55
  assert not any(
      ip.sample_augmentation(0, example, 'A', (48, 48, 3), 32, False).flip
      for example in range(1000))
  flipped = ip.create_dataset(data_config(), seed=0).train_batch_uint8(0, 64)
  unflipped = ip.create_dataset(data_config(no_flip=True), seed=0).train_batch_uint8(0, 64)
  same = [np.array_equal(a, b) for a, b in zip(flipped['A'], unflipped['A'])]
  mirrored = [np.array_equal(a[:, ::-1], b) for a, b in zip(flipped['A'], unflipped['A'])]
  assert all(s or m for s, m in zip(same, mirrored))  # no_flip leaves crop positions alone.
  assert 0.3 < np.mean(mirrored) < 0.7


def test_iterator_yields_train_batches_from_start_step():
  for prefetch in (0, 3):
    dataset = ip.create_dataset(data_config(prefetch=prefetch), seed=2)
    with dataset.train_iterator(start_step=7, batch_size=3) as iterator:
      for step, batch in zip(range(7, 12), iterator):
        expected = dataset.train_batch(step, 3)
        for domain in ip.DOMAINS:
          assert batch[domain].tobytes() == expected[domain].tobytes()
    assert iterator._thread is None or not iterator._thread.is_alive()
    with pytest.raises(StopIteration):
      next(iterator)


def test_dropping_an_iterator_stops_its_thread():
  iterator = ip.create_dataset(data_config(prefetch=2), seed=0).train_iterator(0, 2)
  next(iterator)
  thread = iterator._thread
  del iterator
  gc.collect()
  thread.join(timeout=5)
  assert not thread.is_alive()


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
    image = ip.as_hwc(ip.load_image(train_A / name, 3))
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert (image == rgb).all(), name
    gray = ip.as_hwc(ip.load_image(train_A / name, 1))
    assert gray.shape[2] == 1
    expected_gray = round((rgb[0] * 299 + rgb[1] * 587 + rgb[2] * 114) / 1000)
    assert np.abs(gray.astype(int) - expected_gray).max() <= 1, name


@pytest.mark.parametrize('channels', [1, 3])
def test_folder_batches(folder_root, channels):
  dataset = ip.create_dataset(folder_config(folder_root), seed=0, channels_A=channels, channels_B=3)
  assert (dataset.num_A, dataset.num_B, dataset.epoch_size) == (6, 3, 6)
  assert dataset.heldout_pairs() is None
  for step in range(6):
    batch = dataset.train_batch(step, 2)
    assert batch['A'].shape == (2, 32, 32, channels) and batch['A'].dtype == np.float32
    assert batch['B'].shape == (2, 32, 32, 3)
    assert -1.0 <= min(batch['A'].min(), batch['B'].min())
    assert max(batch['A'].max(), batch['B'].max()) <= 1.0
  assert dataset.train_batch(3, 2)['A'].tobytes() == dataset.train_batch(3, 2)['A'].tobytes()
  # Example of the 16-bit image: constant 128 after scaling to 8 bit, resizing and cropping.
  index_16bit = 4
  example = next(i for i in range(100) if dataset.example_indices(i)[0] == index_16bit)
  crop = dataset.training_example(example, 'A', index_16bit)
  assert (crop == 128).all()


def test_folder_sample_images_use_test_split_or_fall_back_to_train(folder_root):
  dataset = ip.create_dataset(folder_config(folder_root), seed=0)
  samples = dataset.sample_images(5)
  assert samples['A'].shape == (2, 32, 32, 3)  # testA has only two images.
  expected_A = ip.load_image(folder_root / 'testA' / '0.png', 3).resize((32, 32), Image.BICUBIC)
  np.testing.assert_array_equal(samples['A'][0], ip.from_uint8(ip.as_hwc(expected_A)))
  assert samples['B'].shape == (3, 32, 32, 3)  # No testB: the three trainB images.
  expected_B = ip.load_image(folder_root / 'trainB' / '0.jpg', 3).resize((32, 32), Image.BICUBIC)
  np.testing.assert_array_equal(samples['B'][0], ip.from_uint8(ip.as_hwc(expected_B)))


def test_folder_preprocess_crop_and_none(tmp_path):
  for domain in ip.DOMAINS:
    save(tmp_path / f'train{domain}' / 'x.png', rgb_noise(0, 38, 34))
  cropped = ip.create_dataset(folder_config(tmp_path, preprocess='crop'), seed=0)
  assert cropped.train_batch(0, 2)['A'].shape == (2, 32, 32, 3)
  with pytest.raises(ValueError, match=r'x\.png.*config\.data\.crop_size'):
    ip.create_dataset(folder_config(tmp_path, preprocess='crop', crop_size=36),
                      seed=0).train_batch(0, 1)
  whole = ip.create_dataset(folder_config(tmp_path, preprocess='none'), seed=0)
  # H x W = 38 x 34 -> nearest multiples of 4 with Python's round, as the official
  # __make_power_2: round(9.5) = 10, round(8.5) = 8, so 40 x 32.
  assert whole.train_batch(0, 2)['A'].shape == (2, 40, 32, 3)
  save(tmp_path / 'trainB' / 'y.png', rgb_noise(1, 60, 60))
  mixed = ip.create_dataset(folder_config(tmp_path, preprocess='none'), seed=0)
  assert mixed.train_batch(0, 1)['B'].shape[0] == 1
  with pytest.raises(ValueError, match='batch_size 1'):
    mixed.train_batch(0, 2)


def test_crop_larger_than_image_names_the_file(tmp_path):
  for domain in ip.DOMAINS:
    save(tmp_path / f'train{domain}' / 'small.png', rgb_noise(0, 20, 20))
  dataset = ip.create_dataset(folder_config(tmp_path, preprocess='crop'), seed=0)
  with pytest.raises(ValueError, match=r'small\.png.*config\.data\.crop_size'):
    dataset.train_batch(0, 1)


# ----------------------------------------------------------------------------------------------
# Errors.


def test_missing_root_names_the_field_and_layout(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'config\.data\.root.*trainA'):
    ip.create_dataset(folder_config(tmp_path / 'nowhere'), seed=0)
  with pytest.raises(ValueError, match=r'config\.data\.root'):
    ip.create_dataset(folder_config(''), seed=0)


def test_missing_train_b_and_empty_train_a(tmp_path):
  save(tmp_path / 'trainA' / 'x.png', rgb_noise(0, 8, 8))
  with pytest.raises(FileNotFoundError, match=r'trainB.*config\.data\.root'):
    ip.create_dataset(folder_config(tmp_path), seed=0)
  (tmp_path / 'trainA' / 'x.png').unlink()
  save(tmp_path / 'trainB' / 'x.png', rgb_noise(0, 8, 8))
  with pytest.raises(ValueError, match=r'trainA holds no .*config\.data\.root'):
    ip.create_dataset(folder_config(tmp_path), seed=0)


def test_corrupt_image_is_named_also_through_the_iterator(tmp_path):
  (tmp_path / 'trainA').mkdir()
  (tmp_path / 'trainA' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really a png')
  save(tmp_path / 'trainB' / 'fine.png', rgb_noise(0, 40, 40))
  dataset = ip.create_dataset(folder_config(tmp_path), seed=0)
  with pytest.raises(ValueError, match=r'broken\.png'):
    dataset.train_batch(0, 1)
  with dataset.train_iterator(0, 1) as iterator, pytest.raises(ValueError, match=r'broken\.png'):
    next(iterator)


@pytest.mark.parametrize('source', ['embedded', 'folder'])
def test_crop_size_must_be_a_multiple_of_4(source, folder_root):
  with pytest.raises(ValueError, match=r'config\.data\.crop_size.*multiple of 4'):
    ip.create_dataset(data_config(source=source, root=str(folder_root), crop_size=30), seed=0)


def test_embedded_rejects_crops_without_room_and_grayscale():
  with pytest.raises(ValueError, match=r'config\.data\.crop_size=128'):
    ip.create_dataset(data_config(crop_size=128), seed=0)
  with pytest.raises(ValueError, match='RGB'):
    ip.create_dataset(data_config(), seed=0, channels_A=1)


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
