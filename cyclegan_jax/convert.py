"""Converts official PyTorch CycleGAN checkpoints into a JAX workdir (no PyTorch needed).

    # One pretrained generator (horse2zebra.pth is horse -> zebra: G, direction AtoB).
    python -m cyclegan_jax.convert --torch_checkpoint=horse2zebra.pth --output=runs/h2z_official
    # A whole official training run: <epoch>_net_G_A/G_B/D_A/D_B.pth from its checkpoints folder.
    python -m cyclegan_jax.convert --torch_dir=checkpoints/horse2zebra_cyclegan --output=runs/h2z
    # An official pix2pix run (<epoch>_net_G/D.pth): a pix2pix workdir.
    python -m cyclegan_jax.convert --torch_dir=checkpoints/facades_pix2pix --output=runs/facades

The workdir holds a step-0 checkpoint of a full train state in which the converted networks
carry the PyTorch weights and the rest are freshly initialised, its config.json (architecture
inferred from the state_dicts), and `imported.json` naming the converted networks. Use it with
`translate --workdir`, `export --workdir`, or as `--config.init_from` of a training run.
Official names map to ours as G_A -> G, G_B -> F, D_A -> D_Y (it judges domain B), D_B -> D_X;
pix2pix's G and D keep their names. Batch norms' running statistics go into the train state.
"""

from pathlib import Path

from absl import app
from absl import flags
from absl import logging

from cyclegan_jax import cli
from cyclegan_jax import inference
from cyclegan_jax.torch_io import runs

FLAGS = flags.FLAGS


def main(argv):
  cli.no_extra_arguments(argv)
  if (FLAGS.torch_checkpoint is None) == (FLAGS.torch_dir is None):
    raise app.UsageError('Give exactly one of --torch_checkpoint and --torch_dir.')
  if FLAGS.torch_checkpoint is not None:
    files = {inference.DIRECTIONS[FLAGS.direction]: Path(FLAGS.torch_checkpoint)}
  else:
    files = runs.official_run_files(FLAGS.torch_dir, FLAGS.epoch)
  output = Path(FLAGS.output)
  config = runs.convert(files, output, FLAGS.crop_size)
  logging.info('Converted %s into %s (%s, ngf %d, %s norm).',
               ', '.join(f'{path} -> {name}' for name, path in files.items()), output,
               config.model.generator, config.model.ngf, config.model.norm)
  print(f'convert: output={output} networks={",".join(sorted(files))}', flush=True)


def define_flags():
  """Command-line flags (defined only when run as a program, so modules import together)."""
  flags.DEFINE_string('torch_checkpoint', None, 'One official generator .pth file.')
  flags.DEFINE_enum('direction', 'AtoB', list(inference.DIRECTIONS),
                    "With --torch_checkpoint: the generator's direction (AtoB -> G, BtoA -> F).")
  flags.DEFINE_string(
      'torch_dir', None, 'An official checkpoints folder holding <epoch>_net_{G_A,G_B,D_A,D_B}.pth '
      '(CycleGAN) or <epoch>_net_{G,D}.pth (pix2pix).')
  flags.DEFINE_string('epoch', 'latest', 'With --torch_dir: which epoch to convert.')
  flags.DEFINE_string('output', None, 'New workdir to write (must not hold checkpoints).')
  flags.DEFINE_integer('crop_size', 256, 'config.data.crop_size recorded in the workdir.')
  flags.mark_flag_as_required('output')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
