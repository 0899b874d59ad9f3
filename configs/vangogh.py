"""CycleGAN on vangogh2photo: Van Gogh paintings (A) <-> landscape photos (B).

The paper's recipe: 256 px crops of 286 px images, resnet_9blocks generators, 70x70 PatchGAN
discriminators, LSGAN + cycle (lambda 10) + identity (0.5), pool 50, Adam 2e-4, 100 + 100 epochs,
batch 1.

Data: TFDS `cycle_gan/vangogh2photo`, prepared once (README, "Data"), e.g. without TensorFlow
`python -m cyclegan_jax.prepare_tfds --name=vangogh2photo --source=/path/to/vangogh2photo.zip`; or read
the official zip (or its unpacked folder) directly with `--config.data.source=folder
--config.data.root=/path/to/vangogh2photo.zip`.

    python -m cyclegan_jax.main --config=configs/vangogh.py --workdir=runs/vangogh
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.paper_dataset_config('vangogh2photo')
