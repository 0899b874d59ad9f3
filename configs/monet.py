"""monet2photo: Monet paintings (A) <-> landscape photos (B).
The paper's recipe and data (`config_lib.paper_dataset_config`); prepare the data once:

    python -m cyclegan_jax.prepare_tfds --name=monet2photo --source=/path/to/monet2photo.zip
    python -m cyclegan_jax.main --config=configs/monet.py --workdir=runs/monet
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.paper_dataset_config('monet2photo')
