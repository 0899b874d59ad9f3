"""What every export format shares: the exported function, its input contract and the checks.

Contract of every artifact: one input, a float32 NHWC batch in [-1, 1] with the generator's input
channels; one output, the translated float32 NHWC batch in [-1, 1] of the same batch, height and
width with the generator's output channels. Batch, height and width are all dynamic unless an
`input_shape` fixes them; sides are reflection-padded to multiples of 4 inside the artifact and
cropped back, so any height and width of at least 8 works.
"""

import contextlib
import importlib.util
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cyclegan_jax import errors
from cyclegan_jax import inference
from cyclegan_jax import models
from cyclegan_jax.models import fast_convs
from cyclegan_jax.models import layers

FORMATS = ('stablehlo', 'onnx', 'tflite')
QUANTIZE = ('none', 'float16', 'int8')
DEFAULT_PLATFORMS = ('cpu', 'cuda', 'tpu')
MIN_SIDE = inference.MIN_SIDE  # Height and width of at least 8 pixels.
INPUT_NAME, OUTPUT_NAME = 'image', 'translated'
# The optional packages each format needs (module -> pip distribution), to export and to run.
FORMAT_PACKAGES = {
    'stablehlo': {'flatbuffers': 'flatbuffers'},
    'onnx': {'onnx': 'onnx', 'onnxruntime': 'onnxruntime'},
    'tflite': {'tensorflow': 'tensorflow-cpu', 'ai_edge_litert': 'ai-edge-litert'},
}
RUNTIME_PACKAGES = {
    'stablehlo': {'flatbuffers': 'flatbuffers'},
    'onnx': {'onnxruntime': 'onnxruntime'},
    'tflite': {'ai_edge_litert': 'ai-edge-litert'},
}
INSTALL_HINT = 'pip install -r requirements-export.txt'
MissingPackageError = errors.MissingPackageError  # A format's optional packages are missing.


def require_packages(fmt: str, runtime_only: bool = False) -> None:
  """Raises MissingPackageError naming what `fmt` needs (to export, or only to run an artifact)
  and how to install it. Looks the packages up without importing them."""
  check_format(fmt)
  packages = (RUNTIME_PACKAGES if runtime_only else FORMAT_PACKAGES)[fmt]
  missing = [dist for module, dist in packages.items() if importlib.util.find_spec(module) is None]
  if missing:
    raise MissingPackageError(f'--format={fmt} needs {", ".join(missing)}, which is not '
                              f'installed: {INSTALL_HINT}')


def check_format(fmt: str, quantize: str = 'none') -> None:
  if fmt not in FORMATS:
    raise errors.InvalidValueError(f'Unknown format {fmt!r}: expected one of {", ".join(FORMATS)}')
  if quantize not in QUANTIZE:
    raise errors.InvalidValueError(
        f'Unknown quantization {quantize!r}: expected one of {", ".join(QUANTIZE)}')
  if quantize != 'none' and fmt != 'tflite':
    raise errors.InvalidValueError(
        f'--quantize={quantize} is for --format=tflite only; {fmt} is float32')


def check_output(path: str | Path, overwrite: bool = False) -> Path:
  """The output path, if its folder exists and it is not a file to keep."""
  path = Path(path)
  if not path.parent.is_dir():
    raise errors.PathNotFoundError(f'The output folder {path.parent} does not exist')
  if path.is_dir():
    raise errors.InvalidValueError(f'The output {path} is a folder; give a file name')
  if path.exists() and not overwrite:
    raise errors.PathExistsError(f'{path} exists; pass --overwrite to replace it')
  return path


def sidecar_path(path: str | Path) -> Path:
  """Where the JSON description of an artifact goes: `<path>.json`."""
  return Path(f'{path}.json')


def _export_module(module: models.ResnetGenerator) -> models.ResnetGenerator:
  """The same generator with plain lax convolutions, computed in float32."""
  if not isinstance(module, models.ResnetGenerator):
    raise TypeError(f'Expected a models.ResnetGenerator, got {type(module).__name__}')
  return module.clone(fast_convs=False, dtype=jnp.float32)


def input_channels(params: dict[str, Any]) -> int:
  return int(params['stem']['conv']['kernel'].shape[2])


