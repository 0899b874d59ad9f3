"""pix2pix night2day: night (A) and day (B) webcam views (Transient Attributes);
--config.data.direction=BtoA trains the official day2night. 17 epochs, batch 4.
`config_lib.pix2pix_dataset_config` says where the data goes.

    python -m cyclegan_jax.main --config=configs/pix2pix_night2day.py --workdir=runs/night2day
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.pix2pix_dataset_config('night2day', 'AtoB', epochs=17, batch_size=4)
