"""StableHLO: `jax.export` serialization, reloadable in any JAX process without the model code."""

from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from cyclegan_jax.export.common import _input_spec
from cyclegan_jax.export.common import DEFAULT_PLATFORMS
from cyclegan_jax.export.common import input_channels
from cyclegan_jax.export.common import InputShape
from cyclegan_jax.export.common import min_side
from cyclegan_jax.export.common import translate_function


def stablehlo_bytes(module: nn.Module,
                    params: dict[str, Any],
                    platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
                    input_shape: InputShape = None) -> bytes:
  """`jax.export.export(...).serialize()`, with symbolic batch, height and width unless
  `input_shape` fixes them."""
  translate = translate_function(module, params)
  exported = jax.export.export(jax.jit(translate), platforms=tuple(platforms))(_input_spec(
      input_channels(module, params), input_shape, min_side(module, params)))
  return exported.serialize()


def load_stablehlo(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
  exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))
  call = jax.jit(exported.call)
  return lambda x: np.asarray(call(jnp.asarray(x, jnp.float32)))
