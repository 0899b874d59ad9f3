"""ukiyoe2photo: Ukiyo-e prints (A) <-> landscape photos (B).
The paper's recipe and data (`config_lib.paper_dataset_config`); prepare the data once:

    python -m cyclegan_jax.prepare_tfds --name=ukiyoe2photo --source=/path/to/ukiyoe2photo.zip
    python -m cyclegan_jax.main --config=configs/ukiyoe.py --workdir=runs/ukiyoe
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.paper_dataset_config('ukiyoe2photo')
