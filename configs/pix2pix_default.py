"""The offline pix2pix demo: the embedded photos of configs/default.py in paired form.

    python -m cyclegan_jax.main --config=configs/pix2pix_default.py --workdir=runs/demo

The task of the CycleGAN default (32 px crops of real photos -> the same crops after a 120° hue
rotation), but each training crop comes with its ground truth: the upper bound the CycleGAN paper
compares its unpaired results against. The run ends with the held-out error of G (A -> B) next to
the no-translation baseline; README, "pix2pix", compares it with the CycleGAN default's.

The pix2pix recipe (`config_lib.pix2pix_config`: U-Net, batch norm, dropout, conditional PatchGAN,
vanilla GAN + 100 x L1), scaled to the toy task as the CycleGAN default: U-Net-32 (5 levels, 32 px
down to 1 x 1) of ngf 16, ndf 16, batch 4, learning rate 5e-4 and its schedule of 75 + 68 epochs
of 14 steps (2,002 steps).
"""

from cyclegan_jax import config_lib


def get_config():
  config = config_lib.embedded_demo(config_lib.pix2pix_config())
  config.model.generator = 'unet_32'
  return config
