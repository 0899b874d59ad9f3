"""Evaluates a run's checkpoint on its test splits: `python -m cyclegan_jax.evaluate --workdir=RUN`.

    python -m cyclegan_jax.evaluate --workdir=runs/demo
    python -m cyclegan_jax.evaluate --workdir=runs/h2z --step=200000 \
        --inception_weights=/data/pt_inception-2015-12-05-6726825d.pth

Metrics and their keys are listed in cyclegan_jax/evaluation.py. Results go to
`RUN/eval/step_<step>.json`, to TensorBoard and metrics.jsonl as `eval/<key>`, and to the last
stdout line, `eval: step=<step> key=value ...`. Without Inception weights (here or in the run's
`config.inception_weights`) FID and KID are skipped with a message.
"""

import functools

from absl import app
from absl import flags
from absl import logging
import jax

from cyclegan_jax import checkpointing
from cyclegan_jax import cli
from cyclegan_jax import evaluation
from cyclegan_jax import input_pipeline
from cyclegan_jax import summaries
from cyclegan_jax import train

FLAGS = flags.FLAGS


def evaluate_workdir(workdir: str,
                     step: int | None = None,
                     inception_weights: str | None = None,
                     data_root: str | None = None,
                     batch_size: int = 16) -> tuple[int, dict[str, float]]:
  """(step, metrics) of the checkpoint at `step` (default latest); also written to the workdir."""
  config = checkpointing.saved_config(workdir)
  if data_root:
    config.data.source, config.data.root = 'folder', data_root
  weights = config.inception_weights if inception_weights is None else inception_weights
  features = evaluation.inception_features(weights)  # Fails early on a missing weights file.
  dataset = input_pipeline.create_dataset(config.data,
                                          seed=config.seed,
                                          channels_A=config.model.input_nc,
                                          channels_B=config.model.output_nc)
  test_sets, paired = evaluation.load_test_sets(dataset, config.data.paired_test)
  state, step = train.restore_train_state(workdir, step)
  imported = checkpointing.imported_networks(workdir)
  if imported is not None and not {'G', 'F'} <= set(imported):
    logging.warning(
        '%s holds only %s converted weights; the other generator is untrained, so '
        'its metrics (and the cycle errors) mean nothing.', workdir, sorted(imported))
  networks = train.build_networks(config)
  translate_AtoB = jax.jit(functools.partial(networks.G.apply, {'params': state.params['G']}))
  translate_BtoA = jax.jit(functools.partial(networks.F.apply, {'params': state.params['F']}))
  results = evaluation.evaluate(translate_AtoB, translate_BtoA, test_sets, paired, features,
                                batch_size)
  if jax.process_index() == 0:
    writer = summaries.SummaryWriter(workdir)
    writer.scalars(step, {f'eval/{key}': value for key, value in results.items()})
    writer.close()
    summaries.write_json(evaluation.eval_path(workdir, step), {'step': step, **results})
  return step, results


def main(argv):
  cli.no_extra_arguments(argv)
  if FLAGS.batch_size < 1:
    raise app.UsageError('--batch_size must be >= 1')
  step, results = evaluate_workdir(FLAGS.workdir, FLAGS.step, FLAGS.inception_weights,
                                   FLAGS.data_root, FLAGS.batch_size)
  evaluation.log_summary(step, results)
  logging.info('Wrote %s.', evaluation.eval_path(FLAGS.workdir, step))
  print('eval: ' + summaries.key_values({'step': step, **results}), flush=True)


def define_flags():
  """Command-line flags (defined only when run as a program, so modules import together)."""
  flags.DEFINE_string('workdir', None, 'The run to evaluate.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
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
  cli.run(main)
