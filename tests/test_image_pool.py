"""The image pool against the official semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyclegan_jax import image_pool

SHAPE = (2, 2, 3)


def images(values):
  """A batch whose i-th image is filled with values[i]."""
  values = np.asarray(values, np.float32)
  return jnp.asarray(np.broadcast_to(values[:, None, None, None], (len(values), *SHAPE)))


def ids(batch):
  return [float(x) for x in np.asarray(batch)[:, 0, 0, 0]]


def test_fill_phase_stores_and_returns_every_image():
  pool = image_pool.init_pool(5, SHAPE)
  pool, out = image_pool.query_pool(pool, images([1, 2, 3]), jax.random.PRNGKey(0))
  assert ids(out) == [1, 2, 3]
  assert int(pool.count) == 3
  pool, out = image_pool.query_pool(pool, images([4, 5]), jax.random.PRNGKey(1))
  assert ids(out) == [4, 5]
  assert int(pool.count) == 5
  assert ids(pool.images) == [1, 2, 3, 4, 5]


def test_fill_completes_inside_a_batch_then_swaps_apply():
  pool = image_pool.init_pool(2, SHAPE)
  pool, out = image_pool.query_pool(pool, images([1, 2, 3, 4, 5, 6]), jax.random.PRNGKey(3))
  assert ids(out)[:2] == [1, 2]
  assert int(pool.count) == 2
  # Every image shown after the fill is either the new one or one stored before it.
  seen = {1.0, 2.0}
  for new, returned in zip([3, 4, 5, 6], ids(out)[2:]):
    assert returned == new or returned in seen
    seen.add(float(new))


def test_returned_and_stored_images_are_ones_that_were_generated():
  pool = image_pool.init_pool(3, SHAPE)
  generated = set()
  query = jax.jit(image_pool.query_pool)
  for step in range(20):
    batch_ids = [step * 2 + 1, step * 2 + 2]
    generated.update(batch_ids)
    pool, out = query(pool, images(batch_ids), jax.random.PRNGKey(step))
    assert set(ids(out)) <= generated
    assert set(ids(pool.images[:int(pool.count)])) <= generated
  # Each image is stored at most once: the pool's images stay distinct.
  assert len(set(ids(pool.images))) == 3


def test_swap_probability_is_one_half():
  pool = image_pool.init_pool(1, SHAPE)
  pool, _ = image_pool.query_pool(pool, images([-1]), jax.random.PRNGKey(0))
  query = jax.jit(image_pool.query_pool)
  swaps, draws = 0, 4000
  new = images(np.arange(1, draws + 1))
  pool, out = query(pool, new, jax.random.PRNGKey(42))
  swaps = int(np.sum(np.asarray(out)[:, 0, 0, 0] != np.asarray(new)[:, 0, 0, 0]))
  # Binomial(4000, 0.5): std ≈ 32, so ±150 is a > 4.5σ band.
  assert abs(swaps - draws / 2) < 150


def test_swapped_image_is_uniform_over_the_pool():
  pool = image_pool.init_pool(4, SHAPE)
  counts = np.zeros(4)
  query = jax.jit(image_pool.query_pool)
  for trial in range(300):
    pool = image_pool.init_pool(4, SHAPE)
    pool, _ = query(pool, images([0, 1, 2, 3]), jax.random.PRNGKey(trial))
    pool, out = query(pool, images([100]), jax.random.PRNGKey(10_000 + trial))
    value = ids(out)[0]
    if value != 100:
      counts[int(value)] += 1
      # The new image took the returned one's place.
      assert sorted(ids(pool.images)) == sorted({0, 1, 2, 3} - {value} | {100})
  # ~150 swaps spread over 4 slots: each slot gets a fair share.
  assert counts.sum() > 100
  assert counts.min() > counts.sum() / 4 * 0.5


def test_size_zero_disables_the_pool():
  pool = image_pool.init_pool(0, SHAPE)
  batch = images([7, 8])
  new_pool, out = image_pool.query_pool(pool, batch, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(batch))
  assert new_pool.images.shape == (0, *SHAPE)


def test_same_key_same_answer():
  pool = image_pool.init_pool(2, SHAPE)
  pool, _ = image_pool.query_pool(pool, images([1, 2]), jax.random.PRNGKey(0))
  a = image_pool.query_pool(pool, images([3, 4, 5]), jax.random.PRNGKey(9))
  b = image_pool.query_pool(pool, images([3, 4, 5]), jax.random.PRNGKey(9))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_negative_size_is_rejected():
  with pytest.raises(ValueError, match='size'):
    image_pool.init_pool(-1, SHAPE)
