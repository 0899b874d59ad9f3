"""apple2orange: apples (A) <-> oranges (B).
The paper's recipe and data (`config_lib.paper_dataset_config`); prepare the data once:

    python -m cyclegan_jax.prepare_tfds --name=apple2orange --source=/path/to/apple2orange.zip
    python -m cyclegan_jax.main --config=configs/apple2orange.py --workdir=runs/apple2orange
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.paper_dataset_config('apple2orange')
