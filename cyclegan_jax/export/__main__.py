"""python -m cyclegan_jax.export: see the package docstring (`cyclegan_jax/export/__init__.py`)."""

from absl import app
from absl import flags
from absl import logging

from cyclegan_jax import cli
from cyclegan_jax import errors
from cyclegan_jax import export
from cyclegan_jax import inference

FLAGS = flags.FLAGS


def main(argv):
  cli.no_extra_arguments(argv)
  if (FLAGS.workdir is None) == (FLAGS.torch_checkpoint is None):
    raise app.UsageError('Give exactly one of --workdir and --torch_checkpoint.')
  platforms = tuple(p.strip() for p in FLAGS.platforms.split(',') if p.strip())
  input_shape = None
  if FLAGS.input_shape:
    try:
      input_shape = tuple(int(size) for size in FLAGS.input_shape.split(','))
    except ValueError:
      raise errors.InvalidValueError(f'--input_shape={FLAGS.input_shape}: expected '
                                     'BATCH,HEIGHT,WIDTH integers, -1 for dynamic') from None
    export.input_dims(input_shape, min_side=1)  # The form; export() checks the sizes.
  export.check_format(FLAGS.format, FLAGS.quantize)
  export.check_output(FLAGS.output, FLAGS.overwrite)
  export.require_packages(FLAGS.format)
  generator = inference.load_generator(FLAGS.workdir,
                                       FLAGS.torch_checkpoint,
                                       FLAGS.direction,
                                       FLAGS.step,
                                       fast_convs=False,
                                       eval_mode=FLAGS.eval,
                                       weights=FLAGS.weights)
  logging.info('Exporting %s as %s.', generator.description, FLAGS.format)
  path = export.export(generator, FLAGS.format, FLAGS.output, FLAGS.quantize, FLAGS.overwrite,
                       platforms, input_shape)
  print(f'export: format={FLAGS.format} quantize={FLAGS.quantize} bytes={path.stat().st_size} '
        f'output={path} description={export.sidecar_path(path)}',
        flush=True)


def define_flags():
  """Command-line flags (defined only when run as a program, so modules import together)."""
  flags.DEFINE_string('workdir', None, 'A training run (or converted) workdir to take G or F from.')
  flags.DEFINE_string('torch_checkpoint', None,
                      'An official PyTorch generator .pth (e.g. horse2zebra.pth), instead of '
                      '--workdir.')
  flags.DEFINE_enum('direction', 'AtoB', list(inference.DIRECTIONS),
                    'AtoB exports G (domain A to B), BtoA exports F. Ignored with '
                    '--torch_checkpoint.')
  flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: the latest).')
  cli.define_weights_flag()
  flags.DEFINE_bool(
      'eval', None, 'Batch norm with the running statistics kept in training, as test.py --eval '
      '(default: the workdir\'s config.model.eval_mode; off for a .pth: each image by its own '
      'statistics, as test.py). Dropout is always off in an export.')
  flags.DEFINE_enum('format', None, list(export.FORMATS),
                    'stablehlo (jax.export), onnx (ONNX Runtime) or tflite (LiteRT).')
  flags.DEFINE_enum('quantize', 'none', list(export.QUANTIZE),
                    'With --format=tflite: none (float32), float16 (float16 weights) or int8 '
                    '(dynamic-range: int8 weights, float32 input and output).')
  flags.DEFINE_string('output', None, 'The file to write; its description goes to OUTPUT.json.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing output file.')
  flags.DEFINE_string('input_shape', None,
                      'BATCH,HEIGHT,WIDTH to fix (-1 keeps one dynamic), e.g. 1,256,256 for a '
                      'faster fixed-size TFLite model. Default: all dynamic.')
  flags.DEFINE_string('platforms', ','.join(export.DEFAULT_PLATFORMS),
                      'With --format=stablehlo: the comma-separated platforms to lower for.')
  flags.mark_flags_as_required(['format', 'output'])


if __name__ == '__main__':
  define_flags()
  cli.run(main, compilation_cache=True)
