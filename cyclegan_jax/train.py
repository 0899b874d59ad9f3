"""The CycleGAN train step and the trainer that compiles a run's steps (pix2pix's step is in
pix2pix.py, the training loop in loop.py).

Names follow the paper: G: A(X) → B(Y), F: B → A; D_Y judges real b against G(a),
D_X judges real a against F(b).
"""

import ctypes
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cyclegan_jax import image_pool
from cyclegan_jax import ensemble
from cyclegan_jax import losses
from cyclegan_jax import models
from cyclegan_jax import pix2pix
from cyclegan_jax import state as state_lib

# The loss switches (state.HYPERPARAMETERS, weights 1 or 0) -> the generator loss term each weighs
# (names as in the train step's metrics).
SWITCHED_TERMS = {
    'use_gan_G': 'gan_G',
    'use_gan_F': 'gan_F',
    'use_cycle_forward': 'cycle_A',
    'use_cycle_backward': 'cycle_B',
}
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
  # Calls of a network whose examples do not interact run as one call on their concatenated
  # batches: the same numbers up to float rounding, in fewer and larger operations (on CPU, the
  # offline default's step 12 % faster, the 128 px recipe's 6 %). Batch norm's statistics and
  # dropout's masks depend on the batch, so those networks keep the official separate calls.
  merge_generator_calls = (real_A.shape == real_B.shape and
                           networks.G.maps_examples_independently(real_A.shape[-1]) and
                           networks.F.maps_examples_independently(real_B.shape[-1]))
  rng, pool_key_A, pool_key_B = jax.random.split(state.rng, 3)
  dropout_G, dropout_F = jax.random.split(jax.random.fold_in(state.rng, state_lib.DROPOUT_STREAM))
  params = state.params

  def generator_objective(generator_params):
    # Batch-norm running statistics move with every call, in the official order: G and F in the
    # forward pass and the identity terms, then D_Y(fake_B) and D_X(fake_A) here, then each
    # discriminator on its real batch and the pool's fakes below.
    stats = dict(state.batch_stats)
    G = models.network_fn(networks.G, generator_params['G'], dropout_G, stats, 'G')
    F = models.network_fn(networks.F, generator_params['F'], dropout_F, stats, 'F')
    D_X = models.network_fn(networks.D_X, params['D_X'], None, stats, 'D_X')
    D_Y = models.network_fn(networks.D_Y, params['D_Y'], None, stats, 'D_Y')
    if with_identity and merge_generator_calls:
      # G's translation and identity passes as one call; then F's translation, identity and
      # cycle passes as one (on CPU: the 128 px recipe's step 0.96x, a 32 px one's 0.88x, against
      # F's cycle pass as a call of its own). Without the identity terms, F's two calls stay
      # apart: there the merged call was slower (1.03x for the offline default).
      fake_B, same_B = jnp.split(G(jnp.concatenate([real_A, real_B])), 2)
      fake_A, same_A, rec_A = jnp.split(F(jnp.concatenate([real_B, real_A, fake_B])), 3)
      rec_B = G(fake_A)
    else:
      fake_B = G(real_A)
      rec_A = F(fake_B)
      fake_A = F(real_B)
      rec_B = G(fake_A)
      if with_identity:
        same_B, same_A = G(real_B), F(real_A)
    lambda_cycle, lambda_identity = hyper['lambda_cycle'], hyper['lambda_identity']
    terms = {
        'gan_G': losses.generator_gan_loss(D_Y(fake_B), gan_mode),
        'gan_F': losses.generator_gan_loss(D_X(fake_A), gan_mode),
        'cycle_A': losses.cycle_loss(rec_A, real_A, lambda_cycle),
        'cycle_B': losses.cycle_loss(rec_B, real_B, lambda_cycle),
    }
    if with_identity:
      terms['idt_G'] = losses.identity_loss(same_B, real_B, lambda_cycle, lambda_identity)
      terms['idt_F'] = losses.identity_loss(same_A, real_A, lambda_cycle, lambda_identity)
    return losses.weighted_sum(terms, term_weights), (terms, fake_A, fake_B, stats)

  generator_params = {k: params[k] for k in state_lib.GENERATOR_NAMES}
  grads, (generator_terms, fake_A, fake_B, batch_stats) = jax.grad(generator_objective,
                                                                   has_aux=True)(generator_params)
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
    stats = dict(batch_stats)
    D_X = models.network_fn(networks.D_X, discriminator_params['D_X'], None, stats, 'D_X')
    D_Y = models.network_fn(networks.D_Y, discriminator_params['D_Y'], None, stats, 'D_Y')
    scores = {}
    for name, critic, real, fake in (('D_X', D_X, real_A, pooled_fake_A),
                                     ('D_Y', D_Y, real_B, pooled_fake_B)):
      if getattr(networks, name).maps_examples_independently(real.shape[-1]):
        scores[f'{name}/real'], scores[f'{name}/fake'] = jnp.split(
            critic(jnp.concatenate([real, fake])), 2)
      else:
        scores[f'{name}/real'], scores[f'{name}/fake'] = critic(real), critic(fake)
    terms = {
        'D_X': losses.discriminator_loss(scores['D_X/real'], scores['D_X/fake'], gan_mode),
        'D_Y': losses.discriminator_loss(scores['D_Y/real'], scores['D_Y/fake'], gan_mode),
    }
    # Penalties on each discriminator's input gradients, added to its loss (reported apart);
    # their calls are not the official code's and leave the running statistics alone.
    judged = {
        'D_X': (models.network_fn(networks.D_X,
                                  discriminator_params['D_X']), real_A, pooled_fake_A, alpha_X),
        'D_Y': (models.network_fn(networks.D_Y,
                                  discriminator_params['D_Y']), real_B, pooled_fake_B, alpha_Y)
    }
    weights = {name: hyper[switch] for name, switch in DISCRIMINATOR_SWITCH.items()}
    for name, (critic, real, fake, alpha) in judged.items():
      penalties = losses.discriminator_penalties(critic, real, fake, alpha, gan_mode,
                                                 config.lambda_gp, config.r1_gamma)
      for penalty, value in penalties.items():
        terms[f'{penalty}_{name}'] = value
        weights[f'{penalty}_{name}'] = weights[name]
    mean_scores = {k: jnp.mean(v.astype(jnp.float32)) for k, v in scores.items()}
    return losses.weighted_sum(terms, weights), (terms, mean_scores, stats)

  discriminator_params = {k: params[k] for k in state_lib.DISCRIMINATOR_NAMES}
  grads, (discriminator_terms, mean_scores,
          batch_stats) = jax.grad(discriminator_objective, has_aux=True)(discriminator_params)
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
                                batch_stats,
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
  # (state_lib.TrainState, batch) -> (state_lib.TrainState, metrics), jitted, state donated
  step: Any
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
    _return_freed_heap_to_the_system()
    return _BoundStep([compiled[id(fn)] for fn in self.fns], self.varying, self.slotted)

  def __getattr__(self, name):
    return getattr(self.fns[0], name)


def _return_freed_heap_to_the_system() -> None:
  """XLA's compiler frees its working memory into the C heap, which glibc keeps mapped: the
  step's own buffers then came on top of it (the 256 px step's peak RSS 4.55 GiB with it, 3.90
  after `malloc_trim`). Elsewhere than glibc, nothing."""
  try:
    trim = ctypes.CDLL(None).malloc_trim
  except (OSError, AttributeError):
    return
  trim(0)


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
