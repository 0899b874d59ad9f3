"""The train state and its lifecycle: networks, optimiser and schedule, creation and shapes.

Names follow the paper: G: A(X) → B(Y), F: B → A; D_Y judges real b against G(a), D_X judges
real a against F(b). The train state is one pytree holding everything a resumed run needs.
"""

import functools
import math
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cyclegan_jax import config_lib
from cyclegan_jax import errors
from cyclegan_jax import image_pool
from cyclegan_jax import models

# The networks of a CycleGAN's train state (config_lib.DISCRIMINATOR_TYPES are architectures);
# pix2pix keeps G and D (`network_names`).
GENERATOR_NAMES = ('G', 'F')  # G: A -> B, F: B -> A.
DISCRIMINATOR_NAMES = ('D_X', 'D_Y')  # D_X judges domain A, D_Y domain B.
ImageShape = tuple[int, int, int]  # (height, width, channels)
# A run with config.ema_decay > 0 also keeps the moving average of each generator's weights in
# `TrainState.params`, under the generator's name with this suffix ('G_ema', 'F_ema').
EMA_SUFFIX = '_ema'
# Which weights of a generator a translation uses: its moving average, or the trained weights.
WEIGHTS = ('ema', 'raw')
# Keys folded out of the step's key with these tags, apart from the pools' splits: dropout masks,
# and the gradient penalty's interpolation weights.
DROPOUT_STREAM = 1
PENALTY_STREAM = 2


class Networks(NamedTuple):
  """A CycleGAN's G, F, D_X and D_Y, or pix2pix's G and D (the others None)."""
  G: nn.Module  # A → B
  F: nn.Module | None = None  # B → A
  D_X: nn.Module | None = None  # judges domain A
  D_Y: nn.Module | None = None  # judges domain B
  D: nn.Module | None = None  # pix2pix: judges concat(a, b), a pair of A and B images


