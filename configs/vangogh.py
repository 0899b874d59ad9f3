"""vangogh2photo: Van Gogh paintings (A) <-> landscape photos (B).
The paper's recipe and data (`config_lib.paper_dataset_config`); prepare the data once:

    python -m cyclegan_jax.prepare_tfds --name=vangogh2photo --source=/path/to/vangogh2photo.zip
    python -m cyclegan_jax.main --config=configs/vangogh.py --workdir=runs/vangogh
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.paper_dataset_config('vangogh2photo')
