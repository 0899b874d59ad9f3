"""pix2pix maps: aerial photos (A) and Google maps (B): AtoB is the official sat2map
model, --config.data.direction=BtoA its map2sat. 200 epochs, batch 1; val/ is the test split.
`config_lib.pix2pix_dataset_config` says where the data goes.

    python -m cyclegan_jax.main --config=configs/pix2pix_maps.py --workdir=runs/maps
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.pix2pix_dataset_config('maps', 'AtoB', epochs=200, batch_size=1)
