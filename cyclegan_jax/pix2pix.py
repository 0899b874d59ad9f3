"""pix2pix (Isola et al. 2017): the paired model of the same authors, in the official order.

G maps a to b; D is a PatchGAN judging pairs, concat(a, b) on the channel axis. One iteration of
the official `Pix2PixModel.optimize_parameters`:

1. fake_b = G(a), once (its dropout masks and batch statistics serve both updates below).
2. D: one Adam step on ½ (GAN(D(a, b), real) + GAN(D(a, fake_b), fake)), fake_b detached.
3. G: one Adam step on GAN(D'(a, fake_b), real) + λ_L1 · |fake_b − b|₁ with the updated D'.

No image pool, no cycle or identity terms. The config's use_gan_G switches the GAN term (off: L1
alone, D untrained), as the paper's ablation of the objective.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cyclegan_jax import losses
from cyclegan_jax import models
from cyclegan_jax import state as state_lib


def pair(a: jax.Array, b: jax.Array) -> jax.Array:
  """What the conditional discriminator judges: a and b stacked on the channel axis."""
  return jnp.concatenate([a, b.astype(a.dtype)], axis=-1)


def train_step(state: state_lib.TrainState,
               batch: dict[str, jax.Array],
               varying: state_lib.Hyperparams | None = None,
               *,
               config: ml_collections.ConfigDict,
               networks: state_lib.Networks,
               epoch_steps: int,
               fixed: state_lib.Hyperparams) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One pix2pix iteration (module docstring); the same signature as CycleGAN's step."""
  hyper = {**fixed, **(varying or {})}
  gan_mode = config.gan_mode
  schedule = state_lib.learning_rate_schedule(config, epoch_steps, hyper['learning_rate'])
  optimizer = state_lib.adam(config, schedule, hyper)
  real_A, real_B = batch['A'], batch['B']
  # The key advances as CycleGAN's (the pools' keys are drawn and unused).
  rng = jax.random.split(state.rng, 3)[0]
  # G's dropout key, as a CycleGAN's G's.
  dropout = jax.random.split(jax.random.fold_in(state.rng, state_lib.DROPOUT_STREAM))[0]
  alpha = jax.random.uniform(jax.random.fold_in(state.rng, state_lib.PENALTY_STREAM),
                             (real_A.shape[0],))
  params = state.params
  gan_weight = hyper['use_gan_G']

  def generate(generator):
    stats = dict(state.batch_stats)
    return models.network_fn(networks.G, generator, dropout, stats, 'G')(real_A), stats

  fake_B, generator_vjp, batch_stats = jax.vjp(generate, params['G'], has_aux=True)
  detached_B = jax.lax.stop_gradient(fake_B)

  def discriminator_objective(discriminator_params):
    # Batch-norm running statistics move as the official calls go: D on the fake pair, then on
    # the real pair (the penalties' calls are not the official code's and leave them alone).
    stats = dict(batch_stats)
    D = models.network_fn(networks.D, discriminator_params['D'], None, stats, 'D')
    fake_score = D(pair(real_A, detached_B))
    scores = {'D/real': D(pair(real_A, real_B)), 'D/fake': fake_score}
    terms = {'D': losses.discriminator_loss(scores['D/real'], scores['D/fake'], gan_mode)}
    penalties = losses.discriminator_penalties(
        models.network_fn(networks.D, discriminator_params['D']), pair(real_A, real_B),
        pair(real_A, detached_B), alpha, gan_mode, config.lambda_gp, config.r1_gamma)
    terms.update({f'{name}_D': value for name, value in penalties.items()})
    mean_scores = {k: jnp.mean(v.astype(jnp.float32)) for k, v in scores.items()}
    return losses.weighted_sum(terms, dict.fromkeys(terms, gan_weight)), (terms, mean_scores, stats)

  discriminator_params = {'D': params['D']}
  grads, (discriminator_terms, mean_scores,
          batch_stats) = jax.grad(discriminator_objective, has_aux=True)(discriminator_params)
  updates, opt_state_discriminators = optimizer.update(grads, state.opt_state_discriminators,
                                                       discriminator_params)
  discriminator_params = optax.apply_updates(discriminator_params, updates)

  def generator_objective(fake):
    stats = dict(batch_stats)  # The updated D's call moves them last.
    D = models.network_fn(networks.D, discriminator_params['D'], None, stats, 'D')
    terms = {
        'gan_G': losses.generator_gan_loss(D(pair(real_A, fake)), gan_mode),
        'L1': config.lambda_L1 * losses.l1_loss(fake, real_B),
    }
    return losses.weighted_sum(terms, {'gan_G': gan_weight}), (terms, stats)

  fake_grad, (generator_terms, batch_stats) = jax.grad(generator_objective, has_aux=True)(fake_B)
  grads = {'G': generator_vjp(fake_grad)[0]}
  generator_params = {'G': params['G']}
  updates, opt_state_generators = optimizer.update(grads, state.opt_state_generators,
                                                   generator_params)
  generator_params = optax.apply_updates(generator_params, updates)
  averages = state_lib.update_averages(params, generator_params, config.ema_decay)

  metrics = losses.step_metrics(generator_terms, {'gan_G': gan_weight}, discriminator_terms,
                                mean_scores, schedule(state.step))
  new_params = {**generator_params, **discriminator_params, **averages}
  new_state = state_lib.stepped(state, new_params, opt_state_generators, opt_state_discriminators,
                                rng, batch_stats)
  return new_state, metrics


def translate_all(networks: state_lib.Networks, dropout_key: jax.Array, params: dict[str, Any],
                  real_A: jax.Array, real_B: jax.Array) -> dict[str, jax.Array]:
  """a, G(a) and the ground truth b, for sample grids (networks as in training)."""
  G = models.network_fn(networks.G, params['G'], jax.random.split(dropout_key)[0])
  return {'real_A': real_A, 'fake_B': G(real_A), 'real_B': real_B}
