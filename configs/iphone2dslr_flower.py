"""iphone2dslr_flower: iPhone flower photos (A) <-> DSLR shallow depth of field (B).
The paper's recipe and data (`config_lib.paper_dataset_config`); prepare the data once:

    python -m cyclegan_jax.prepare_tfds --name=iphone2dslr_flower --source=/path/to/iphone2dslr_flower.zip
    python -m cyclegan_jax.main --config=configs/iphone2dslr_flower.py --workdir=runs/iphone2dslr_flower
"""

from cyclegan_jax import config_lib


def get_config():
  return config_lib.paper_dataset_config('iphone2dslr_flower')
