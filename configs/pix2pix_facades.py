"""pix2pix facades: CMP facade photos (A) and label maps (B), trained labels -> photo as the
paper (BtoA, the official facades_label2photo model). 200 epochs, batch 1.
`config_lib.pix2pix_dataset_config` says where the data goes.

    python -m cyclegan_jax.main --config=configs/pix2pix_facades.py --workdir=runs/facades
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.pix2pix_dataset_config('facades', 'BtoA', epochs=200, batch_size=1)
