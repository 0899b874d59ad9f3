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
import flax
import flax.linen as nn
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
from cyclegan_jax import input_pipeline
from cyclegan_jax import losses
from cyclegan_jax import models
from cyclegan_jax import summaries
from cyclegan_jax import warm_start
from cyclegan_jax import workdir as workdir_lib

GENERATORS = ('G', 'F')
DISCRIMINATORS = ('D_X', 'D_Y')
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


class Networks(NamedTuple):
  G: nn.Module  # A → B
  F: nn.Module  # B → A
  D_X: nn.Module  # judges domain A
  D_Y: nn.Module  # judges domain B


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs, as one pytree."""
  step: jax.Array
  params: dict[str, Any]  # {'G', 'F', 'D_X', 'D_Y'}: each network's Flax params.
  opt_state_generators: optax.OptState  # Adam state of G and F (one joint step).
  opt_state_discriminators: optax.OptState  # Adam state of D_X and D_Y (one joint step).
  pool_A: image_pool.ImagePool  # Earlier F(b) fakes, shown to D_X.
  pool_B: image_pool.ImagePool  # Earlier G(a) fakes, shown to D_Y.
  rng: jax.Array


def build_networks(config: ml_collections.ConfigDict) -> Networks:
  dtype = jnp.dtype(config.compute_dtype)
  model_config = config.model
  return Networks(
      G=models.build_generator(model_config, model_config.output_nc, dtype=dtype),
      F=models.build_generator(model_config, model_config.input_nc, dtype=dtype),
      D_X=models.build_discriminator(model_config, dtype=dtype),
      D_Y=models.build_discriminator(model_config, dtype=dtype))


def steps_per_epoch(epoch_size: int, batch_size: int) -> int:
  return max(1, math.ceil(epoch_size / batch_size))


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           epoch_steps: int) -> optax.Schedule:
  """Learning rate as a function of the step, per `config.lr_policy`.

  'linear' is the official rule, applied per epoch: during 0-based epoch e the rate
  is lr · (1 − max(0, e + 1 − num_epochs) / (num_epochs_decay + 1)).
  """
  base = config.learning_rate
  total_epochs = config.num_epochs + config.num_epochs_decay

  def epoch_of(step):
    return jnp.floor_divide(jnp.asarray(step, jnp.int32), epoch_steps).astype(jnp.float32)

  if config.lr_policy == 'linear':
    def schedule(step):
      decayed = jnp.maximum(0.0, epoch_of(step) + 1.0 - config.num_epochs)
      return base * jnp.maximum(0.0, 1.0 - decayed / (config.num_epochs_decay + 1.0))
  elif config.lr_policy == 'step':
    def schedule(step):
      return base * 0.1 ** jnp.floor(epoch_of(step) / config.lr_decay_epochs)
  elif config.lr_policy == 'cosine':
    schedule = optax.cosine_decay_schedule(base, max(1, total_epochs * epoch_steps))
  else:
    raise ValueError(f'Unknown config.lr_policy {config.lr_policy!r}.')
  return schedule


def adam(config: ml_collections.ConfigDict, schedule: optax.Schedule):
  return optax.adam(schedule, b1=config.beta1, b2=config.beta2)


def init_train_state(config: ml_collections.ConfigDict, networks: Networks,
                     optimizer: optax.GradientTransformation,
                     image_shape_A: tuple[int, int, int],
                     image_shape_B: tuple[int, int, int]) -> TrainState:
  """A fresh train state (pure; jit it with out_shardings to create it on device)."""
  rng = jax.random.PRNGKey(config.seed)
  # Parameter init draws from XLA's RngBitGenerator: it compiles several times faster than
  # threefry for the many kernel shapes (the draws may differ across backends).
  init_key = jax.random.key(config.seed, impl='rbg')
  key_G, key_F, key_DX, key_DY = jax.random.split(init_key, 4)
  x = jnp.zeros((1, *image_shape_A), jnp.float32)
  y = jnp.zeros((1, *image_shape_B), jnp.float32)
  params = {
      'G': networks.G.init(key_G, x)['params'],
      'F': networks.F.init(key_F, y)['params'],
      'D_X': networks.D_X.init(key_DX, x)['params'],
      'D_Y': networks.D_Y.init(key_DY, y)['params'],
  }
  generator_params = {k: params[k] for k in GENERATORS}
  discriminator_params = {k: params[k] for k in DISCRIMINATORS}
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state_generators=optimizer.init(generator_params),
      opt_state_discriminators=optimizer.init(discriminator_params),
      pool_A=image_pool.init_pool(config.pool_size, image_shape_A),
      pool_B=image_pool.init_pool(config.pool_size, image_shape_B),
      rng=rng)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, networks: Networks,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               gan_mode: str, lambda_cycle: float, lambda_identity: float,
               switched_off: frozenset[str] = frozenset()
               ) -> tuple[TrainState, dict[str, jax.Array]]:
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

  generator_params = {k: params[k] for k in GENERATORS}
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

  discriminator_params = {k: params[k] for k in DISCRIMINATORS}
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


def translate_all(networks: Networks, params: dict[str, Any],
                  real_A: jax.Array, real_B: jax.Array) -> dict[str, jax.Array]:
  """Both directions and both cycles, for sample grids."""
  G = functools.partial(networks.G.apply, {'params': params['G']})
  F = functools.partial(networks.F.apply, {'params': params['F']})
  fake_B, fake_A = G(real_A), F(real_B)
  return {'real_A': real_A, 'fake_B': fake_B, 'rec_A': F(fake_B),
          'real_B': real_B, 'fake_A': fake_A, 'rec_B': G(fake_A)}


class Trainer(NamedTuple):
  """The compiled pieces of a run, built once from the config."""
  networks: Networks
  schedule: optax.Schedule
  state_sharding: jax.sharding.NamedSharding
  batch_sharding: jax.sharding.NamedSharding
  init: Any  # () -> TrainState, jitted
  step: Any  # (TrainState, batch) -> (TrainState, metrics), jitted, state donated
  translate: Any  # (params, real_A, real_B) -> dict of images for grids, jitted
  translate_AtoB: Any  # (params, real_A) -> G(real_A) as numpy, jitted
  translate_BtoA: Any  # (params, real_B) -> F(real_B) as numpy, jitted


def make_mesh() -> jax.sharding.Mesh:
  """All devices on one data-parallel axis; XLA propagates the shardings (Auto mode)."""
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def build_trainer(config: ml_collections.ConfigDict, epoch_steps: int,
                  image_shape_A: tuple[int, int, int], image_shape_B: tuple[int, int, int],
                  mesh: jax.sharding.Mesh | None = None) -> Trainer:
  mesh = make_mesh() if mesh is None else mesh
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  networks = build_networks(config)
  schedule = learning_rate_schedule(config, epoch_steps)
  optimizer = adam(config, schedule)
  init = jax.jit(functools.partial(init_train_state, config, networks, optimizer,
                                   image_shape_A, image_shape_B),
                 out_shardings=replicated)
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


def abstract_train_state(config: ml_collections.ConfigDict) -> Any:
  """The shapes of a run's train state, placed on the first local device (no compute)."""
  networks = build_networks(config)
  optimizer = adam(config, learning_rate_schedule(config, 1))
  crop = config.data.crop_size
  init = functools.partial(init_train_state, config, networks, optimizer,
                           (crop, crop, config.model.input_nc),
                           (crop, crop, config.model.output_nc))
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return checkpointing.abstract_like(jax.eval_shape(init), sharding)


