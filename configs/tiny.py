"""Toy-sized CycleGAN for tests and smoke runs: seconds per run on a laptop CPU.

    python -m cyclegan_jax.main --config=configs/tiny.py --workdir=runs/tiny
"""

from cyclegan_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.data.source = 'embedded'
  config.data.crop_size = 32
  config.data.num_heldout = 16
  config.model.generator = 'resnet_1blocks'
  config.model.ngf = 8
  config.model.ndf = 8
  config.lambda_identity = 0.0  # The embedded domains differ by a colour map: no identity term.
  config.pool_size = 4
  config.batch_size = 2
  config.num_epochs = 1
  config.num_epochs_decay = 1
  config.num_train_steps = 6
  config.log_every_steps = 2
  config.checkpoint_every_steps = 3
  config.sample_every_steps = 3
  config.num_sample_images = 2
  config.plot_at_end = False  # Saves ~1.5 s a run; tests that want the plots turn it on.
  return config
