"""StableHLO: `jax.export` serialization, reloadable in any JAX process without the model code."""

from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from cyclegan_jax.export.common import _input_spec
from cyclegan_jax.export.common import check_output
from cyclegan_jax.export.common import DEFAULT_PLATFORMS
from cyclegan_jax.export.common import input_channels
from cyclegan_jax.export.common import InputShape
from cyclegan_jax.export.common import min_side
from cyclegan_jax.export.common import require_packages
from cyclegan_jax.export.common import translate_function


def export_stablehlo(module: nn.Module,
                     params: dict[str, Any],
                     path: str | Path,
                     platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
                     input_shape: InputShape = None,
                     overwrite: bool = False) -> Path:
  """Writes `jax.export.export(...).serialize()`, with symbolic batch, height and width unless
  `input_shape` fixes them."""
  path = check_output(path, overwrite)
  require_packages('stablehlo')
  translate = translate_function(module, params)
  exported = jax.export.export(jax.jit(translate), platforms=tuple(platforms))(_input_spec(
      input_channels(module, params), input_shape, min_side(module, params)))
  path.write_bytes(exported.serialize())
  return path


def load_stablehlo(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
  exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))
  call = jax.jit(exported.call)
  return lambda x: np.asarray(call(jnp.asarray(x, jnp.float32)))
