"""CycleGAN on facades: CMP facade label maps (A) <-> facade photos (B).

The paper's recipe: 256 px crops of 286 px images, resnet_9blocks generators, 70x70 PatchGAN
discriminators, LSGAN + cycle (lambda 10) + identity (0.5), pool 50, Adam 2e-4, 100 + 100 epochs,
batch 1.

Data: TFDS `cycle_gan/facades`, prepared once (README, "Data"), e.g. without TensorFlow
`python -m cyclegan_jax.prepare_tfds --name=facades --source=/path/to/facades.zip`; or read
the official zip (or its unpacked folder) directly with `--config.data.source=folder
--config.data.root=/path/to/facades.zip`.

    python -m cyclegan_jax.main --config=configs/facades.py --workdir=runs/facades
"""

from cyclegan_jax import config_lib


def get_config():
  config = config_lib.paper_dataset_config('facades')
  # Its test images come in aligned pairs (testA/<n>_A.jpg shows the scene of testB/<n>_B.jpg):
  # evaluation adds MAE, PSNR and SSIM against them.
  config.data.paired_test = True
  return config
