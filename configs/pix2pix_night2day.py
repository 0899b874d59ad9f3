"""pix2pix night2day: night (A) and day (B) webcam views of the Transient Attributes dataset;
--config.data.direction=BtoA trains the official day2night model.

The paper's settings: 17 epochs at batch 4 (17,823 train pairs in the paper), split as the official
code into constant and linearly decaying halves. The recipe is `config_lib.pix2pix_config`
(U-Net-256, batch norm, dropout, conditional 70x70 PatchGAN, vanilla GAN + 100 x L1). Extract the
official `night2day.tar.gz` into datasets/ (or pass its folder or a zip of it with
--config.data.root):

    python -m cyclegan_jax.main --config=configs/pix2pix_night2day.py --workdir=runs/pix2pix_night2day
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.pix2pix_dataset_config('night2day', 'AtoB', epochs=17, batch_size=4)
