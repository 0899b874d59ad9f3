"""cezanne2photo: Cezanne paintings (A) <-> landscape photos (B).
The paper's recipe and data (`config_lib.paper_dataset_config`); prepare the data once:

    python -m cyclegan_jax.prepare_tfds --name=cezanne2photo --source=/path/to/cezanne2photo.zip
    python -m cyclegan_jax.main --config=configs/cezanne.py --workdir=runs/cezanne
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.paper_dataset_config('cezanne2photo')
