"""pix2pix maps: aerial photos (A) and Google maps (B); AtoB is the official sat2map model,
--config.data.direction=BtoA its map2sat.

The paper's settings: 200 epochs at batch 1 (1,096 train pairs; val/ is the test split), split as
the official code into constant and linearly decaying halves. The recipe is
`config_lib.pix2pix_config` (U-Net-256, batch norm, dropout, conditional 70x70 PatchGAN, vanilla
GAN + 100 x L1). Extract the official `maps.tar.gz` into datasets/ (or pass its folder or a zip of
it with --config.data.root):

    python -m cyclegan_jax.main --config=configs/pix2pix_maps.py --workdir=runs/pix2pix_maps
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.pix2pix_dataset_config('maps', 'AtoB', epochs=200, batch_size=1)
