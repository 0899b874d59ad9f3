"""Measures the input pipeline alone: training examples per second from JPEGs at 256 px.

    python -m experiments.benchmark_input_pipeline                 # Synthetic horse2zebra-like data.
    python -m experiments.benchmark_input_pipeline --root=datasets/horse2zebra   # Real data.

Without --root it writes a folder in the official layout with `--images` 256 x 256 JPEGs per
training split (crops of the embedded photos, JPEG quality 90, like the official datasets' 256 px
JPEGs), the same as a zip read in place, and the same prepared as TFDS array_record with
`cyclegan_jax.prepare_tfds`. For each source and worker count it iterates the real training
iterator (the paper's preprocessing: bicubic resize to 286, random 256 crop, random flip, scaling
to float32 [-1, 1]) and reports examples/s and images/s (an example is one A and one B image).
The train step is not run: this is the rate at which the pipeline could feed one.
"""

import os
import pathlib
import tempfile
import time
import zipfile

from absl import app
from absl import flags
import ml_collections
import numpy as np
from PIL import Image

from cyclegan_jax import config_lib
from cyclegan_jax import data
from cyclegan_jax.data import embedded
from cyclegan_jax import prepare_tfds

FLAGS = flags.FLAGS
flags.DEFINE_string('root', '', 'Folder or zip in the CycleGAN layout; empty: synthetic JPEGs.')
flags.DEFINE_integer('images', 300, 'Synthetic images per training split.')
flags.DEFINE_integer('batch_size', 1, 'Global batch size.')
flags.DEFINE_integer('batches', 300, 'Timed batches per measurement.')
flags.DEFINE_list('workers', ['1', '2', '4'], 'Worker thread counts to measure.')
flags.DEFINE_list('sources', ['folder', 'zip', 'tfds'], 'Sources to measure (synthetic data).')


def write_synthetic_jpegs(root: pathlib.Path, count: int) -> None:
  """`count` 256 x 256 JPEG crops of the embedded photos per training split, 4 per test split."""
  photos = [
      photo for photo in embedded.load_embedded_photos().values() if min(photo.shape[:2]) >= 256
  ]
  rng = np.random.default_rng(0)
  for split, number in (('trainA', count), ('trainB', count), ('testA', 4), ('testB', 4)):
    (root / split).mkdir(parents=True)
    for index in range(number):
      photo = photos[rng.integers(len(photos))]
      top = rng.integers(photo.shape[0] - 256 + 1)
      left = rng.integers(photo.shape[1] - 256 + 1)
      # Rolled, mirrored and channel-permuted, so that no two files are alike.
      crop = np.roll(photo[top:top + 256, left:left + 256], rng.integers(256), axis=1)
      crop = crop[:, ::rng.choice((1, -1))][..., rng.permutation(3)]
      Image.fromarray(crop).save(root / split / f'{index:05d}.jpg', quality=90)


def zip_folder(folder: pathlib.Path, path: pathlib.Path) -> None:
  with zipfile.ZipFile(path, 'w') as archive:
    for file in sorted(folder.rglob('*.jpg')):
      archive.write(file, 'horse2zebra/' + file.relative_to(folder).as_posix())


def examples_per_second(data_config: ml_collections.ConfigDict, batch_size: int,
                        batches: int) -> float:
  dataset = data.create_dataset(data_config, seed=0)
  with dataset.train_iterator(batch_size) as iterator:
    for _ in range(min(10, batches)):  # Warm-up: threads started, files cached.
      next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
      batch = next(iterator)
    elapsed = time.perf_counter() - start
  assert batch['A'].shape == (batch_size, 256, 256, 3)
  return batches * batch_size / elapsed


def main(argv):
  del argv
  data_config = config_lib.base_config().data
  data_config.prefetch = 8
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    if FLAGS.root:
      sources = {'folder': dict(source='folder', root=FLAGS.root)}
    else:
      write_synthetic_jpegs(scratch / 'horse2zebra', FLAGS.images)
      sources = {
          'folder':
              dict(source='folder', root=str(scratch / 'horse2zebra')),
          'zip':
              dict(source='folder', root=str(scratch / 'horse2zebra.zip')),
          'tfds':
              dict(source='tfds',
                   tfds_name='cycle_gan/horse2zebra',
                   tfds_data_dir=str(scratch / 'tfds')),
      }
      sources = {name: sources[name] for name in FLAGS.sources}
      if 'zip' in sources:
        zip_folder(scratch / 'horse2zebra', scratch / 'horse2zebra.zip')
      if 'tfds' in sources:
        prepare_tfds.prepare('horse2zebra', scratch / 'horse2zebra', scratch / 'tfds')
    print(f'CPU cores: {os.cpu_count()}; batch {FLAGS.batch_size}; {FLAGS.batches} batches; '
          'resize 286, crop 256, flip')
    print('| source | workers | examples/s | images/s |')
    print('| --- | --- | --- | --- |')
    for name, fields in sources.items():
      for workers in FLAGS.workers:
        data_config.update(dict(fields, num_workers=int(workers)))
        rate = examples_per_second(data_config, FLAGS.batch_size, FLAGS.batches)
        print(f'| {name} | {workers} | {rate:.0f} | {2 * rate:.0f} |', flush=True)


if __name__ == '__main__':
  app.run(main)
