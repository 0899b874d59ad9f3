"""Translates your images with a trained generator or an official pretrained `.pth` model.

    python -m cyclegan_jax.translate --workdir=runs/monet --direction=BtoA \
        --input=photos/ --output=out/
    python -m cyclegan_jax.translate --torch_checkpoint=horse2zebra.pth \
        --input='horses/*.jpg' --output=zebras/ --grid

--input is an image file, a folder (searched recursively) or a quoted glob. Each output is a PNG
named after its input (`a/b.jpg` -> `OUTPUT/a/b.png`, the folder structure kept); `--grid` also
writes input | output pairs to `OUTPUT/grid/`. Images keep their size: sides that are not
multiples of 4 are reflection-padded for the network and cropped back. Greyscale, palette,
RGBA and 16-bit inputs are converted by the data pipeline's channel policy (README, "Data").
An unreadable file is reported and skipped; existing outputs are kept unless --overwrite.

As the official test.py: each image is translated as if alone (batch norm uses its own
statistics), and a generator trained with dropout keeps it on (masks from --seed); with --eval, as
test.py --eval, dropout is off and batch norm uses the running statistics kept in training.
Images whose whole-image program would need more memory than --max_memory (default: most of the
free accelerator memory, or of the available host memory on CPU) are translated in tiles, or
every image with --tile=N; tiles give the same output as the whole image (README, "Translate").
A generator that keeps dropout on is translated whole only (with --eval it can be tiled).
"""

from pathlib import Path

from absl import app
from absl import flags

from cyclegan_jax import cli
from cyclegan_jax import errors
from cyclegan_jax import inference
from cyclegan_jax.inference import files

FLAGS = flags.FLAGS


def main(argv):
  cli.no_extra_arguments(argv)
  if (FLAGS.workdir is None) == (FLAGS.torch_checkpoint is None):
    raise app.UsageError('Give exactly one of --workdir and --torch_checkpoint.')
  if FLAGS.batch_size < 1:
    raise app.UsageError('--batch_size must be >= 1')
  output = Path(FLAGS.output)
  written, unreadable = files.translate_path(FLAGS.input,
                                             output,
                                             workdir=FLAGS.workdir,
                                             torch_checkpoint=FLAGS.torch_checkpoint,
                                             direction=FLAGS.direction,
                                             step=FLAGS.step,
                                             batch_size=FLAGS.batch_size,
                                             grid=FLAGS.grid,
                                             overwrite=FLAGS.overwrite,
                                             eval_mode=FLAGS.eval,
                                             weights=FLAGS.weights,
                                             seed=FLAGS.seed,
                                             tile=FLAGS.tile,
                                             max_memory=FLAGS.max_memory)
  print(f'translate: written={written} skipped={len(unreadable)} output={output}', flush=True)
  if written == 0:
    raise errors.InvalidValueError(
        f'no image could be translated: {len(unreadable)} unreadable file(s), listed above')


def define_flags():
  """Command-line flags (defined only when run as a program, so modules import together)."""
  flags.DEFINE_string('workdir', None, 'A training run (or converted) workdir to take G or F from.')
  flags.DEFINE_string(
      'torch_checkpoint', None,
      'An official PyTorch generator .pth (e.g. horse2zebra.pth), instead of '
      '--workdir.')
  flags.DEFINE_enum('direction', 'AtoB', list(inference.DIRECTIONS),
                    'AtoB uses G (domain A to B), BtoA uses F. Ignored with --torch_checkpoint.')
  flags.DEFINE_integer('step', None, 'Checkpoint step to use (default: the latest).')
  flags.DEFINE_string('input', None, 'Image file, folder or glob pattern.')
  flags.DEFINE_string('output', None, 'Folder for the translated PNGs.')
  flags.DEFINE_integer('batch_size', 8, 'Images of the same size translated together.')
  flags.DEFINE_bool('grid', False, 'Also write input | output images to OUTPUT/grid/.')
  flags.DEFINE_bool('overwrite', False, 'Replace outputs that already exist.')
  flags.DEFINE_bool(
      'eval', None, 'As the official test.py --eval: dropout off, batch norm with the running '
      'statistics kept in training (default: the workdir\'s config.model.eval_mode; off for a '
      '.pth). Only generators with dropout or batch norm differ.')
  flags.DEFINE_integer('seed', 0, 'Draws the dropout masks of a generator that keeps dropout on.')
  cli.define_weights_flag()
  flags.DEFINE_integer(
      'tile', None, 'Translate every image in tiles of at most N x N pixels (the same output as '
      'the whole image, in memory bounded by N; not with dropout on: add --eval). Default: '
      'tiles only for images that need more than --max_memory.')
  flags.DEFINE_string(
      'max_memory', None, "Memory budget for translating a batch, e.g. '2G' or '512M' (K, M, G, T: "
      'powers of 1024); larger images are translated in tiles. Default: 90% of the free '
      'accelerator memory, on CPU 80% of the available host memory.')
  flags.mark_flags_as_required(['input', 'output'])


if __name__ == '__main__':
  define_flags()
  cli.run(main, compilation_cache=True)
