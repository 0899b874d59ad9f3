"""pix2pix facades: CMP facade photos (A) and their label maps (B); trained labels -> photo (BtoA), as
the paper and the official facades_label2photo model.

The paper's settings: 200 epochs at batch 1 (400 train pairs, test/ 106), split as the official
code into constant and linearly decaying halves. The recipe is `config_lib.pix2pix_config`
(U-Net-256, batch norm, dropout, conditional 70x70 PatchGAN, vanilla GAN + 100 x L1). Extract the
official `facades.tar.gz` into datasets/ (or pass its folder or a zip of it with
--config.data.root):

    python -m cyclegan_jax.main --config=configs/pix2pix_facades.py --workdir=runs/pix2pix_facades
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.pix2pix_dataset_config('facades', 'BtoA', epochs=200, batch_size=1)
