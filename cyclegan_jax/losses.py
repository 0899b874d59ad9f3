"""CycleGAN objectives as small pure functions (means over every element).

Discriminator outputs are raw patch scores (no sigmoid): LSGAN compares them with 1/0 by squared
error, the vanilla GAN loss reads them as logits, WGAN-GP as critic values (the official
`GANLoss('wgangp')`: -mean for real, mean for fake), hinge as margins (the discriminator pays
relu(1 - real) and relu(1 + fake), the generator -mean). The gradient penalties
(`gradient_penalty`: WGAN-GP's on real/fake interpolates, as the official `cal_gradient_penalty`
that its CycleGAN never calls; `r1_penalty`: the zero-centred penalty on real images) differentiate
the discriminator with respect to its input inside its objective.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from cyclegan_jax import config_lib

Critic = Callable[[jax.Array], jax.Array]  # Images -> patch scores.


def gan_loss(scores: jnp.ndarray, target_is_real: bool, mode: str = 'lsgan') -> jnp.ndarray:
  """Adversarial loss of discriminator `scores` against an all-real or all-fake target."""
  scores = scores.astype(jnp.float32)
  target = jnp.ones_like(scores) if target_is_real else jnp.zeros_like(scores)
  if mode == 'lsgan':
    return jnp.mean(jnp.square(scores - target))
  if mode == 'vanilla':
    return jnp.mean(optax.sigmoid_binary_cross_entropy(scores, target))
  if mode == 'wgangp':
    return -jnp.mean(scores) if target_is_real else jnp.mean(scores)
  if mode == 'hinge':  # The discriminator's side; the generator's is generator_gan_loss.
    return jnp.mean(jax.nn.relu(1.0 - scores if target_is_real else 1.0 + scores))
  raise ValueError(f'Unknown GAN loss mode {mode!r}; expected one of {config_lib.GAN_MODES}.')


def generator_gan_loss(fake_scores: jnp.ndarray, mode: str = 'lsgan') -> jnp.ndarray:
  """The generator wants its fakes judged real (WGAN-GP and hinge: the highest critic value)."""
  if mode in ('wgangp', 'hinge'):
    return -jnp.mean(fake_scores.astype(jnp.float32))
  return gan_loss(fake_scores, True, mode)


def discriminator_loss(real_scores: jnp.ndarray, fake_scores: jnp.ndarray,
                       mode: str = 'lsgan') -> jnp.ndarray:
  """Real judged real plus fake judged fake, halved as in the official code."""
  return 0.5 * (gan_loss(real_scores, True, mode) + gan_loss(fake_scores, False, mode))


def l1_loss(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  """Mean absolute error, computed in float32."""
  return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))


def cycle_loss(reconstructed: jnp.ndarray, original: jnp.ndarray, weight: float) -> jnp.ndarray:
  """weight · |F(G(x)) − x|₁ (or the backward cycle), mean over elements."""
  return weight * l1_loss(reconstructed, original)


def identity_loss(same: jnp.ndarray, original: jnp.ndarray, cycle_weight: float,
                  identity_weight: float) -> jnp.ndarray:
  """λ_idt · λ · |G(y) − y|₁: the identity term is scaled by its direction's cycle weight."""
  return identity_weight * cycle_weight * l1_loss(same, original)


def _input_gradients(critic: Critic, x: jax.Array) -> jax.Array:
  """d sum(critic(x)) / dx per example, flattened: [batch, pixels * channels] in float32."""
  grads = jax.grad(lambda images: jnp.sum(critic(images).astype(jnp.float32)))(x)
  return grads.reshape(x.shape[0], -1).astype(jnp.float32)


def gradient_penalty(critic: Critic,
                     real: jax.Array,
                     fake: jax.Array,
                     alpha: jax.Array,
                     weight: float,
                     target_norm: float = 1.0) -> jax.Array:
  """WGAN-GP: weight · mean over examples of (‖∇ critic(x̂)‖₂ − target_norm)², at x̂ = α·real +
  (1 − α)·fake with one α per example (`alpha`: [batch] in [0, 1)), as the official
  `cal_gradient_penalty(type='mixed')` (the gradient of the summed scores, 1e-16 added to each
  element before the norm)."""
  alpha = alpha.reshape(-1, *([1] * (real.ndim - 1))).astype(real.dtype)
  mixed = alpha * real + (1 - alpha) * fake
  norms = jnp.linalg.norm(_input_gradients(critic, mixed) + 1e-16, axis=1)
  return weight * jnp.mean(jnp.square(norms - target_norm))


def r1_penalty(critic: Critic, real: jax.Array, gamma: float) -> jax.Array:
  """R1: gamma / 2 · mean over examples of ‖∇ critic(real)‖₂² (Mescheder et al. 2018)."""
  return 0.5 * gamma * jnp.mean(jnp.sum(jnp.square(_input_gradients(critic, real)), axis=1))


def weighted_sum(terms: dict[str, jax.Array], weights: dict[str, Any]) -> jax.Array:
  """sum(weight * term): a weight known to be 0 drops its term from the program (no gradient is
  computed for it), one known to be 1 adds it as is; an ensemble's traced weights multiply."""
  total = jnp.zeros((), jnp.float32)
  for name, value in terms.items():
    weight = weights.get(name, 1.0)
    if isinstance(weight, (int, float)):
      if weight:
        total = total + (value if weight == 1 else weight * value)
    else:
      total = total + weight * value
  return total


def discriminator_penalties(critic: Critic, real: jax.Array, fake: jax.Array, alpha: jax.Array,
                            gan_mode: str, lambda_gp: float,
                            r1_gamma: float) -> dict[str, jax.Array]:
  """The penalties a discriminator's loss adds: 'gp' (WGAN-GP's, gan_mode 'wgangp') and 'r1'
  (r1_gamma > 0)."""
  penalties = {}
  if gan_mode == 'wgangp':
    penalties['gp'] = gradient_penalty(critic, real, fake, alpha, lambda_gp)
  if r1_gamma > 0:
    penalties['r1'] = r1_penalty(critic, real, r1_gamma)
  return penalties


def step_metrics(generator_terms: dict[str, jax.Array], generator_weights: dict[str, Any],
                 discriminator_terms: dict[str, jax.Array], mean_scores: dict[str, jax.Array],
                 learning_rate: jax.Array) -> dict[str, jax.Array]:
  """What a train step reports: every term as `loss/<name>`, the generators' weighted objective
  as `loss/generators`, the discriminators' mean scores as `score/<name>`, and `lr`."""
  metrics = {f'loss/{k}': v for k, v in generator_terms.items()}
  metrics['loss/generators'] = weighted_sum(generator_terms, generator_weights)
  metrics.update({f'loss/{k}': v for k, v in discriminator_terms.items()})
  metrics.update({f'score/{k}': v for k, v in mean_scores.items()})
  metrics['lr'] = jnp.asarray(learning_rate, jnp.float32)
  return metrics
