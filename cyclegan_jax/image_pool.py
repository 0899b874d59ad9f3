"""History of generated images (Shrivastava et al. 2017), as fixed-shape arrays.

The discriminators are updated on a mix of the newest fakes and fakes from earlier
steps. Semantics of the official `ImagePool`, image by image through the batch:
while the pool holds fewer than `size` images, store the new image and return it;
once full, with probability 1/2 return a uniformly chosen stored image and put the
new one in its place, otherwise return the new image. The pool lives in the train
state, so it is checkpointed and a resumed run continues with the same history.
"""

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class ImagePool:
  images: jax.Array  # [size, H, W, C]; only the first `count` entries are meaningful.
  count: jax.Array  # int32 scalar: how many images have been stored so far (≤ size).

  @property
  def size(self) -> int:
    return self.images.shape[0]


def init_pool(size: int, image_shape: tuple[int, ...], dtype=jnp.float32) -> ImagePool:
  """An empty pool for `size` images of `image_shape` (H, W, C); size 0 disables it."""
  if size < 0:
    raise ValueError(f'Image pool size must be >= 0, got {size}.')
  return ImagePool(images=jnp.zeros((size, *image_shape), dtype),
                   count=jnp.zeros((), jnp.int32))


def query_pool(pool: ImagePool, images: jax.Array,
               rng: jax.Array) -> tuple[ImagePool, jax.Array]:
  """Returns the updated pool and the images to show the discriminator."""
  if pool.size == 0:
    return pool, images
  images = images.astype(pool.images.dtype)

  def one_image(carry, inputs):
    stored, count = carry
    image, key = inputs
    swap_key, index_key = jax.random.split(key)
    filling = count < pool.size
    swap = jnp.logical_and(~filling, jax.random.uniform(swap_key) > 0.5)
    index = jnp.where(filling, count, jax.random.randint(index_key, (), 0, pool.size))
    previous = stored[index]
    stored = stored.at[index].set(jnp.where(filling | swap, image, previous))
    returned = jnp.where(swap, previous, image)
    return (stored, count + filling.astype(count.dtype)), returned

  keys = jax.random.split(rng, images.shape[0])
  (stored, count), returned = jax.lax.scan(one_image, (pool.images, pool.count), (images, keys))
  return ImagePool(images=stored, count=count), returned
