"""What every export format shares: the exported function, its input contract and the checks.

Contract of every artifact: one input, a float32 NHWC batch in [-1, 1] with the generator's input
channels; one output, the translated float32 NHWC batch in [-1, 1] of the same batch, height and
width with the generator's output channels. Batch, height and width are all dynamic unless an
`input_shape` fixes them; sides are reflection-padded inside the artifact to the multiples the
network needs and cropped back (`inference.apply_any_size`), so any height and width from the
network's minimum on works (8 for the ResNet generators). What the network is comes from its
layout (`models.layout`), so any generator with a layout exports.
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
from cyclegan_jax import workdir as workdir_lib
from cyclegan_jax.models import fast_convs
from cyclegan_jax.models import layout as layout_lib

FORMATS = ('stablehlo', 'onnx', 'tflite')
QUANTIZE = ('none', 'float16', 'int8')
DEFAULT_PLATFORMS = ('cpu', 'cuda', 'tpu')
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


def check_output(path: str | Path, overwrite: bool = False, sidecar: bool = True) -> Path:
  """The output path, if its folder exists and neither it nor (with `sidecar`) its description
  `<path>.json` is a file to keep: an existing file without `overwrite`, a run's own files
  (config.json, metrics.jsonl, ...) never."""
  path = Path(path)
  if not path.parent.is_dir():
    raise errors.PathNotFoundError(f'The output folder {path.parent} does not exist')
  if path.is_dir():
    raise errors.InvalidValueError(f'The output {path} is a folder; give a file name')
  for target in (path, sidecar_path(path)) if sidecar else (path,):
    if workdir_lib.is_run_file(target):
      raise errors.PathExistsError(
          f'--output={path} would replace {target}, a file of the run in {target.parent}; '
          'give another file name')
    if target.exists() and not overwrite:
      raise errors.PathExistsError(f'{target} exists; pass --overwrite to replace it')
  return path


def sidecar_path(path: str | Path) -> Path:
  """Where the JSON description of an artifact goes: `<path>.json`."""
  return Path(f'{path}.json')


def _export_module(module: nn.Module) -> nn.Module:
  """The same generator with plain lax convolutions, computed in float32, deterministic (dropout
  off, as test.py --eval: an artifact is a function of its input alone)."""
  if not callable(getattr(module, 'layout', None)):
    raise TypeError(f'{type(module).__name__} has no layout(in_channels): it cannot be exported')
  return module.clone(fast_convs=False, dtype=jnp.float32, deterministic=True)


def input_channels(module: nn.Module, params: dict[str, Any]) -> int:
  """The channels the generator's first conv takes, from its kernel."""
  path, conv = next(layout_lib.walk(module.layout(0)))
  kernel = params
  for name in (*path, 'conv', 'kernel'):
    kernel = kernel[name]
  return int(kernel.shape[3 if conv.transpose else 2])


def min_side(module: nn.Module, params: dict[str, Any]) -> int:
  """The smallest height and width the generator takes."""
  return layout_lib.min_side(module.layout(input_channels(module, params)))


def _subpixel_transposed_convs(next_fun, args, kwargs, context):
  """Computes the generator's stride-2 transposed convs as `fast_convs.subpixel_conv_transpose`.

  The same products and sums, as a stride-1 conv and a depth-to-space reshape: TensorFlow's
  TFLite converter turns the input-dilated convolution that `nn.ConvTranspose` lowers to into
  wrong results (max error ~1 on a random layer), and fails at run time with dynamic sizes.
  """
  module = context.module
  if context.method_name == '__call__' and isinstance(module, nn.ConvTranspose) and \
      module.transpose_kernel and len(set(module.kernel_size)) == 1 and \
      len(set(module.strides)) == 1:
    padding = fast_convs.subpixel_padding(module.kernel_size[0], module.strides[0],
                                          tuple(map(tuple, module.padding)))
    if padding is not None:
      (x,) = args
      y = fast_convs.subpixel_conv_transpose(x, module.get_variable('params', 'kernel'), padding)
      if module.use_bias:
        y = y + module.get_variable('params', 'bias')
      return y
  return next_fun(*args, **kwargs)


def translate_function(module: nn.Module,
                       params: dict[str, Any],
                       subpixel: bool = False) -> Callable[[jax.Array], jax.Array]:
  """x -> G(x) for float32 NHWC batches of any size from the network's minimum, parameters as
  constants: `inference.apply_any_size`."""
  module = _export_module(module)
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)

  def translate(x: jax.Array) -> jax.Array:
    intercept = (nn.intercept_methods(_subpixel_transposed_convs)
                 if subpixel else contextlib.nullcontext())
    with intercept:
      return inference.apply_any_size(module, params, x.astype(jnp.float32))

  return translate


DIM_NAMES = ('batch', 'height', 'width')
InputShape = tuple[int, int, int] | None  # (batch, height, width); -1 or None: dynamic.


def input_dims(input_shape: InputShape, min_side: int) -> list[str | int]:
  """[batch, height, width]: a fixed size, or the dimension's name where it is dynamic."""
  if input_shape is None:
    return list(DIM_NAMES)
  if len(input_shape) != 3:
    raise errors.InvalidValueError(f'input_shape is (batch, height, width), got {input_shape}')
  dims = []
  for name, size in zip(DIM_NAMES, input_shape):
    if size is None or size == -1:
      dims.append(name)
    elif int(size) < (1 if name == 'batch' else min_side):
      raise errors.InvalidValueError(f'{name} {size} is too small: the minimum is '
                                     f'{1 if name == "batch" else min_side} (or -1 for dynamic)')
    else:
      dims.append(int(size))
  return dims


def _shape_spec(input_shape: InputShape, min_side: int) -> tuple[str, tuple[str, ...]]:
  """A jax.export shape string for the batch, height and width, and its constraints."""
  dims = input_dims(input_shape, min_side)
  constraints = tuple(f'{d} >= {min_side}' for d in dims[1:] if isinstance(d, str))
  return ', '.join(map(str, dims)), constraints


def _input_spec(channels: int, input_shape: InputShape, min_side: int) -> jax.ShapeDtypeStruct:
  spec, constraints = _shape_spec(input_shape, min_side)
  shape = jax.export.symbolic_shape(f'{spec}, {channels}', constraints=constraints)
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def contract(min_side: int) -> str:
  return (f'input "{INPUT_NAME}": float32 NHWC in [-1, 1], dynamic batch, height and width '
          f'(at least {min_side}); output "{OUTPUT_NAME}": the translated float32 NHWC batch '
          'in [-1, 1] of the same batch, height and width')
