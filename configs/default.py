"""The offline default: CycleGAN on photos embedded in the package, ~4 minutes on 2 CPU cores.

    python -m cyclegan_jax.main --config=configs/default.py --workdir=runs/demo

Domain A: 32 px crops of real photos; domain B: crops of *other* regions of those photos after a
120° hue rotation (an exact channel permutation). Training is unpaired; held-out regions give
paired ground truth, so the run ends with the held-out error of G and F next to the
no-translation baseline (see README, "Results").

Deviations from the paper's recipe, all for this toy task:
- small generator (3 residual blocks, ngf 16) on 32 px crops;
- no normalisation layers (norm='none'): instance norm removes each crop's mean colour, which is
  exactly what this task changes, so an instance-normalised generator can only guess a crop's
  colour from its texture and settles, seed by seed, on arbitrary colour reassignments;
- learning rate 5e-4, batch 4, 75 + 68 epochs of 14 steps (2,002 steps);
- no identity loss: it penalises exactly the colour change this task asks for.
"""

from cyclegan_jax import config_lib


def get_config():
  config = config_lib.embedded_demo(config_lib.base_config())
  config.model.generator = 'resnet_3blocks'
  config.model.norm = 'none'
  config.lambda_identity = 0.0
  return config
