"""horse2zebra: horses (A) <-> zebras (B); 1,067 / 1,334 images, 1,334 steps per epoch.
The paper's recipe and data (`config_lib.paper_dataset_config`); prepare the data once:

    python -m cyclegan_jax.prepare_tfds --name=horse2zebra --source=/path/to/horse2zebra.zip
    python -m cyclegan_jax.main --config=configs/horse2zebra.py --workdir=runs/horse2zebra
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.paper_dataset_config('horse2zebra')
