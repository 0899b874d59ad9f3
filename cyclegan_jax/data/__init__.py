"""Unpaired training data for CycleGAN from TFDS, image folders, zips or the embedded photos.

    dataset = data.create_dataset(config.data, seed=config.seed, channels_A=3, channels_B=3)
    with dataset.train_iterator(batch_size, start_example) as batches:
      batch = next(batches)  # {'A': float32 [B, H, W, C] in [-1, 1], 'B': ...}

How one batch flows from disk: `pipeline.BatchIterator.__next__` asks `Dataset.training_example`
for each example of the batch (on worker threads), which draws the A and B image indices
(`preprocess.example_indices`), reads the encoded image from its split's source (`sources`),
decodes it by the channel policy (`image_io.decode_image`), resizes it (`preprocess.
preprocess_for_training`), crops and flips it (`preprocess.sample_augmentation`,
`apply_augmentation`); the iterator stacks the examples and scales them to [-1, 1]
(`image_io.from_uint8`).

Modules: `image_io` (decoding, channel policy, pixels), `preprocess` (official transforms and the
stateless sampling), `sources` (folder, zip, TFDS and in-memory splits), `embedded` (the offline
photos), `pipeline` (Dataset, BatchIterator, create_dataset).
"""

from cyclegan_jax.data.pipeline import BatchIterator
from cyclegan_jax.data.pipeline import create_dataset
from cyclegan_jax.data.pipeline import Dataset
