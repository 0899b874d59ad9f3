"""Each loss against values computed by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyclegan_jax import losses

SCORES = jnp.array([[0.5, 2.0], [-1.0, 0.0]])


def test_lsgan_real_and_fake_targets():
  # (0.5-1)² + (2-1)² + (-1-1)² + (0-1)² = 0.25 + 1 + 4 + 1, over 4 patches.
  assert float(losses.gan_loss(SCORES, True, 'lsgan')) == pytest.approx(6.25 / 4)
  # 0.25 + 4 + 1 + 0, over 4.
  assert float(losses.gan_loss(SCORES, False, 'lsgan')) == pytest.approx(5.25 / 4)


def test_generator_loss_wants_fakes_judged_real():
  assert float(losses.generator_gan_loss(SCORES)) == pytest.approx(6.25 / 4)


def test_discriminator_loss_is_halved():
  real = jnp.array([1.0, 0.0])  # (0 + 1) / 2 = 0.5
  fake = jnp.array([1.0, 1.0])  # (1 + 1) / 2 = 1
  assert float(losses.discriminator_loss(real, fake, 'lsgan')) == pytest.approx(0.5 * 1.5)


def test_vanilla_gan_is_bce_with_logits():
  logits = jnp.array([0.0, math.log(3.0)])
  # -log σ(0) = log 2; -log σ(log 3) = log(1 + 1/3); -log(1 - σ(log 3)) = log 4.
  assert float(losses.gan_loss(logits, True, 'vanilla')) == pytest.approx(
      (math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)
  assert float(losses.gan_loss(logits, False, 'vanilla')) == pytest.approx(
      (math.log(2) + math.log(4)) / 2, rel=1e-6)


def test_unknown_gan_mode_is_rejected():
  with pytest.raises(ValueError, match='wgan'):
    losses.gan_loss(SCORES, True, 'wgan')


def test_cycle_loss_is_weighted_mean_absolute_error():
  reconstructed = jnp.array([[0.0, 1.0], [0.5, -1.0]])
  original = jnp.array([[1.0, 1.0], [0.0, -1.0]])
  # |−1| + 0 + 0.5 + 0 = 1.5 over 4 elements, times λ = 10.
  assert float(losses.cycle_loss(reconstructed, original, 10.0)) == pytest.approx(3.75)


def test_identity_loss_weight_is_lambda_identity_times_lambda():
  same = jnp.full((1, 2, 2, 3), 0.2)
  original = jnp.zeros((1, 2, 2, 3))
  # 0.5 · 10 · 0.2 = 1.0
  assert float(losses.identity_loss(same, original, 10.0, 0.5)) == pytest.approx(1.0)
  assert float(losses.identity_loss(same, original, 10.0, 0.0)) == 0.0


def test_losses_are_float32_for_bfloat16_inputs():
  value = losses.cycle_loss(jnp.ones((2, 2), jnp.bfloat16), jnp.zeros((2, 2), jnp.bfloat16), 1.0)
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(float(value), 1.0)


def test_wgangp_scores_are_critic_values():
  # Real: -mean = -(0.5 + 2 - 1 + 0) / 4; fake: +mean; the generator: -mean of its fakes.
  assert float(losses.gan_loss(SCORES, True, 'wgangp')) == pytest.approx(-0.375)
  assert float(losses.gan_loss(SCORES, False, 'wgangp')) == pytest.approx(0.375)
  assert float(losses.generator_gan_loss(SCORES, 'wgangp')) == pytest.approx(-0.375)
  real, fake = jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0])
  assert float(losses.discriminator_loss(real, fake, 'wgangp')) == pytest.approx(0.5 * (-2 + 0.5))


def test_hinge_margins():
  # Discriminator: relu(1 - real) = [0.5, 0, 2, 1] -> 3.5 / 4; relu(1 + fake) = [1.5, 3, 0, 1].
  assert float(losses.gan_loss(SCORES, True, 'hinge')) == pytest.approx(3.5 / 4)
  assert float(losses.gan_loss(SCORES, False, 'hinge')) == pytest.approx(5.5 / 4)
  assert float(losses.discriminator_loss(SCORES, SCORES, 'hinge')) == pytest.approx(0.5 * 9 / 4)
  assert float(losses.generator_gan_loss(SCORES, 'hinge')) == pytest.approx(-0.375)


# Penalties on critics whose input gradients are known in closed form (batch 2, 2x2x1 images).
REAL = jnp.arange(8, dtype=jnp.float32).reshape(2, 2, 2, 1) / 4
FAKE = -REAL[::-1]
WEIGHTS = jnp.array([0.5, -1.0, 2.0, 0.25], jnp.float32)


def linear_critic(x):
  """Two patch scores per image, together sum(w * x): the input gradient is w everywhere."""
  flat = x.reshape(x.shape[0], -1) * WEIGHTS
  return jnp.stack([flat[:, :2].sum(1), flat[:, 2:].sum(1)], axis=1)


def test_gradient_penalty_of_a_linear_critic():
  norm = math.sqrt(0.25 + 1 + 4 + 0.0625)
  alpha = jnp.array([0.3, 0.9])
  expected = 10 * (norm - 1)**2  # The same gradient at every interpolate.
  assert float(losses.gradient_penalty(linear_critic, REAL, FAKE, alpha,
                                       10.0)) == pytest.approx(expected, rel=1e-5)
  assert float(losses.r1_penalty(linear_critic, REAL, 2.0)) == pytest.approx(norm**2, rel=1e-5)


def test_gradient_penalty_is_taken_at_the_interpolates():
  """critic(x) = sum(x²) / 2 has gradient x: the penalty reads ‖α·real + (1 − α)·fake‖."""
  alpha = jnp.array([0.25, 1.0])
  mixed = alpha[:, None] * REAL.reshape(2, -1) + (1 - alpha[:, None]) * FAKE.reshape(2, -1)
  norms = np.linalg.norm(np.asarray(mixed, np.float64), axis=1)
  critic = lambda x: 0.5 * jnp.sum(jnp.square(x), axis=(1, 2, 3))
  assert float(losses.gradient_penalty(critic, REAL, FAKE, alpha, 1.0)) == pytest.approx(np.mean(
      (norms - 1)**2),
                                                                                         rel=1e-5)
  # R1 at the real images: mean of ‖real‖² / 2 · gamma.
  real_norms = np.sum(np.asarray(REAL, np.float64).reshape(2, -1)**2, axis=1)
  assert float(losses.r1_penalty(critic, REAL, 1.0)) == pytest.approx(0.5 * real_norms.mean(),
                                                                      rel=1e-5)


@pytest.mark.parametrize('penalty', ['gradient', 'r1'])
def test_penalty_gradients_match_finite_differences(penalty):
  """The discriminator is trained through its penalty (a gradient of a gradient): that
  second-order gradient with respect to the critic's parameters, against central differences
  (float32; step 1e-2 on a smooth critic whose third derivatives are O(1): truncation ~1e-4)."""
  theta = jnp.array([0.3, -0.7, 1.1, 0.4], jnp.float32)
  alpha = jnp.array([0.35, 0.8])

  def penalty_of(params):
    critic = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ params)
    if penalty == 'gradient':
      return losses.gradient_penalty(critic, REAL, FAKE, alpha, 10.0)
    return losses.r1_penalty(critic, REAL, 1.0)

  analytic = np.asarray(jax.grad(penalty_of)(theta))
  step = 1e-2
  numeric = np.array([
      (float(penalty_of(theta.at[i].add(step))) - float(penalty_of(theta.at[i].add(-step)))) /
      (2 * step) for i in range(4)
  ])
  np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=2e-3)