def restore_train_state(workdir: str | Path, step: int | None = None) -> tuple[Any, int]:
  """(train state as numpy, its step) from the latest checkpoint, or the one at `step`."""
  workdir = Path(workdir)
  config = checkpointing.saved_config(workdir)
  directory = checkpointing.checkpoint_dir(workdir)
  if not directory.is_dir():
    raise errors.PathNotFoundError(f'{workdir} has no checkpoints/ folder')
  manager = checkpointing.create_manager(workdir, config.keep_checkpoints)
  try:
    restored = checkpointing.restore_intact(manager, abstract_train_state(config), step)
  finally:
    manager.close()
  return jax.device_get(restored.state), restored.step


def warm_started(state: TrainState, config: ml_collections.ConfigDict,
                 sharding: jax.sharding.Sharding) -> TrainState:
  """A fresh `state` with `config.init_parts` taken from the run at `config.init_from`."""
  parts = config_lib.parse_init_parts(config.init_parts)
  source_workdir, step = warm_start.locate(config.init_from)
  warm_start.check_imported(source_workdir, parts, config.init_from)
  source, source_step = restore_train_state(source_workdir, step)
  merged = warm_start.merge(jax.device_get(state), source, parts)
  logging.info('Warm start: %s from %s at step %d.', ', '.join(parts), source_workdir, source_step)
  return jax.device_put(merged, sharding)


