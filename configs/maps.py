"""maps: Google Maps aerial photos (A) <-> map renderings (B).
The paper's recipe and data (`config_lib.paper_dataset_config`); prepare the data once:

    python -m cyclegan_jax.prepare_tfds --name=maps --source=/path/to/maps.zip
    python -m cyclegan_jax.main --config=configs/maps.py --workdir=runs/maps
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.paper_dataset_config('maps', paired_test=True)
