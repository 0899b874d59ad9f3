"""CycleGAN training: train state, the jitted train step, and the training loop.

Names follow the paper: G: A(X) → B(Y), F: B → A; D_Y judges real b against G(a),
D_X judges real a against F(b).
"""

import contextlib
import functools
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cyclegan_jax import checkpointing
from cyclegan_jax import config_lib
from cyclegan_jax import errors
from cyclegan_jax import evaluation
from cyclegan_jax import image_pool
from cyclegan_jax import data
from cyclegan_jax import losses
from cyclegan_jax import state as state_lib
from cyclegan_jax import summaries
from cyclegan_jax import workdir as workdir_lib

# Config switch -> the generator loss term it controls (names as in the train step's metrics).
SWITCHABLE_TERMS = {
    'use_gan_G': 'gan_G',
    'use_gan_F': 'gan_F',
    'use_cycle_forward': 'cycle_A',
    'use_cycle_backward': 'cycle_B',
}
# Each discriminator trains only while the GAN term it judges for is on.
DISCRIMINATOR_TERM_OF = {'D_Y': 'gan_G', 'D_X': 'gan_F'}


def switched_off_terms(config: ml_collections.ConfigDict) -> frozenset[str]:
  return frozenset(term for switch, term in SWITCHABLE_TERMS.items() if not config[switch])


