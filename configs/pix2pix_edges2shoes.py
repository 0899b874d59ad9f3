"""pix2pix edges2shoes: HED edge maps (A) and UT Zappos50K shoe photos (B), edges -> photo.
15 epochs, batch 4; val/ is the test split.
`config_lib.pix2pix_dataset_config` says where the data goes.

    python -m cyclegan_jax.main --config=configs/pix2pix_edges2shoes.py --workdir=runs/edges2shoes
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.pix2pix_dataset_config('edges2shoes', 'AtoB', epochs=15, batch_size=4)
