"""Each loss against values computed by hand."""

import math

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
