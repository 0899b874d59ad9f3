"""Evaluates a run's checkpoint on its test splits: `python -m cyclegan_jax.evaluate --workdir=RUN`.

    python -m cyclegan_jax.evaluate --workdir=runs/demo
    python -m cyclegan_jax.evaluate --workdir=runs/h2z --step=200000 \
        --inception_weights=/data/pt_inception-2015-12-05-6726825d.pth

Metrics and their keys are listed in cyclegan_jax/evaluation.py. Results go to
`RUN/eval/step_<step>.json`, to TensorBoard and metrics.jsonl as `eval/<key>` (with
`--weights=raw` on a run that keeps moving averages: `RUN/eval_raw/`, `eval_raw/<key>`), and
to the last stdout line, `eval: step=<step> key=value ...`. Without Inception weights (here or
in the run's `config.inception_weights`) FID and KID are skipped with a message.
"""

from absl import app
from absl import flags

from cyclegan_jax import cli
from cyclegan_jax import evaluation
from cyclegan_jax import summaries

FLAGS = flags.FLAGS


def main(argv):
  cli.no_extra_arguments(argv)
  if FLAGS.batch_size < 1:
    raise app.UsageError('--batch_size must be >= 1')
  step, results = evaluation.evaluate_workdir(FLAGS.workdir, FLAGS.step, FLAGS.inception_weights,
                                              FLAGS.data_root, FLAGS.batch_size, FLAGS.weights)
  evaluation.log_summary(step, results)
  print('eval: ' + summaries.key_values({'step': step, **results}), flush=True)


def define_flags():
  """Command-line flags (defined only when run as a program, so modules import together)."""
  flags.DEFINE_string('workdir', None, 'The run to evaluate.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  cli.define_weights_flag()
  flags.DEFINE_string(
      'inception_weights', None,
      "FID Inception weights file (default: the run's config.inception_weights; "
      "'' skips FID and KID).")
  flags.DEFINE_string(
      'data_root', None,
      "Evaluate on this folder or .zip (testA/, testB/) instead of the run's data.")
  flags.DEFINE_integer('batch_size', 16, 'Images per forward pass.')
  flags.mark_flag_as_required('workdir')


if __name__ == '__main__':
  define_flags()
  cli.run(main, compilation_cache=True)
