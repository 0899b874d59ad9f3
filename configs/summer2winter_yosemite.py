"""summer2winter_yosemite: Yosemite in summer (A) <-> in winter (B).
The paper's recipe and data (`config_lib.paper_dataset_config`); prepare the data once:

    python -m cyclegan_jax.prepare_tfds --name=summer2winter_yosemite --source=/path/to/summer2winter_yosemite.zip
    python -m cyclegan_jax.main --config=configs/summer2winter_yosemite.py --workdir=runs/summer2winter_yosemite
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.paper_dataset_config('summer2winter_yosemite')