def _pad_to_multiple(x: jax.Array) -> jax.Array:
  """Reflection padding at the bottom and right to multiples of 4, for symbolic sizes too.

  Padding by 3 and keeping the first 4 * ceil(size / 4) rows equals padding by the rows missing
  (`inference.pad_to_multiple`): reflection padding by fewer rows is a prefix of it.
  """
  height, width = x.shape[1:3]
  padded_height = inference.SIZE_MULTIPLE * ((height + 3) // inference.SIZE_MULTIPLE)
  padded_width = inference.SIZE_MULTIPLE * ((width + 3) // inference.SIZE_MULTIPLE)
  if isinstance(height, int) and isinstance(width, int):
    return inference.pad_to_multiple(x)
  x = jnp.pad(x, ((0, 0), (0, 3), (0, 3), (0, 0)), mode='reflect')
  return jax.lax.slice(x, (0, 0, 0, 0), (x.shape[0], padded_height, padded_width, x.shape[3]))


def _subpixel_transposed_convs(next_fun, args, kwargs, context):
  """Computes the generator's stride-2 transposed convs as `fast_convs.subpixel_conv_transpose`.

  The same products and sums, as a stride-1 conv and a depth-to-space reshape: TensorFlow's
  TFLite converter turns the input-dilated convolution that `nn.ConvTranspose` lowers to into
  wrong results (max error ~1 on a random layer), and fails at run time with dynamic sizes.
  """
  module = context.module
  if (context.method_name == '__call__' and isinstance(module, nn.ConvTranspose) and
      module.transpose_kernel and tuple(module.kernel_size) == (3, 3) and
      tuple(module.strides) == (2, 2) and
      tuple(map(tuple, module.padding)) == layers.TRANSPOSED_PAD):
    (x,) = args
    y = fast_convs.subpixel_conv_transpose(x, module.get_variable('params', 'kernel'))
    if module.use_bias:
      y = y + module.get_variable('params', 'bias')
    return y
  return next_fun(*args, **kwargs)


def translate_function(module: models.ResnetGenerator,
                       params: dict[str, Any],
                       subpixel: bool = False) -> Callable[[jax.Array], jax.Array]:
  """x -> G(x) for float32 NHWC batches of any size (at least 8 x 8), parameters as constants.

  Sides are reflection-padded to multiples of 4 and cropped back, as `inference.apply_any_size`.
  """
  module = _export_module(module)
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)

  def translate(x: jax.Array) -> jax.Array:
    height, width = x.shape[1:3]
    intercept = (nn.intercept_methods(_subpixel_transposed_convs)
                 if subpixel else contextlib.nullcontext())
    with intercept:
      y = module.apply({'params': params}, _pad_to_multiple(x.astype(jnp.float32)))
    return jax.lax.slice(y, (0, 0, 0, 0), (y.shape[0], height, width, y.shape[3]))

  return translate


DIM_NAMES = ('batch', 'height', 'width')
InputShape = tuple[int, int, int] | None  # (batch, height, width); -1 or None: dynamic.


def input_dims(input_shape: InputShape = None) -> list[str | int]:
  """[batch, height, width]: a fixed size, or the dimension's name where it is dynamic."""
  if input_shape is None:
    return list(DIM_NAMES)
  if len(input_shape) != 3:
    raise errors.InvalidValueError(f'input_shape is (batch, height, width), got {input_shape}')
  dims = []
  for name, size in zip(DIM_NAMES, input_shape):
    if size is None or size == -1:
      dims.append(name)
    elif int(size) < (1 if name == 'batch' else MIN_SIDE):
      raise errors.InvalidValueError(f'{name} {size} is too small: the minimum is '
                                     f'{1 if name == "batch" else MIN_SIDE} (or -1 for dynamic)')
    else:
      dims.append(int(size))
  return dims


def _shape_spec(input_shape: InputShape) -> tuple[str, tuple[str, ...]]:
  """A jax.export shape string for the batch, height and width, and its constraints."""
  dims = input_dims(input_shape)
  constraints = tuple(f'{d} >= {MIN_SIDE}' for d in dims[1:] if isinstance(d, str))
  return ', '.join(map(str, dims)), constraints


def _input_spec(channels: int, input_shape: InputShape = None) -> jax.ShapeDtypeStruct:
  spec, constraints = _shape_spec(input_shape)
  shape = jax.export.symbolic_shape(f'{spec}, {channels}', constraints=constraints)
  return jax.ShapeDtypeStruct(shape, jnp.float32)


_CONTRACT = (f'input "{INPUT_NAME}": float32 NHWC in [-1, 1], dynamic batch, height and width '
             f'(at least {MIN_SIDE}); output "{OUTPUT_NAME}": the translated float32 NHWC batch '
             'in [-1, 1] of the same batch, height and width')
