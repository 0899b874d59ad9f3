"""facades: CMP facade label maps (A) <-> facade photos (B).
The paper's recipe and data (`config_lib.paper_dataset_config`); prepare the data once:

    python -m cyclegan_jax.prepare_tfds --name=facades --source=/path/to/facades.zip
    python -m cyclegan_jax.main --config=configs/facades.py --workdir=runs/facades
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.paper_dataset_config('facades', paired_test=True)