def network_names(config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(generator names, discriminator names) of the train state of `config.model_type`."""
  return config_lib.MODEL_NETWORKS[config.model_type]


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs, as one pytree."""
  step: jax.Array
  # {'G', 'F', 'D_X', 'D_Y'[, 'G_ema', 'F_ema']} (pix2pix: {'G', 'D'[, 'G_ema']}): Flax params.
  params: dict[str, Any]
  opt_state_generators: optax.OptState  # Adam state of G and F (one joint step).
  opt_state_discriminators: optax.OptState  # Adam state of D_X and D_Y (one joint step).
  pool_A: image_pool.ImagePool  # Earlier F(b) fakes, shown to D_X.
  pool_B: image_pool.ImagePool  # Earlier G(a) fakes, shown to D_Y.
  rng: jax.Array
  # The batch-norm running statistics of each network that has batch norm ({} for none): Flax
  # 'batch_stats' collections, moved by every forward pass of a step in the official order, as
  # PyTorch's BatchNorm2d in train mode; eval-mode translation (test.py --eval) uses them.
  batch_stats: dict[str, Any] = flax.struct.field(default_factory=dict)


def build_networks(config: ml_collections.ConfigDict) -> Networks:
  dtype = jnp.dtype(config.compute_dtype)
  model_config = config.model
  G = models.build_generator(model_config, model_config.channels_B, dtype=dtype)
  if config.model_type == 'pix2pix':
    return Networks(G=G, D=models.build_discriminator(model_config, dtype=dtype))
  return Networks(G=G,
                  F=models.build_generator(model_config, model_config.channels_A, dtype=dtype),
                  D_X=models.build_discriminator(model_config, dtype=dtype),
                  D_Y=models.build_discriminator(model_config, dtype=dtype))


def steps_per_epoch(epoch_size: int, batch_size: int) -> int:
  return max(1, math.ceil(epoch_size / batch_size))


# Hyperparameters that may differ between the members of one compiled program (an ensemble):
# they change no array shape. The loss switches are weights of 1 or 0.
HYPERPARAMETERS = tuple(field for field in config_lib.ENSEMBLE_MEMBER_FIELDS if field != 'seed')
Hyperparams = dict[str, Any]  # name -> a Python float (the same for every member) or an array.


# Those whose value can remove work from the step (a switch at 0 drops its term and a
# discriminator's update, lambda_identity = 0 the identity passes) are compiled in when all the
# members of a program share them; every other hyperparameter is an argument of the step, for a
# single run too, so that a member's program is its own run's (bitwise, one member per call).
COMPILED_WHEN_SHARED = ('lambda_identity', 'use_gan_G', 'use_gan_F', 'use_cycle_forward',
                        'use_cycle_backward')


def hyperparams(config: ml_collections.ConfigDict) -> dict[str, float]:
  """The config's HYPERPARAMETERS as floats (the switches as 1.0 / 0.0)."""
  return {name: float(config[name]) for name in HYPERPARAMETERS}


def split_hyperparams(
    configs: list[ml_collections.ConfigDict]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """(the hyperparameters compiled into the step, as floats; the step's arguments, as float32
  arrays [len(configs)]) for the members of one program (one config: a single run)."""
  values = [hyperparams(config) for config in configs]
  fixed, varying = {}, {}
  for name in HYPERPARAMETERS:
    column = [value[name] for value in values]
    if name in COMPILED_WHEN_SHARED and len(set(column)) == 1:
      fixed[name] = column[0]
    else:
      varying[name] = np.asarray(column, np.float32)
  return fixed, varying


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           epoch_steps: int,
                           base: float | jax.Array | None = None) -> optax.Schedule:
  """Learning rate as a function of the step, per `config.lr_policy`, from `base` (default
  config.learning_rate; an array for an ensemble's members).

  'linear' is the official rule, applied per epoch: during 0-based epoch e the rate
  is lr · (1 − max(0, e + 1 − num_epochs) / (num_epochs_decay + 1)).
  """
  base = config.learning_rate if base is None else base
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
    decay = optax.cosine_decay_schedule(1.0, max(1, total_epochs * epoch_steps))

    def schedule(step):
      return base * decay(step)
  else:
    raise ValueError(f'Unknown config.lr_policy {config.lr_policy!r}.')
  return schedule


def adam(config: ml_collections.ConfigDict,
         schedule: optax.Schedule,
         hyper: Hyperparams | None = None) -> optax.GradientTransformation:
  """Adam with the config's betas, or those of `hyper` (floats or an ensemble member's arrays:
  the optimizer state has the same structure either way)."""
  hyper = hyperparams(config) if hyper is None else hyper
  return optax.adam(schedule, b1=hyper['beta1'], b2=hyper['beta2'])


def init_train_state(config: ml_collections.ConfigDict,
                     networks: Networks,
                     optimizer: optax.GradientTransformation,
                     image_shape_A: tuple[int, int, int],
                     image_shape_B: tuple[int, int, int],
                     seed: int | jax.Array | None = None) -> TrainState:
  """A fresh train state (pure; jit it with out_shardings to create it on device), from
  config.seed or `seed` (an ensemble member's, traced)."""
  seed = config.seed if seed is None else seed
  rng = jax.random.PRNGKey(seed)
  # Parameter init draws from XLA's RngBitGenerator: it compiles several times faster than
  # threefry for the many kernel shapes (the draws may differ across backends).
  init_key = jax.random.key(seed, impl='rbg')
  key_G, key_F, key_DX, key_DY = jax.random.split(init_key, 4)
  x = jnp.zeros((1, *image_shape_A), jnp.float32)
  y = jnp.zeros((1, *image_shape_B), jnp.float32)
  if config.model_type == 'pix2pix':  # D judges pairs: A and B images stacked on channels.
    variables = {
        'G': networks.G.init(key_G, x),
        'D': networks.D.init(key_DY, jnp.concatenate([x, y], axis=-1)),
    }
  else:
    variables = {
        'G': networks.G.init(key_G, x),
        'F': networks.F.init(key_F, y),
        'D_X': networks.D_X.init(key_DX, x),
        'D_Y': networks.D_Y.init(key_DY, y),
    }
  params = {name: v['params'] for name, v in variables.items()}
  batch_stats = {name: v['batch_stats'] for name, v in variables.items() if 'batch_stats' in v}
  generator_names, discriminator_names = network_names(config)
  generator_params = {k: params[k] for k in generator_names}
  discriminator_params = {k: params[k] for k in discriminator_names}
  if config.ema_decay > 0:  # The averages start at the initial weights.
    params.update({k + EMA_SUFFIX: jax.tree.map(jnp.copy, params[k]) for k in generator_names})
  return TrainState(step=jnp.zeros((), jnp.int32),
                    params=params,
                    opt_state_generators=optimizer.init(generator_params),
                    opt_state_discriminators=optimizer.init(discriminator_params),
                    pool_A=image_pool.init_pool(config.pool_size, image_shape_A),
                    pool_B=image_pool.init_pool(config.pool_size, image_shape_B),
                    rng=rng,
                    batch_stats=batch_stats)


def stepped(state: TrainState, params: dict[str, Any], opt_state_generators: optax.OptState,
            opt_state_discriminators: optax.OptState, rng: jax.Array, batch_stats: dict[str, Any],
            **pools) -> TrainState:
  """`state` one step on: its new parameters (networks and averages), optimiser states, key,
  running statistics and (CycleGAN) pools."""
  return state.replace(step=state.step + 1,
                       params=params,
                       opt_state_generators=opt_state_generators,
                       opt_state_discriminators=opt_state_discriminators,
                       rng=rng,
                       batch_stats=batch_stats,
                       **pools)


def sample_key(seed: int) -> jax.Array:
  """The fixed key of a run's sample grids and evaluations, during training and after it (their
  dropout masks, if any)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), DROPOUT_STREAM)


def update_averages(params: dict[str, Any], generator_params: dict[str, Any],
                    decay: float) -> dict[str, Any]:
  """The moving averages of `params` (none if it keeps none) after the generators' update to
  `generator_params`: decay · average + (1 − decay) · new weights."""
  return {
      name + EMA_SUFFIX:
          optax.incremental_update(generator_params[name], params[name + EMA_SUFFIX], 1.0 - decay)
      for name in generator_params
      if name + EMA_SUFFIX in params
  }


def generator_weights(params: dict[str, Any], name: str, weights: str | None = None) -> Any:
  """The weights of generator `name` ('G' or 'F') that a translation uses: `weights` 'ema' (its
  moving average) or 'raw' (the trained weights); None: the average if the run keeps one."""
  if weights not in (None, *WEIGHTS):
    raise ValueError(f'Unknown weights {weights!r}: expected one of {", ".join(WEIGHTS)}')
  if name not in params:
    raise errors.InvalidValueError(
        f'this run has no generator {name} (a pix2pix run has only G, direction AtoB); '
        'translate AtoB, or train a pix2pix run with config.data.direction swapped')
  average = name + EMA_SUFFIX
  if weights == 'ema' and average not in params:
    raise errors.InvalidValueError(
        f'this run keeps no moving average of {name} (config.ema_decay was 0); use the trained '
        'weights (--weights=raw, or leave --weights unset)')
  return params[average] if weights != 'raw' and average in params else params[name]


def translation_params(params: dict[str, Any],
                       weights: str | None = None,
                       batch_stats: dict[str, Any] | None = None) -> dict[str, Any]:
  """`params` with G and F replaced by the weights a translation uses (`generator_weights`); with
  `batch_stats` (a train state's, for eval mode: `models.for_test`), each with its batch-norm
  running statistics beside its weights (an average's are its generator's)."""
  names = [name for name in GENERATOR_NAMES if name in params]
  batch_stats = batch_stats or {}
  return {
      **params,
      **{
          name:
              models.with_running_statistics(generator_weights(params, name, weights),
                                             batch_stats.get(name)) for name in names
      }
  }


def image_shapes(config: ml_collections.ConfigDict) -> tuple[ImageShape, ImageShape]:
  """(height, width, channels) of a training image of domain A and of domain B."""
  crop = config.data.crop_size
  return (crop, crop, config.model.channels_A), (crop, crop, config.model.channels_B)


def train_state_initializer(
    config: ml_collections.ConfigDict,
    optimizer: optax.GradientTransformation | None = None) -> Callable[[], TrainState]:
  """The pure function that makes a fresh train state of `config`: jit it (with out_shardings)
  to create the state on device, or `jax.eval_shape` it for its shapes. Adam's state does not
  depend on the learning-rate schedule, so `optimizer` only needs to be given to share it."""
  if optimizer is None:
    optimizer = adam(config, learning_rate_schedule(config, 1))
  return functools.partial(init_train_state, config, build_networks(config), optimizer,
                           *image_shapes(config))


def abstract_train_state(config: ml_collections.ConfigDict) -> Any:
  """The shapes of a run's train state, placed on the first local device (no compute)."""
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return abstract_like(jax.eval_shape(train_state_initializer(config)), sharding)


def total_train_steps(config: ml_collections.ConfigDict, epoch_steps: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return (config.num_epochs + config.num_epochs_decay) * epoch_steps


def to_host(tree: Any) -> Any:
  """Arrays -> numpy; a replicated array that spans several processes gives its local copy."""

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.sharding.is_fully_replicated:
        raise ValueError(f'cannot read a sharded {x.shape} array spanning several processes')
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)

  return jax.tree.map(one, tree)


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """Shape/dtype skeleton of `tree` with every leaf placed by `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
