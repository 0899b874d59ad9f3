"""CycleGAN on apple2orange: apples (A) <-> oranges (B).

The paper's recipe: 256 px crops of 286 px images, resnet_9blocks generators, 70x70 PatchGAN
discriminators, LSGAN + cycle (lambda 10) + identity (0.5), pool 50, Adam 2e-4, 100 + 100 epochs,
batch 1.

Data: TFDS `cycle_gan/apple2orange`, prepared once (README, "Data"), e.g. without TensorFlow
`python -m cyclegan_jax.prepare_tfds --name=apple2orange --source=/path/to/apple2orange.zip`; or read
the official zip (or its unpacked folder) directly with `--config.data.source=folder
--config.data.root=/path/to/apple2orange.zip`.

    python -m cyclegan_jax.main --config=configs/apple2orange.py --workdir=runs/apple2orange
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.paper_dataset_config('apple2orange')
