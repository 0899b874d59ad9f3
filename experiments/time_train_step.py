"""Times the real jitted train step of a config on synthetic images.

    python -m experiments.time_train_step --config=configs/monet.py --config.data.crop_size=128

Builds the same train step as training (all four networks, losses, pools, Adam), feeds it
random images of the configured size, and prints compile time and the median / min / max
step time over `--steps` timed steps after `--warmup` steps.
"""

import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from cyclegan_jax import config_lib
from cyclegan_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
flags.DEFINE_integer('steps', 5, 'Timed steps.')
flags.DEFINE_integer('warmup', 1, 'Untimed steps after compilation.')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  config = FLAGS.config
  config_lib.validate(config, num_devices=jax.device_count())
  size, batch = config.data.crop_size, config.batch_size
  trainer = train.build_trainer(config, epoch_steps=1000,
                                image_shape_A=(size, size, config.model.input_nc),
                                image_shape_B=(size, size, config.model.output_nc))
  rng = np.random.default_rng(0)
  batch_arrays = {
      'A': rng.uniform(-1, 1, (batch, size, size, config.model.input_nc)).astype(np.float32),
      'B': rng.uniform(-1, 1, (batch, size, size, config.model.output_nc)).astype(np.float32),
  }
  batch_arrays = jax.device_put(batch_arrays, trainer.batch_sharding)
  state = trainer.init()

  start = time.perf_counter()
  compiled = trainer.step.lower(state, batch_arrays).compile()
  compile_s = time.perf_counter() - start
  for _ in range(FLAGS.warmup):
    state, metrics = compiled(state, batch_arrays)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(FLAGS.steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch_arrays)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  print(f'{config.model.generator} ngf {config.model.ngf}, {size} px, batch {batch}, '
        f'{jax.devices()[0].platform} x{jax.device_count()}: compile {compile_s:.1f} s, step '
        f'median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f})')
  print(f'step_time_s={statistics.median(times):.4f}')


if __name__ == '__main__':
  app.run(main)
