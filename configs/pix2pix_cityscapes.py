"""pix2pix cityscapes: street photos (A) and label maps (B), trained labels -> photo as the paper
(BtoA). 200 epochs, batch 1; val/ is the test split.
`config_lib.pix2pix_dataset_config` says where the data goes.

    python -m cyclegan_jax.main --config=configs/pix2pix_cityscapes.py --workdir=runs/cityscapes
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.pix2pix_dataset_config('cityscapes', 'BtoA', epochs=200, batch_size=1)
