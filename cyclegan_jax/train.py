"""CycleGAN training: train state, the jitted train step, and the training loop.

Names follow the paper: G: A(X) → B(Y), F: B → A; D_Y judges real b against G(a),
D_X judges real a against F(b).
"""

import contextlib
import dataclasses
import functools
import math
import os
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
from cyclegan_jax import ensemble
from cyclegan_jax import losses
from cyclegan_jax import models
from cyclegan_jax import pix2pix
from cyclegan_jax import state as state_lib
from cyclegan_jax import summaries
from cyclegan_jax import workdir as workdir_lib

# The loss switches (state.HYPERPARAMETERS, weights 1 or 0) -> the generator loss term each weighs
# (names as in the train step's metrics).
SWITCHED_TERMS = {
    'use_gan_G': 'gan_G',
    'use_gan_F': 'gan_F',
    'use_cycle_forward': 'cycle_A',
    'use_cycle_backward': 'cycle_B',
}
# The progress line's losses (label, metric), those the model has: CycleGAN's, pix2pix's.
LOGGED_LOSSES = (('G', 'loss/gan_G'), ('F', 'loss/gan_F'), ('cycle_A', 'loss/cycle_A'),
                 ('cycle_B', 'loss/cycle_B'), ('L1', 'loss/L1'), ('D_X', 'loss/D_X'),
                 ('D_Y', 'loss/D_Y'), ('D', 'loss/D'))
# Each discriminator trains only while the GAN term it judges for is on.
DISCRIMINATOR_SWITCH = {'D_Y': 'use_gan_G', 'D_X': 'use_gan_F'}


