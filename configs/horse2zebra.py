"""CycleGAN on horse2zebra: horses (A) <-> zebras (B); 1,067 / 1,334 training images, 1,334 steps per epoch.

The paper's recipe: 256 px crops of 286 px images, resnet_9blocks generators, 70x70 PatchGAN
discriminators, LSGAN + cycle (lambda 10) + identity (0.5), pool 50, Adam 2e-4, 100 + 100 epochs,
batch 1.

Data: TFDS `cycle_gan/horse2zebra`, prepared once (README, "Data"), e.g. without TensorFlow
`python -m cyclegan_jax.prepare_tfds --name=horse2zebra --source=/path/to/horse2zebra.zip`; or read
the official zip (or its unpacked folder) directly with `--config.data.source=folder
--config.data.root=/path/to/horse2zebra.zip`.

    python -m cyclegan_jax.main --config=configs/horse2zebra.py --workdir=runs/horse2zebra
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.paper_dataset_config('horse2zebra')