def train_step(
    state: state_lib.TrainState,
    batch: dict[str, jax.Array],
    *,
    networks: state_lib.Networks,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    gan_mode: str,
    lambda_cycle: float,
    lambda_identity: float,
    switched_off: frozenset[str] = frozenset()
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One CycleGAN iteration in the official order.

  1. G and F: one joint Adam step on the GAN + cycle + identity objective, the
     discriminators frozen.
  2. The fakes of that forward pass (pre-update generators, no gradient) go
     through the image pools.
  3. D_X and D_Y: one joint Adam step, each on its real batch and the pool's fakes.

  `switched_off` names loss terms (see `SWITCHABLE_TERMS`) that are computed and reported but
  left out of the objectives; a discriminator whose GAN term is off gets no gradient.
  """
  real_A, real_B = batch['A'], batch['B']
  rng, pool_key_A, pool_key_B = jax.random.split(state.rng, 3)
  params = state.params

  def generator_objective(generator_params):
    G = functools.partial(networks.G.apply, {'params': generator_params['G']})
    F = functools.partial(networks.F.apply, {'params': generator_params['F']})
    D_X = functools.partial(networks.D_X.apply, {'params': params['D_X']})
    D_Y = functools.partial(networks.D_Y.apply, {'params': params['D_Y']})
    fake_B = G(real_A)
    rec_A = F(fake_B)
    fake_A = F(real_B)
    rec_B = G(fake_A)
    terms = {
        'gan_G': losses.generator_gan_loss(D_Y(fake_B), gan_mode),
        'gan_F': losses.generator_gan_loss(D_X(fake_A), gan_mode),
        'cycle_A': losses.cycle_loss(rec_A, real_A, lambda_cycle),
        'cycle_B': losses.cycle_loss(rec_B, real_B, lambda_cycle),
    }
    if lambda_identity > 0:
      terms['idt_G'] = losses.identity_loss(G(real_B), real_B, lambda_cycle, lambda_identity)
      terms['idt_F'] = losses.identity_loss(F(real_A), real_A, lambda_cycle, lambda_identity)
    total = sum((value for name, value in terms.items() if name not in switched_off),
                jnp.zeros((), jnp.float32))
    return total, (terms, fake_A, fake_B)

  generator_params = {k: params[k] for k in state_lib.GENERATOR_NAMES}
  grads, (generator_terms, fake_A, fake_B) = jax.grad(
      generator_objective, has_aux=True)(generator_params)
  updates, opt_state_generators = optimizer.update(
      grads, state.opt_state_generators, generator_params)
  generator_params = optax.apply_updates(generator_params, updates)

  fake_A = jax.lax.stop_gradient(fake_A)
  fake_B = jax.lax.stop_gradient(fake_B)
  pool_A, pooled_fake_A = image_pool.query_pool(state.pool_A, fake_A, pool_key_A)
  pool_B, pooled_fake_B = image_pool.query_pool(state.pool_B, fake_B, pool_key_B)

  def discriminator_objective(discriminator_params):
    D_X = functools.partial(networks.D_X.apply, {'params': discriminator_params['D_X']})
    D_Y = functools.partial(networks.D_Y.apply, {'params': discriminator_params['D_Y']})
    scores = {'D_X/real': D_X(real_A), 'D_X/fake': D_X(pooled_fake_A),
              'D_Y/real': D_Y(real_B), 'D_Y/fake': D_Y(pooled_fake_B)}
    terms = {
        'D_X': losses.discriminator_loss(scores['D_X/real'], scores['D_X/fake'], gan_mode),
        'D_Y': losses.discriminator_loss(scores['D_Y/real'], scores['D_Y/fake'], gan_mode),
    }
    mean_scores = {k: jnp.mean(v.astype(jnp.float32)) for k, v in scores.items()}
    total = sum((value for name, value in terms.items()
                 if DISCRIMINATOR_TERM_OF[name] not in switched_off), jnp.zeros((), jnp.float32))
    return total, (terms, mean_scores)

  discriminator_params = {k: params[k] for k in state_lib.DISCRIMINATOR_NAMES}
  grads, (discriminator_terms, mean_scores) = jax.grad(
      discriminator_objective, has_aux=True)(discriminator_params)
  updates, opt_state_discriminators = optimizer.update(
      grads, state.opt_state_discriminators, discriminator_params)
  discriminator_params = optax.apply_updates(discriminator_params, updates)

  metrics = {f'loss/{k}': v for k, v in generator_terms.items()}
  metrics['loss/generators'] = sum(
      (value for name, value in generator_terms.items() if name not in switched_off),
      jnp.zeros((), jnp.float32))
  metrics.update({f'loss/{k}': v for k, v in discriminator_terms.items()})
  metrics.update({f'score/{k}': v for k, v in mean_scores.items()})
  metrics['lr'] = jnp.asarray(schedule(state.step), jnp.float32)

  new_state = state.replace(
      step=state.step + 1,
      params={**generator_params, **discriminator_params},
      opt_state_generators=opt_state_generators,
      opt_state_discriminators=opt_state_discriminators,
      pool_A=pool_A, pool_B=pool_B, rng=rng)
  return new_state, metrics


def translate_all(networks: state_lib.Networks, params: dict[str, Any], real_A: jax.Array,
                  real_B: jax.Array) -> dict[str, jax.Array]:
  """Both directions and both cycles, for sample grids."""
  G = functools.partial(networks.G.apply, {'params': params['G']})
  F = functools.partial(networks.F.apply, {'params': params['F']})
  fake_B, fake_A = G(real_A), F(real_B)
  return {'real_A': real_A, 'fake_B': fake_B, 'rec_A': F(fake_B),
          'real_B': real_B, 'fake_A': fake_A, 'rec_B': G(fake_A)}


class Trainer(NamedTuple):
  """The compiled pieces of a run, built once from the config."""
  networks: state_lib.Networks
  schedule: optax.Schedule
  state_sharding: jax.sharding.NamedSharding
  batch_sharding: jax.sharding.NamedSharding
  init: Any  # () -> state_lib.TrainState, jitted
  step: Any  # (state_lib.TrainState, batch) -> (state_lib.TrainState, metrics), jitted, state donated
  translate: Any  # (params, real_A, real_B) -> dict of images for grids, jitted
  translate_AtoB: Any  # (params, real_A) -> G(real_A) as numpy, jitted
  translate_BtoA: Any  # (params, real_B) -> F(real_B) as numpy, jitted


def make_mesh() -> jax.sharding.Mesh:
  """All devices on one data-parallel axis; XLA propagates the shardings (Auto mode)."""
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def build_trainer(config: ml_collections.ConfigDict, epoch_steps: int,
                  mesh: jax.sharding.Mesh | None = None) -> Trainer:
  mesh = make_mesh() if mesh is None else mesh
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  networks = state_lib.build_networks(config)
  schedule = state_lib.learning_rate_schedule(config, epoch_steps)
  optimizer = state_lib.adam(config, schedule)
  init = jax.jit(state_lib.train_state_initializer(config, optimizer), out_shardings=replicated)
  step = jax.jit(
      functools.partial(train_step, networks=networks, optimizer=optimizer, schedule=schedule,
                        gan_mode=config.gan_mode, lambda_cycle=float(config.lambda_cycle),
                        lambda_identity=float(config.lambda_identity),
                        switched_off=switched_off_terms(config)),
      in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated),
      donate_argnums=0)
  return Trainer(
      networks, schedule, replicated, batch_sharding, init, step,
      translate=jax.jit(functools.partial(translate_all, networks), out_shardings=replicated),
      translate_AtoB=_on_host(
          jax.jit(lambda params, x: networks.G.apply({'params': params['G']}, x),
                  out_shardings=replicated)),
      translate_BtoA=_on_host(
          jax.jit(lambda params, y: networks.F.apply({'params': params['F']}, y),
                  out_shardings=replicated)))


def _on_host(fn: Callable[..., jax.Array]) -> Callable[..., np.ndarray]:
  return lambda *args: state_lib.to_host(fn(*args))


def global_batch(local_batch: dict[str, np.ndarray],
                 sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays laid out by `sharding` over all devices."""
  return jax.tree.map(lambda rows: jax.make_array_from_process_local_data(sharding, rows),
                      local_batch)


class _StopRequest:
  """Turns SIGTERM/SIGINT into a request to checkpoint and stop at the next step."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: leave signals alone.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested:  # A second signal: stop now.
      raise KeyboardInterrupt(f'signal {signum}')
    logging.warning('Signal %d: saving a checkpoint and stopping after this step.', signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _check_finite(step: int, metrics: dict[str, float], workdir: Path) -> None:
  bad = [k for k, v in metrics.items() if not math.isfinite(v)]
  if bad:
    raise errors.DivergedError(
        f'Non-finite {", ".join(bad)} at step {step}. The checkpoints in '
        f'{workdir_lib.checkpoint_dir(workdir)} are untouched; lower the learning rate or '
        'check the data.')


def _plot(workdir: Path) -> None:
  """Loss and metric curves as PNGs in the workdir; a plotting problem never fails the run."""
  try:
    from cyclegan_jax import plots  # pylint: disable=g-import-not-at-top  # matplotlib is slow.
    plots.plot_run(workdir)
  except Exception as error:  # pylint: disable=broad-except
    logging.warning('Could not draw the plots in %s: %s', workdir / workdir_lib.PLOTS_DIR, error)


def _sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _set_aside_damaged(manager, workdir: Path, damaged: list[int], keep: int):
  """Moves the damaged newer checkpoints out of checkpoints/ (kept) so their steps can be saved
  again, and returns a manager that no longer lists them."""
  manager.close()
  _sync_processes('checkpoints read')  # No process reads them any more.
  if jax.process_index() == 0:
    moved = checkpointing.set_aside(workdir, damaged)
    logging.warning(
        'Resuming from the newest intact checkpoint. The damaged one(s) are kept in %s.',
        ', '.join(map(str, moved)))
  _sync_processes('damaged checkpoints set aside')
  return checkpointing.create_manager(workdir, keep)


@contextlib.contextmanager
def exclusive_workdir(workdir: Path):
  """Holds the workdir's lock (`workdir.WorkdirLock`) for the run, on process 0 of all the run's
  processes, which share the workdir; every process raises WorkdirBusyError if it is taken."""
  lock = workdir_lib.WorkdirLock(workdir)
  busy = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except errors.WorkdirBusyError as error:
      busy = error
  if jax.process_count() > 1:
    free = bool(multihost_utils.broadcast_one_to_all(np.int32(busy is None)))
    if not free and busy is None:
      busy = errors.WorkdirBusyError(f'{workdir} is in use by another run (process 0 says which).')
  if busy is not None:
    raise busy
  try:
    yield
  finally:
    lock.release()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the final summary.

  Nothing is written into the workdir unless the config is valid, the dataset is found, and no
  other live run holds the workdir.
  """
  workdir = Path(workdir)
  config_lib.validate(config, num_devices=jax.device_count())
  dataset = data.create_dataset(config.data,
                                seed=config.seed,
                                channels_A=config.model.channels_A,
                                channels_B=config.model.channels_B)
  with exclusive_workdir(workdir):
    return _train_and_evaluate(config, workdir, dataset)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: Path,
                        dataset: data.Dataset) -> dict[str, float]:
  is_chief = jax.process_index() == 0
  checkpointing.check_and_save_config(workdir, config, write=is_chief)
  logging.info('Data: %s.', dataset.summary)

  epoch_steps = state_lib.steps_per_epoch(dataset.epoch_size, config.batch_size)
  num_steps = state_lib.total_train_steps(config, epoch_steps)
  trainer = build_trainer(config, epoch_steps)
  logging.info(
      'Training %d steps (%d per epoch of %d examples), global batch %d over %d devices: %d per '
      'device, %d per process of %d.', num_steps, epoch_steps, dataset.epoch_size,
      config.batch_size, jax.device_count(), config.batch_size // jax.device_count(),
      config.batch_size // jax.process_count(), jax.process_count())

  manager = checkpointing.create_manager(workdir, config.keep_checkpoints)
  data_state = None
  if manager.latest_step() is not None:
    abstract = state_lib.abstract_like(jax.eval_shape(trainer.init), trainer.state_sharding)
    restored = checkpointing.restore_intact(manager, abstract)
    state, data_state = restored.state, restored.data_state
    if restored.damaged:
      manager = _set_aside_damaged(manager, workdir, restored.damaged, config.keep_checkpoints)
    logging.info('Resumed from step %d in %s.', restored.step, manager.directory)
    if config.init_from:
      logging.info('Resuming this run; config.init_from (%s) only applies to a new run.',
                   config.init_from)
  else:
    state = trainer.init()
    if config.init_from:
      state = checkpointing.warm_started(state, config, trainer.state_sharding)
  start_step = int(state_lib.to_host(state.step))
  start_example = (dataset.resume_example(data_state)
                   if data_state is not None else start_step * config.batch_size)

  writer = summaries.SummaryWriter(workdir)
  samples = dataset.sample_images(config.num_sample_images) if config.num_sample_images else None
  has_test_data = min(dataset.num_test('A'), dataset.num_test('B')) > 0
  test_sets, paired = (evaluation.load_test_sets(dataset, config.data.paired_test)
                       if has_test_data else ({}, False))
  features = evaluation.inception_features(config.inception_weights)

  def evaluate(state, step) -> dict[str, float]:
    if not has_test_data:
      return {}
    results = evaluation.evaluate(
        functools.partial(trainer.translate_AtoB, state.params),
        functools.partial(trainer.translate_BtoA, state.params), test_sets, paired, features)
    writer.scalars(step, {workdir_lib.eval_scalar(k): v for k, v in results.items()})
    if is_chief:
      evaluation.log_summary(step, results)
      workdir_lib.write_json(workdir_lib.eval_file(workdir, step), {'step': step, **results})
    return results

  def save_samples(state, step):
    if samples is None:
      return
    # Every process runs the computation (it spans all devices); process 0 writes the grid.
    images = state_lib.to_host(trainer.translate(state.params, samples['A'], samples['B']))
    if not is_chief:
      return
    grid = summaries.translation_grid(images)
    summaries.save_png(workdir_lib.sample_file(workdir, step), grid)
    writer.image(step, 'samples/real_fake_rec', grid)

  progress = summaries.Progress(start_step, num_steps)
  start_time = time.perf_counter()
  metric_sums, metric_count, last_metrics = None, 0, {}
  step = start_step
  # Whatever ends the loop (a non-finite loss included), pending checkpoint writes complete.
  batches = dataset.train_iterator(config.batch_size, start_example, jax.process_index(),
                                   jax.process_count())
  with _StopRequest() as stop, batches, contextlib.closing(manager):
    while step < num_steps and not stop.requested:
      batch = global_batch(next(batches), trainer.batch_sharding)
      state, metrics = trainer.step(state, batch)
      step += 1
      metric_sums = metrics if metric_sums is None else jax.tree.map(
          jnp.add, metric_sums, metrics)
      metric_count += 1

      last = step == num_steps or stop.requested
      if step % config.log_every_steps == 0 or last:
        last_metrics = {
            k: float(v) / metric_count for k, v in state_lib.to_host(metric_sums).items()
        }
        metric_sums, metric_count = None, 0
        _check_finite(step, last_metrics, workdir)
        steps_per_s, eta_s = progress.report(step)
        writer.scalars(step, {**last_metrics, 'steps_per_s': steps_per_s})
        if is_chief:
          logging.info(
              'step %d/%d  epoch %.2f  G %.3f  F %.3f  cycle %.3f/%.3f  D_X %.3f  D_Y %.3f  '
              'lr %.2e  %.2f steps/s  ETA %s', step, num_steps, step / epoch_steps,
              last_metrics['loss/gan_G'], last_metrics['loss/gan_F'],
              last_metrics['loss/cycle_A'], last_metrics['loss/cycle_B'],
              last_metrics['loss/D_X'], last_metrics['loss/D_Y'], last_metrics['lr'],
              steps_per_s, summaries.format_duration(eta_s))
      if step % config.sample_every_steps == 0 or last:
        save_samples(state, step)
      if config.eval_every_steps and step % config.eval_every_steps == 0 and not last:
        evaluate(state, step)
      if step % config.checkpoint_every_steps == 0:
        checkpointing.save(manager, state, config, batches.state())
    # The run's end, or a stop signal that may have come after this step's checks.
    if step > start_step and manager.latest_step() != step:
      checkpointing.save(manager, state, config, batches.state())

  wall_time = time.perf_counter() - start_time
  final = {'step': step, 'wall_time_s': wall_time,
           'steps_per_s': (step - start_step) / max(wall_time, 1e-9)}
  final.update({workdir_lib.flat_name(k): v for k, v in last_metrics.items()})
  final.update(evaluate(state, step))
  writer.flush()
  writer.close()
  if is_chief:
    status = 'stopped early by a signal; rerun the same command to resume' if stop.requested \
        else 'done'
    logging.info('Run %s. Workdir %s: checkpoints/, samples/, tensorboard/, config.json.',
                 status, workdir)
    if step == num_steps:
      workdir_lib.write_json(workdir / workdir_lib.FINAL_FILE, final)
    if config.plot_at_end:
      _plot(workdir)
    print('final: ' + summaries.key_values(final), flush=True)
  return final
