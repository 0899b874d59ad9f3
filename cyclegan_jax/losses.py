"""CycleGAN objectives as small pure functions (means over every element).

Discriminator outputs are raw patch scores (no sigmoid): LSGAN compares them with
1/0 by squared error, the vanilla GAN loss reads them as logits.
"""

import jax.numpy as jnp
import optax

from cyclegan_jax import config_lib



def gan_loss(scores: jnp.ndarray, target_is_real: bool, mode: str = 'lsgan') -> jnp.ndarray:
  """Adversarial loss of discriminator `scores` against an all-real or all-fake target."""
  scores = scores.astype(jnp.float32)
  target = jnp.ones_like(scores) if target_is_real else jnp.zeros_like(scores)
  if mode == 'lsgan':
    return jnp.mean(jnp.square(scores - target))
  if mode == 'vanilla':
    return jnp.mean(optax.sigmoid_binary_cross_entropy(scores, target))
  raise ValueError(f'Unknown GAN loss mode {mode!r}; expected one of {config_lib.GAN_MODES}.')


def generator_gan_loss(fake_scores: jnp.ndarray, mode: str = 'lsgan') -> jnp.ndarray:
  """The generator wants its fakes judged real."""
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
