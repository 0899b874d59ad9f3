"""CycleGAN on horse2zebra: horses (A) <-> zebras (B); 1,067 / 1,334 training images, 1,334 steps per epoch.

The paper's recipe: 256 px crops of 286 px images, resnet_9blocks generators, 70x70 PatchGAN
discriminators, LSGAN + cycle (lambda 10) + identity (0.5), pool 50, Adam 2e-4, 100 + 100 epochs,
batch 1.

Data: the official horse2zebra.zip unpacked so that `datasets/horse2zebra/trainA`, `trainB`, `testA`,
`testB` exist (or point --config.data.root at that folder).

    python -m cyclegan_jax.main --config=configs/horse2zebra.py --workdir=runs/horse2zebra
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.paper_dataset_config('horse2zebra')