def _on_host(fn: Callable[..., jax.Array]) -> Callable[..., np.ndarray]:
  return lambda *args: checkpointing.to_host(fn(*args))


def global_batch(local_batch: dict[str, np.ndarray],
                 sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays laid out by `sharding` over all devices."""
  return jax.tree.map(lambda rows: jax.make_array_from_process_local_data(sharding, rows),
                      local_batch)


def total_train_steps(config: ml_collections.ConfigDict, epoch_steps: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return (config.num_epochs + config.num_epochs_decay) * epoch_steps


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
        f'{checkpointing.checkpoint_dir(workdir)} are untouched; lower the learning rate or '
        'check the data.')


def _plot(workdir: Path) -> None:
  """Loss and metric curves as PNGs in the workdir; a plotting problem never fails the run."""
  try:
    from cyclegan_jax import plots  # pylint: disable=g-import-not-at-top  # matplotlib is slow.
    plots.plot_run(workdir)
  except Exception as error:  # pylint: disable=broad-except
    logging.warning('Could not draw the plots in %s: %s', workdir / 'plots', error)


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
  dataset = input_pipeline.create_dataset(
      config.data, seed=config.seed, channels_A=config.model.input_nc,
      channels_B=config.model.output_nc)
  with exclusive_workdir(workdir):
    return _train_and_evaluate(config, workdir, dataset)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: Path,
                        dataset: input_pipeline.Dataset) -> dict[str, float]:
  is_chief = jax.process_index() == 0
  checkpointing.check_and_save_config(workdir, config, write=is_chief)
  logging.info('Data: %s.', dataset.summary)

  epoch_steps = steps_per_epoch(dataset.epoch_size, config.batch_size)
  num_steps = total_train_steps(config, epoch_steps)
  crop = config.data.crop_size
  trainer = build_trainer(config, epoch_steps, (crop, crop, config.model.input_nc),
                          (crop, crop, config.model.output_nc))
  logging.info(
      'Training %d steps (%d per epoch of %d examples), global batch %d over %d devices: %d per '
      'device, %d per process of %d.', num_steps, epoch_steps, dataset.epoch_size,
      config.batch_size, jax.device_count(), config.batch_size // jax.device_count(),
      config.batch_size // jax.process_count(), jax.process_count())

  manager = checkpointing.create_manager(workdir, config.keep_checkpoints)
  data_state = None
  if manager.latest_step() is not None:
    abstract = checkpointing.abstract_like(jax.eval_shape(trainer.init), trainer.state_sharding)
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
      state = warm_started(state, config, trainer.state_sharding)
  start_step = int(checkpointing.to_host(state.step))
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
    writer.scalars(step, {f'eval/{k}': v for k, v in results.items()})
    if is_chief:
      evaluation.log_summary(step, results)
      summaries.write_json(evaluation.eval_path(workdir, step), {'step': step, **results})
    return results

  def save_samples(state, step):
    if samples is None:
      return
    # Every process runs the computation (it spans all devices); process 0 writes the grid.
    images = checkpointing.to_host(trainer.translate(state.params, samples['A'], samples['B']))
    if not is_chief:
      return
    grid = summaries.translation_grid(images)
    summaries.save_png(workdir / 'samples' / f'step_{step:08d}.png', grid)
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
            k: float(v) / metric_count for k, v in checkpointing.to_host(metric_sums).items()
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
  final.update({k.replace('/', '_'): v for k, v in last_metrics.items()})
  final.update(evaluate(state, step))
  writer.flush()
  writer.close()
  if is_chief:
    status = 'stopped early by a signal; rerun the same command to resume' if stop.requested \
        else 'done'
    logging.info('Run %s. Workdir %s: checkpoints/, samples/, tensorboard/, config.json.',
                 status, workdir)
    if step == num_steps:
      summaries.write_json(workdir / summaries.FINAL_FILE, final)
    if config.plot_at_end:
      _plot(workdir)
    print('final: ' + summaries.key_values(final), flush=True)
  return final
