"""pix2pix edges2shoes: HED edge maps (A) and shoe photos (B) of UT Zappos50K, as the official
edges2shoes model.

The paper's settings: 15 epochs at batch 4 (about 50k train pairs; val/ is the test split), split
as the official code into constant and linearly decaying halves. The recipe is
`config_lib.pix2pix_config` (U-Net-256, batch norm, dropout, conditional 70x70 PatchGAN, vanilla
GAN + 100 x L1). Extract the official `edges2shoes.tar.gz` into datasets/ (or pass its folder or a
zip of it with --config.data.root):

    python -m cyclegan_jax.main --config=configs/pix2pix_edges2shoes.py --workdir=runs/pix2pix_edges2shoes
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.pix2pix_dataset_config('edges2shoes', 'AtoB', epochs=15, batch_size=4)