def train_step(state: state_lib.TrainState,
               batch: dict[str, jax.Array],
               varying: state_lib.Hyperparams | None = None,
               *,
               config: ml_collections.ConfigDict,
               networks: state_lib.Networks,
               epoch_steps: int,
               fixed: state_lib.Hyperparams) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One CycleGAN iteration in the official order.

  1. G and F: one joint Adam step on the GAN + cycle + identity objective, the
     discriminators frozen.
  2. The fakes of that forward pass (pre-update generators, no gradient) go
     through the image pools.
  3. D_X and D_Y: one joint Adam step, each on its real batch and the pool's fakes.

  The hyperparameters (state.HYPERPARAMETERS) are `fixed` floats, compiled in, or `varying`
  arrays (an ensemble member's own values, traced). A loss term switched off is computed and
  reported but weighs 0 in the objective; a discriminator whose GAN term is off gets no gradient.
  """
  hyper = {**fixed, **(varying or {})}
  gan_mode = config.gan_mode
  schedule = state_lib.learning_rate_schedule(config, epoch_steps, hyper['learning_rate'])
  optimizer = state_lib.adam(config, schedule, hyper)
  term_weights = {term: hyper[switch] for switch, term in SWITCHED_TERMS.items()}
  # The identity terms are in the program if any member can have them (lambda_identity > 0).
  with_identity = (not isinstance(hyper['lambda_identity'], (int, float)) or
                   hyper['lambda_identity'] > 0)
  real_A, real_B = batch['A'], batch['B']
  rng, pool_key_A, pool_key_B = jax.random.split(state.rng, 3)
  dropout_G, dropout_F = jax.random.split(jax.random.fold_in(state.rng, state_lib.DROPOUT_STREAM))
  params = state.params

  def generator_objective(generator_params):
    G = models.network_fn(networks.G, generator_params['G'], dropout_G)
    F = models.network_fn(networks.F, generator_params['F'], dropout_F)
    D_X = functools.partial(networks.D_X.apply, {'params': params['D_X']})
    D_Y = functools.partial(networks.D_Y.apply, {'params': params['D_Y']})
    fake_B = G(real_A)
    rec_A = F(fake_B)
    fake_A = F(real_B)
    rec_B = G(fake_A)
    lambda_cycle, lambda_identity = hyper['lambda_cycle'], hyper['lambda_identity']
    terms = {
        'gan_G': losses.generator_gan_loss(D_Y(fake_B), gan_mode),
        'gan_F': losses.generator_gan_loss(D_X(fake_A), gan_mode),
        'cycle_A': losses.cycle_loss(rec_A, real_A, lambda_cycle),
        'cycle_B': losses.cycle_loss(rec_B, real_B, lambda_cycle),
    }
    if with_identity:
      terms['idt_G'] = losses.identity_loss(G(real_B), real_B, lambda_cycle, lambda_identity)
      terms['idt_F'] = losses.identity_loss(F(real_A), real_A, lambda_cycle, lambda_identity)
    return losses.weighted_sum(terms, term_weights), (terms, fake_A, fake_B)

  generator_params = {k: params[k] for k in state_lib.GENERATOR_NAMES}
  grads, (generator_terms, fake_A, fake_B) = jax.grad(
      generator_objective, has_aux=True)(generator_params)
  updates, opt_state_generators = optimizer.update(
      grads, state.opt_state_generators, generator_params)
  generator_params = optax.apply_updates(generator_params, updates)
  averages = state_lib.update_averages(params, generator_params, config.ema_decay)

  fake_A = jax.lax.stop_gradient(fake_A)
  fake_B = jax.lax.stop_gradient(fake_B)
  pool_A, pooled_fake_A = image_pool.query_pool(state.pool_A, fake_A, pool_key_A)
  pool_B, pooled_fake_B = image_pool.query_pool(state.pool_B, fake_B, pool_key_B)
  # WGAN-GP's interpolation weights, one per example (a stream of their own: other modes draw
  # exactly what they drew before).
  alpha_X, alpha_Y = jax.random.uniform(jax.random.fold_in(state.rng, state_lib.PENALTY_STREAM),
                                        (2, real_A.shape[0]))

  def discriminator_objective(discriminator_params):
    D_X = functools.partial(networks.D_X.apply, {'params': discriminator_params['D_X']})
    D_Y = functools.partial(networks.D_Y.apply, {'params': discriminator_params['D_Y']})
    scores = {'D_X/real': D_X(real_A), 'D_X/fake': D_X(pooled_fake_A),
              'D_Y/real': D_Y(real_B), 'D_Y/fake': D_Y(pooled_fake_B)}
    terms = {
        'D_X': losses.discriminator_loss(scores['D_X/real'], scores['D_X/fake'], gan_mode),
        'D_Y': losses.discriminator_loss(scores['D_Y/real'], scores['D_Y/fake'], gan_mode),
    }
    # Penalties on each discriminator's input gradients, added to its loss (reported apart).
    judged = {
        'D_X': (D_X, real_A, pooled_fake_A, alpha_X),
        'D_Y': (D_Y, real_B, pooled_fake_B, alpha_Y)
    }
    weights = {name: hyper[switch] for name, switch in DISCRIMINATOR_SWITCH.items()}
    for name, (critic, real, fake, alpha) in judged.items():
      penalties = losses.discriminator_penalties(critic, real, fake, alpha, gan_mode,
                                                 config.lambda_gp, config.r1_gamma)
      for penalty, value in penalties.items():
        terms[f'{penalty}_{name}'] = value
        weights[f'{penalty}_{name}'] = weights[name]
    mean_scores = {k: jnp.mean(v.astype(jnp.float32)) for k, v in scores.items()}
    return losses.weighted_sum(terms, weights), (terms, mean_scores)

  discriminator_params = {k: params[k] for k in state_lib.DISCRIMINATOR_NAMES}
  grads, (discriminator_terms, mean_scores) = jax.grad(
      discriminator_objective, has_aux=True)(discriminator_params)
  updates, opt_state_discriminators = optimizer.update(
      grads, state.opt_state_discriminators, discriminator_params)
  discriminator_params = optax.apply_updates(discriminator_params, updates)

  metrics = losses.step_metrics(generator_terms, term_weights, discriminator_terms, mean_scores,
                                schedule(state.step))
  new_params = {**generator_params, **discriminator_params, **averages}
  new_state = state_lib.stepped(state,
                                new_params,
                                opt_state_generators,
                                opt_state_discriminators,
                                rng,
                                pool_A=pool_A,
                                pool_B=pool_B)
  return new_state, metrics


def translate_all(networks: state_lib.Networks, dropout_key: jax.Array, params: dict[str, Any],
                  real_A: jax.Array, real_B: jax.Array) -> dict[str, jax.Array]:
  """Both directions and both cycles, for sample grids (networks as in training)."""
  key_G, key_F = jax.random.split(dropout_key)
  G = models.network_fn(networks.G, params['G'], key_G)
  F = models.network_fn(networks.F, params['F'], key_F)
  fake_B, fake_A = G(real_A), F(real_B)
  return {'real_A': real_A, 'fake_B': fake_B, 'rec_A': F(fake_B),
          'real_B': real_B, 'fake_A': fake_A, 'rec_B': G(fake_A)}


class Trainer(NamedTuple):
  """The compiled pieces of a run (or of an ensemble's members), built once from the config.

  For an ensemble the state, the batch and the metrics are tuples over slots of members (see
  `ensemble.SlotLayout`), each with a leading member axis; `translate*` take one member's (host)
  parameters."""
  networks: state_lib.Networks
  schedule: optax.Schedule
  state_sharding: jax.sharding.NamedSharding
  batch_sharding: jax.sharding.NamedSharding
  init: Any  # () -> state_lib.TrainState, jitted
  step: Any  # (state_lib.TrainState, batch) -> (state_lib.TrainState, metrics), jitted, state donated
  # The translations take the run's `state.sample_key` first (dropout masks, if any).
  translate: Any  # (key, params, real_A, real_B) -> dict of images for grids, jitted
  translate_AtoB: Any  # (key, params, real_A) -> G(real_A) as numpy, test mode (models.for_test)
  translate_BtoA: Any  # (key, params, real_B) -> F(real_B) as numpy, test mode; pix2pix: None
  num_members: int = 1  # 1: a single run, no member axis.
  layout: ensemble.SlotLayout | None = None  # An ensemble's: state, batch, metrics are slots.


class _BoundStep:
  """The step with its hyperparameter arguments bound: (state, batch) -> (state, metrics). For an
  ensemble (`slotted`), the state, the batch and the metrics are tuples over slots of members
  (`ensemble.slot_layout`), slot i runs program `fns[i]` with arguments `varying[i]` (slots that
  share a program share its compilation). `lower(state, batch).compile()` gives the same step,
  compiled ahead of time; other attributes are the first slot's program's."""

  def __init__(self, fns: list[Any], varying: list[Any], slotted: bool):
    self.fns, self.varying, self.slotted = fns, varying, slotted

  def __call__(self, state, batch):
    if not self.slotted:
      return self.fns[0](state, batch, self.varying[0])
    results = [fn(*args) for fn, *args in zip(self.fns, state, batch, self.varying)]
    return tuple(r[0] for r in results), tuple(r[1] for r in results)

  def lower(self, state, batch) -> '_BoundStep':
    if not self.slotted:
      return _BoundStep([self.fns[0].lower(state, batch, self.varying[0])], self.varying, False)
    lowered = {}
    for fn, *args in zip(self.fns, state, batch, self.varying):
      if id(fn) not in lowered:
        lowered[id(fn)] = fn.lower(*args)
    return _BoundStep([lowered[id(fn)] for fn in self.fns], self.varying, True)

  def compile(self) -> '_BoundStep':
    compiled = {}
    for fn in self.fns:
      if id(fn) not in compiled:
        compiled[id(fn)] = fn.compile()
    return _BoundStep([compiled[id(fn)] for fn in self.fns], self.varying, self.slotted)

  def __getattr__(self, name):
    return getattr(self.fns[0], name)


def make_mesh() -> jax.sharding.Mesh:
  """All devices on one data-parallel axis; XLA propagates the shardings (Auto mode)."""
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def build_trainer(config: ml_collections.ConfigDict,
                  epoch_steps: int,
                  mesh: jax.sharding.Mesh | None = None,
                  members: list[ensemble.Member] | None = None) -> Trainer:
  """The trainer of a single run of `config`, or of the `members` of an ensemble (two or more:
  `ensemble.members`), whose shared fields are those of `config`."""
  networks = state_lib.build_networks(config)
  schedule = state_lib.learning_rate_schedule(config, epoch_steps)
  paired = config.model_type == 'pix2pix'
  step_fn = functools.partial(pix2pix.train_step if paired else train_step,
                              config=config,
                              networks=networks,
                              epoch_steps=epoch_steps)
  spec = jax.sharding.PartitionSpec
  single = members is None or len(members) == 1
  configs = [members[0].config if members else config
            ] if single else [member.config for member in members]
  layout = None
  if not single:
    mesh = ensemble.member_mesh(len(members), config.batch_size) if mesh is None else mesh
    layout = ensemble.slot_layout(config, len(members), mesh)
    if not layout.stacked:  # One member at a time on all devices: each runs its own program.
      mesh = jax.sharding.Mesh(mesh.devices.reshape(-1), ('data',),
                               axis_types=(jax.sharding.AxisType.Auto,))
  if layout is None or not layout.stacked:
    mesh = make_mesh() if mesh is None else mesh
    replicated = jax.sharding.NamedSharding(mesh, spec())
    batch_sharding = jax.sharding.NamedSharding(mesh, spec('data'))
    state_sharding = replicated
    # Each member runs the program its own run would (the same hyperparameters compiled in);
    # members with equal ones share it.
    programs, slot_programs, slot_varying = {}, [], []
    for member_config in configs:
      fixed, varying = state_lib.split_hyperparams([member_config])
      key = tuple(sorted(fixed.items()))
      if key not in programs:
        programs[key] = jax.jit(functools.partial(step_fn, fixed=fixed),
                                in_shardings=(replicated, batch_sharding, replicated),
                                out_shardings=(replicated, replicated),
                                donate_argnums=0)
      slot_programs.append(programs[key])
      slot_varying.append(
          jax.device_put({
              name: value[0] for name, value in varying.items()
          }, replicated))
  else:
    fixed, varying = state_lib.split_hyperparams(configs)
    state_sharding = jax.sharding.NamedSharding(mesh, spec('member'))
    batch_sharding = jax.sharding.NamedSharding(mesh, spec('member', 'data'))
    member_step = functools.partial(step_fn, fixed=fixed)
    per_call = layout.members_per_call

    def local_step(state, batch, varying):
      if per_call == 1:  # One member on this device: its plain step, no member axis inside.
        squeeze = lambda tree: jax.tree.map(lambda x: x[0], tree)
        return jax.tree.map(lambda x: x[None], member_step(*map(squeeze, (state, batch, varying))))
      return jax.vmap(member_step)(state, batch, varying)

    mapped = jax.shard_map(local_step,
                           mesh=mesh,
                           in_specs=spec('member'),
                           out_specs=spec('member'),
                           axis_names=frozenset({'member'}))
    jitted = jax.jit(mapped,
                     in_shardings=(state_sharding, batch_sharding, state_sharding),
                     out_shardings=(state_sharding, state_sharding),
                     donate_argnums=0)
    slot_varying = jax.device_put(
        ensemble.to_slots([{
            name: value[k] for name, value in varying.items()
        } for k in range(len(members))], layout), state_sharding)
    slot_programs = [jitted] * len(slot_varying)
  if single:
    init = jax.jit(state_lib.train_state_initializer(configs[0]), out_shardings=state_sharding)
    step = _BoundStep(slot_programs, slot_varying, slotted=False)
    translate_sharding, num_members = state_sharding, 1
  else:
    single_init = jax.jit(lambda seed: state_lib.train_state_initializer(config)(seed=seed))

    def init():
      states = [jax.device_get(single_init(member.config.seed)) for member in members]
      return tuple(
          jax.device_put(slot, state_sharding) for slot in ensemble.to_slots(states, layout))

    step = _BoundStep(slot_programs, list(slot_varying), slotted=True)
    translate_sharding, num_members = None, len(members)
  translate_kwargs = {} if translate_sharding is None else {'out_shardings': translate_sharding}

  def test_translate(name):
    network = models.for_test(getattr(networks, name), config.model.eval_mode)
    return _on_host(
        jax.jit(lambda key, params, x: models.network_fn(network, params[name], key)(x),
                **translate_kwargs))

  return Trainer(networks,
                 schedule,
                 state_sharding,
                 batch_sharding,
                 init,
                 step,
                 translate=jax.jit(
                     functools.partial(pix2pix.translate_all if paired else translate_all,
                                       networks), **translate_kwargs),
                 translate_AtoB=test_translate('G'),
                 translate_BtoA=None if paired else test_translate('F'),
                 num_members=num_members,
                 layout=layout)


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


def _check_finite(step: int, run: '_Member', fail_fast: bool) -> None:
  """Stops the run (fail_fast: the program) on a non-finite loss; its checkpoints stay."""
  bad = [k for k, v in run.last_metrics.items() if not math.isfinite(v)]
  if not bad:
    return
  message = (f'Non-finite {", ".join(bad)} at step {step}. The checkpoints in '
             f'{workdir_lib.checkpoint_dir(run.workdir)} are untouched; lower the learning rate '
             'or check the data.')
  if fail_fast:
    raise errors.DivergedError(message)
  run.failure = f'{run.name}: {message}'
  logging.error('Member %s stopped (the others go on). %s', run.name, message)
  if jax.process_index() == 0:
    latest = run.manager.latest_step()
    workdir_lib.write_json(run.workdir / workdir_lib.FAILURE_FILE, {
        'step': step,
        'error': message,
        'last_checkpoint': latest
    })


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
def exclusive_workdirs(workdirs: list[Path]):
  """Holds the workdirs' locks (`workdir.WorkdirLock`) for the run, on process 0 of all the run's
  processes, which share them; every process raises WorkdirBusyError if one is taken."""
  locks = [workdir_lib.WorkdirLock(workdir) for workdir in workdirs]
  busy = None
  if jax.process_index() == 0:
    try:
      for lock in locks:
        lock.acquire()
    except errors.WorkdirBusyError as error:
      busy = error
      for lock in locks:
        lock.release()
  if jax.process_count() > 1:
    free = bool(multihost_utils.broadcast_one_to_all(np.int32(busy is None)))
    if not free and busy is None:
      busy = errors.WorkdirBusyError(
          f'{workdirs[0]} is in use by another run (process 0 says which).')
  if busy is not None:
    raise busy
  try:
    yield
  finally:
    for lock in locks:
      lock.release()


# The train step measured on this project's 2-core CPU (x86_64, jax 0.10.2, float32, batch 1,
# ngf 64, the default fast_convs; README, "Results"): generator -> (crop size, seconds per step).
CPU_STEP_ANCHORS = {'resnet_9blocks': (256, 23.0), 'resnet_6blocks': (128, 2.7)}
CPU_ANCHOR_CORES = 2
# A run found on CPU devices alone warns when its estimated step takes at least this long.
CPU_WARNING_SECONDS = 1.0


def cpu_seconds_per_step(generator: str,
                         ngf: int,
                         crop_size: int,
                         batch_size: int,
                         members: int = 1,
                         cores: int = CPU_ANCHOR_CORES) -> float | None:
  """Roughly the seconds one train step takes on `cores` CPU cores: the measured anchor of the
  generator (CPU_STEP_ANCHORS) scaled by pixels x batch x members, by (ngf / 64)^2 (the bulk of
  the FLOPs) and by 2 / cores. None for a generator without an anchor."""
  if generator not in CPU_STEP_ANCHORS:
    return None
  anchor_crop, anchor_seconds = CPU_STEP_ANCHORS[generator]
  work = (crop_size / anchor_crop)**2 * batch_size * members * (ngf / 64)**2
  return anchor_seconds * work * CPU_ANCHOR_CORES / max(cores, 1)


def cpu_only_warning(config: ml_collections.ConfigDict, members: int, devices: list[Any],
                     cores: int) -> str | None:
  """The start-of-run warning for a paper-sized run (estimated step >= CPU_WARNING_SECONDS)
  that finds only CPU devices, or None."""
  if any(device.platform != 'cpu' for device in devices):
    return None
  seconds = cpu_seconds_per_step(config.model.generator, config.model.ngf, config.data.crop_size,
                                 config.batch_size, members, cores)
  if seconds is None or seconds < CPU_WARNING_SECONDS:
    return None
  ensemble_note = f', {members} members' if members > 1 else ''
  return (f'Only CPU devices found ({cores} cores): a train step of this config '
          f'({config.model.generator}, ngf {config.model.ngf}, {config.data.crop_size} px, batch '
          f'{config.batch_size}{ensemble_note}) takes roughly {seconds:.0f} s here, '
          f'{seconds * 1000 / 3600:.1f} hours per 1,000 steps. To train on a GPU or TPU, install '
          f'its jax wheel: pip install "jax[cuda12]=={jax.__version__}" (NVIDIA GPU) or '
          f'"jax[tpu]=={jax.__version__}" (TPU VM); see README, "Install on accelerators".')


def _cpu_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


@dataclasses.dataclass
class _Member:
  """What the loop keeps for one run: a single run, or one member of an ensemble."""
  name: str
  config: ml_collections.ConfigDict
  workdir: Path
  dataset: data.Dataset
  manager: Any = None
  writer: Any = None
  batches: Any = None
  last_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
  failure: str = ''  # Why it stopped before the others (a non-finite loss); '' while it trains.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the final summary. With ensemble fields
  set (`ensemble`), trains the members in `<workdir>/<name>` and returns {name: summary}.

  Nothing is written into a workdir unless the config is valid, the dataset is found, and no
  other live run holds it.
  """
  workdir = Path(workdir)
  if ensemble.is_ensemble(config):
    config_lib.validate(config, num_devices=1)  # The member layout checks the devices.
    member_list = ensemble.members(config)
    if len(member_list) > 1:
      ensemble.member_mesh(len(member_list), config.batch_size)
  else:
    config_lib.validate(config, num_devices=jax.device_count())
    member_list = [ensemble.Member('', config, {})]
  dataset = data.create_dataset(config.data,
                                seed=member_list[0].config.seed,
                                channels_A=config.model.channels_A,
                                channels_B=config.model.channels_B)
  warning = cpu_only_warning(config, len(member_list), jax.devices(), _cpu_cores())
  if warning and jax.process_index() == 0:
    logging.warning(warning)
  runs = [
      _Member(member.name, member.config, workdir / member.name if member.name else workdir,
              dataset.reseeded(member.config.seed)) for member in member_list
  ]
  with exclusive_workdirs([workdir] + [run.workdir for run in runs if run.name]):
    finals = _train_and_evaluate(config, runs, member_list)
  return finals[''] if not runs[0].name else finals


def _restore(runs: list[_Member], trainer: Trainer) -> tuple[Any, int]:
  """(the state to start from, its step): the members' newest step that all have intact, or a
  fresh state (warm-started where config.init_from says)."""
  # A single run restores straight into its (possibly multi-process) sharding; members are
  # restored on one device and stacked.
  sharding = (trainer.state_sharding if trainer.num_members == 1 else
              jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  abstract = state_lib.abstract_like(
      jax.eval_shape(state_lib.train_state_initializer(runs[0].config)), sharding)
  newest = [run.manager.latest_step() for run in runs]
  if any(step is None for step in newest):
    states, data_states, step = None, None, 0
  else:
    restored = [checkpointing.restore_intact(run.manager, abstract) for run in runs]
    step = min(r.step for r in restored)
    for run, r in zip(runs, restored):
      if r.damaged:
        run.manager = _set_aside_damaged(run.manager, run.workdir, r.damaged,
                                         run.config.keep_checkpoints)
    restored = [
        r if r.step == step else checkpointing.restore_intact(run.manager, abstract, step)
        for run, r in zip(runs, restored)
    ]
    states, data_states = [r.state for r in restored], [r.data_state for r in restored]
    logging.info('Resumed from step %d in %s.', step,
                 ', '.join(str(run.manager.directory) for run in runs))
    if runs[0].config.init_from:
      logging.info('Resuming this run; config.init_from (%s) only applies to a new run.',
                   runs[0].config.init_from)
  if trainer.num_members == 1:
    if states is not None:
      state = states[0]
    else:
      state = trainer.init()
      if runs[0].config.init_from:
        state = checkpointing.warm_started(state, runs[0].config, trainer.state_sharding)
  else:
    if states is None:
      state = trainer.init()
      if runs[0].config.init_from:
        fresh = state_lib.to_host(state)
        states = [
            checkpointing.warm_started(ensemble.member_slice(fresh, k), run.config, None)
            for k, run in enumerate(runs)
        ]
    if states is not None:
      state = tuple(
          jax.device_put(slot, trainer.state_sharding)
          for slot in ensemble.to_slots(jax.device_get(states), trainer.layout))
  for k, run in enumerate(runs):
    start_example = step * run.config.batch_size
    if data_states is not None and data_states[k] is not None:
      start_example = run.dataset.resume_example(data_states[k])
    run.batches = run.dataset.train_iterator(run.config.batch_size, start_example,
                                             jax.process_index(), jax.process_count())
  return state, step


def _member_state(trainer: Trainer, state: Any, k: int) -> Any:
  return state if trainer.num_members == 1 else ensemble.member_of(state, trainer.layout, k)


def _train_and_evaluate(config: ml_collections.ConfigDict, runs: list[_Member],
                        member_list: list[ensemble.Member]) -> dict[str, dict[str, Any]]:
  is_chief = jax.process_index() == 0
  dataset = runs[0].dataset
  if len(runs) == 1:  # The run's own config (an ensemble of one member has its own values).
    config = runs[0].config
  for run in runs:
    checkpointing.check_and_save_config(run.workdir, run.config, write=is_chief)
  logging.info('Data: %s.', dataset.summary)

  epoch_steps = state_lib.steps_per_epoch(dataset.epoch_size, config.batch_size)
  num_steps = state_lib.total_train_steps(config, epoch_steps)
  trainer = build_trainer(config, epoch_steps, members=member_list if len(runs) > 1 else None)
  logging.info(
      'Training %d steps (%d per epoch of %d examples) of %d run(s), global batch %d over %d '
      'devices: %d per device, %d per process of %d.', num_steps, epoch_steps, dataset.epoch_size,
      len(runs), config.batch_size, jax.device_count(),
      config.batch_size * len(runs) // jax.device_count(), config.batch_size // jax.process_count(),
      jax.process_count())
  if len(runs) > 1:
    layout = trainer.layout
    programs = len({id(fn) for fn in trainer.step.fns})
    logging.info(
        'Ensemble of %d members in %d slot(s) per step (%s), %d compiled program(s): %s.',
        len(runs), len(layout.slots), f'{len(layout.slots[0])} member(s) each, '
        f'{layout.members_per_call} per device and call' if layout.stacked else
        'one member each, on all devices', programs, '; '.join(run.name for run in runs))

  for run in runs:
    run.manager = checkpointing.create_manager(run.workdir, run.config.keep_checkpoints)
    run.writer = summaries.SummaryWriter(run.workdir)
  state, start_step = _restore(runs, trainer)
  samples = dataset.sample_images(config.num_sample_images) if config.num_sample_images else None
  has_test_data = min(dataset.num_test('A'), dataset.num_test('B')) > 0
  test_sets, paired = (evaluation.load_test_sets(dataset, config.data.paired_test)
                       if has_test_data else ({}, False))
  features = evaluation.inception_features(config.inception_weights)

  def member_params(k):  # What evaluations and samples translate with (G's and F's averages).
    params = state_lib.translation_params(_member_state(trainer, state, k).params)
    return params if trainer.num_members == 1 else state_lib.to_host(params)

  def evaluate(run, k, step) -> dict[str, float]:
    if not has_test_data:
      return {}
    params = member_params(k)
    key = state_lib.sample_key(run.config.seed)
    translate_BtoA = (None if trainer.translate_BtoA is None else functools.partial(
        trainer.translate_BtoA, key, params))
    results = evaluation.evaluate(functools.partial(trainer.translate_AtoB, key, params),
                                  translate_BtoA, test_sets, paired, features)
    run.writer.scalars(step, {workdir_lib.eval_scalar(k): v for k, v in results.items()})
    if is_chief:
      evaluation.log_summary(step, results)
      workdir_lib.write_json(workdir_lib.eval_file(run.workdir, step), {'step': step, **results})
    return results

  def save_samples(run, k, step):
    if samples is None:
      return
    # Every process runs the computation (it spans all devices); process 0 writes the grid.
    images = state_lib.to_host(
        trainer.translate(state_lib.sample_key(run.config.seed), member_params(k), samples['A'],
                          samples['B']))
    if not is_chief:
      return
    grid = summaries.translation_grid(images)
    summaries.save_png(workdir_lib.sample_file(run.workdir, step), grid)
    run.writer.image(step, 'samples/real_fake_rec', grid)

  def save_checkpoints(step):
    for k, run in enumerate(runs):
      if not run.failure and step not in run.manager.all_steps():
        checkpointing.save(run.manager, _member_state(trainer, state, k), run.config,
                           run.batches.state())

  def next_batch():
    rows = [next(run.batches) for run in runs]
    if trainer.num_members == 1:
      return global_batch(rows[0], trainer.batch_sharding)
    return tuple(
        global_batch(slot, trainer.batch_sharding)
        for slot in ensemble.to_slots(rows, trainer.layout))

  progress = summaries.Progress(start_step, num_steps)
  start_time = time.perf_counter()
  metric_sums, metric_count = None, 0
  step = start_step
  # Whatever ends the loop (a non-finite loss included), pending checkpoint writes complete.
  with _StopRequest() as stop, contextlib.ExitStack() as cleanup:
    for run in runs:
      cleanup.enter_context(run.batches)
      cleanup.enter_context(contextlib.closing(run.manager))
    while step < num_steps and not stop.requested:
      state, metrics = trainer.step(state, next_batch())
      step += 1
      metric_sums = metrics if metric_sums is None else jax.tree.map(
          jnp.add, metric_sums, metrics)
      metric_count += 1

      last = step == num_steps or stop.requested
      if step % config.log_every_steps == 0 or last:
        sums = state_lib.to_host(metric_sums)
        member_sums = [sums] if trainer.num_members == 1 else [
            ensemble.member_of(sums, trainer.layout, k) for k in range(len(runs))
        ]
        count, metric_sums, metric_count = metric_count, None, 0
        steps_per_s, eta_s = progress.report(step)
        for k, run in enumerate(runs):
          if run.failure:
            continue
          run.last_metrics = {name: float(value) / count for name, value in member_sums[k].items()}
          _check_finite(step, run, len(runs) == 1 or config.ensemble.fail_fast)
          if run.failure:
            continue
          run.writer.scalars(step, {**run.last_metrics, 'steps_per_s': steps_per_s})
          if is_chief:
            m = run.last_metrics
            logging.info(
                '%sstep %d/%d  epoch %.2f  %s  lr %.2e  %.2f steps/s  ETA %s',
                f'{run.name}: ' if run.name else '', step, num_steps, step / epoch_steps,
                '  '.join(f'{label} {m[key]:.3f}' for label, key in LOGGED_LOSSES if key in m),
                m['lr'], steps_per_s, summaries.format_duration(eta_s))
        if all(run.failure for run in runs):
          raise errors.DivergedError('Every member stopped on a non-finite loss: ' +
                                     '; '.join(run.failure for run in runs))
      alive = [(k, run) for k, run in enumerate(runs) if not run.failure]
      if step % config.sample_every_steps == 0 or last:
        for k, run in alive:
          save_samples(run, k, step)
      if config.eval_every_steps and step % config.eval_every_steps == 0 and not last:
        for k, run in alive:
          evaluate(run, k, step)
      if step % config.checkpoint_every_steps == 0:
        save_checkpoints(step)
    # The run's end, or a stop signal that may have come after this step's checks.
    if step > start_step:
      save_checkpoints(step)

  wall_time = time.perf_counter() - start_time
  finals = {}
  for k, run in enumerate(runs):
    if run.failure:
      continue
    final = {
        'step': step,
        'wall_time_s': wall_time,
        'steps_per_s': (step - start_step) / max(wall_time, 1e-9)
    }
    final.update({workdir_lib.flat_name(name): v for name, v in run.last_metrics.items()})
    final.update(evaluate(run, k, step))
    run.writer.flush()
    run.writer.close()
    finals[run.name] = final
    if is_chief:
      status = ('stopped early by a signal; rerun the same command to resume'
                if stop.requested else 'done')
      logging.info('Run %s. Workdir %s: checkpoints/, samples/, tensorboard/, config.json.', status,
                   run.workdir)
      if step == num_steps:
        workdir_lib.write_json(run.workdir / workdir_lib.FINAL_FILE, final)
      if run.config.plot_at_end:
        _plot(run.workdir)
      prefix = f'name={run.name} ' if run.name else ''
      print('final: ' + prefix + summaries.key_values(final), flush=True)
  return finals
