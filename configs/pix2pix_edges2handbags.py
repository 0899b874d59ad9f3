"""pix2pix edges2handbags: HED edge maps (A) and iGAN handbag photos (B), edges -> photo.
15 epochs, batch 4; val/ is the test split.
`config_lib.pix2pix_dataset_config` says where the data goes.

    python -m cyclegan_jax.main --config=configs/pix2pix_edges2handbags.py --workdir=runs/edges2handbags
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.pix2pix_dataset_config('edges2handbags', 'AtoB', epochs=15, batch_size=4)
