"""Exports a trained generator for serving without this code: StableHLO, ONNX or TFLite.

    python -m cyclegan_jax.export --workdir=runs/monet --direction=BtoA --format=stablehlo \
        --output=exports/monet_BtoA.stablehlo
    python -m cyclegan_jax.export --torch_checkpoint=horse2zebra.pth --format=onnx \
        --output=exports/horse2zebra.onnx
    python -m cyclegan_jax.export --workdir=runs/monet --format=tflite --quantize=float16 \
        --output=exports/monet_AtoB_fp16.tflite

Formats (`--format`, and for tflite `--quantize`):
  stablehlo  `jax.export` serialization: reload with `jax.export.deserialize(data).call(x)`, in any
             JAX process, without the model code. Lowered for --platforms (default cpu,cuda,tpu).
  onnx       opset 17 graph of standard ops (Conv, ConvTranspose, InstanceNormalization, reflect
             Pad, Concat, ...), written with the `onnx` package and checked with ONNX Runtime.
  tflite     jax2tf + TensorFlow's TFLite converter, builtin ops only (no Flex), run with the
             LiteRT interpreter. --quantize=none: float32; float16: float16 weights (half the
             size, computed in float32 on CPU); int8: dynamic-range quantization (int8 weights,
             activations quantized on the fly by the conv kernels: a quarter of the size).

Contract of every artifact: one input, a float32 NHWC batch in [-1, 1] with the generator's input
channels; one output, the translated float32 NHWC batch in [-1, 1] of the same batch, height and
width with the generator's output channels. Batch, height and width are all dynamic, in every
format (for TFLite, resize the interpreter's input before allocating tensors), unless
`--input_shape=BATCH,HEIGHT,WIDTH` fixes them (-1 keeps one dynamic): a fixed-size TFLite model
ran 1.5x (float32) to 3.5x (int8) faster with LiteRT on CPU. Height and width must be at least
the generator's minimum (8 for the ResNets, n for unet_<n>) and need not be multiples of what it
needs (4, n): like `inference.translate_any_size`, sides are reflection-padded at the bottom and
right inside the artifact and cropped back. As the official test.py, batch norm (norm='batch')
normalizes each image by its own statistics, so an image gets the output it gets alone whatever
batch it comes in, or with --eval (test.py --eval) by the running statistics kept in training;
dropout layers are off (test.py --eval), so the artifact is a function of its input. Beside the
artifact, `<output>.json` describes the contract, the source and the tool versions. The
exporters need `pip install -r requirements-export.txt`.
"""

import datetime
import importlib
import json
from pathlib import Path
import sys
from typing import Any, Callable

import flax.linen as nn
import numpy as np

from cyclegan_jax import errors
from cyclegan_jax import inference
from cyclegan_jax import models
from cyclegan_jax.export.common import check_format
from cyclegan_jax.export.common import check_output
from cyclegan_jax.export.common import contract
from cyclegan_jax.export.common import DEFAULT_PLATFORMS
from cyclegan_jax.export.common import DIM_NAMES
from cyclegan_jax.export.common import FORMATS
from cyclegan_jax.export.common import input_channels
from cyclegan_jax.export.common import input_dims
from cyclegan_jax.export.common import INPUT_NAME
from cyclegan_jax.export.common import InputShape
from cyclegan_jax.export.common import MissingPackageError
from cyclegan_jax.export.common import OUTPUT_NAME
from cyclegan_jax.export.common import QUANTIZE
from cyclegan_jax.export.common import require_packages
from cyclegan_jax.export.common import sidecar_path
from cyclegan_jax.export.onnx import load_onnx
from cyclegan_jax.export.onnx import onnx_model
from cyclegan_jax.export.stablehlo import stablehlo_bytes
from cyclegan_jax.export.stablehlo import load_stablehlo
from cyclegan_jax.export.tflite import load_tflite
from cyclegan_jax.export.tflite import tflite_model

SUFFIXES = {'stablehlo': '.stablehlo', 'onnx': '.onnx', 'tflite': '.tflite'}


def format_of(path: str | Path) -> str:
  """The format of an artifact, from its sidecar JSON or else its suffix."""
  sidecar = sidecar_path(path)
  if sidecar.is_file():
    return json.loads(sidecar.read_text())['format']
  suffix = Path(path).suffix
  for fmt, known in SUFFIXES.items():
    if suffix == known:
      return fmt
  raise errors.InvalidValueError(
      f'Cannot tell the format of {path}: no {sidecar.name} and an unknown suffix')


def load_artifact(path: str | Path,
                  fmt: str | None = None,
                  threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
  """x -> G(x) with the artifact's own runtime: JAX, ONNX Runtime or the LiteRT interpreter."""
  fmt = fmt or format_of(path)
  require_packages(fmt, runtime_only=True)
  if fmt == 'stablehlo':
    return load_stablehlo(path)
  if fmt == 'onnx':
    return load_onnx(path, threads)
  return load_tflite(path, threads)


def _versions(fmt: str) -> dict[str, str]:
  names = {'stablehlo': ['jax', 'jaxlib'], 'onnx': ['jax', 'onnx'], 'tflite': ['jax', 'tensorflow']}
  versions = {}
  for name in names[fmt]:
    module = sys.modules.get(name) or importlib.import_module(name)
    versions[name] = getattr(module, '__version__', 'unknown')
  return versions


def describe(generator: inference.Generator, fmt: str, quantize: str, path: Path,
             platforms: tuple[str, ...], input_shape: InputShape = None) -> dict[str, Any]:
  """The sidecar JSON: what the artifact is, how to call it and what made it."""
  module, channels = generator.module, generator.in_channels
  dims = input_dims(input_shape, generator.min_side)
  terms = contract(generator.min_side)
  runtimes = {
      'stablehlo': 'jax.export.deserialize(open(path, "rb").read()).call(x)',
      'onnx': f'onnxruntime.InferenceSession(path).run(["{OUTPUT_NAME}"], {{"{INPUT_NAME}": x}})',
      'tflite': 'ai_edge_litert.interpreter.Interpreter(path): resize_tensor_input(0, x.shape), '
                'allocate_tensors(), set_tensor, invoke, get_tensor',
  }
  description = {
      'format':
          fmt,
      'quantize':
          quantize,
      'file':
          path.name,
      'bytes':
          path.stat().st_size,
      'source':
          generator.description,
      'generator': {
          'architecture':
              getattr(module, 'architecture',
                      type(module).__name__),
          **{
              field: getattr(module, field) for field in ('ngf', 'norm', 'use_dropout') if hasattr(
                  module, field)
          },
          **({
              'batch_norm_statistics': ('running (test.py --eval)' if getattr(
                  module, 'norm_running_average', False) else 'per image (test.py)')
          } if getattr(module, 'norm', None) == 'batch' else {}),
          'params':
              models.count_params(models.split_running_statistics(generator.params)[0]),
      },
      'input': {
          'name': INPUT_NAME,
          'layout': 'NHWC',
          'dtype': 'float32',
          'range': [-1.0, 1.0],
          'shape': [*dims, channels],
      },
      'output': {
          'name': OUTPUT_NAME,
          'layout': 'NHWC',
          'dtype': 'float32',
          'range': [-1.0, 1.0],
          'shape': [*dims, generator.out_channels],
      },
      'dynamic_dims': [d for d in dims if isinstance(d, str)],
      'min_height_width':
          generator.min_side,
      'contract':
          terms if dims == list(DIM_NAMES) else
          f'{terms}; this file takes only [batch, height, width] = {dims}',
      'run_with':
          runtimes[fmt],
      'exported_with':
          _versions(fmt),
      'exported_at':
          datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }
  if fmt == 'stablehlo':
    description['platforms'] = list(platforms)
  return description


def write(module: nn.Module,
          params: dict[str, Any],
          fmt: str,
          path: str | Path,
          *,
          quantize: str = 'none',
          platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
          input_shape: InputShape = None,
          description: str = '',
          overwrite: bool = False) -> Path:
  """Writes the network (any module with a layout) as `fmt` to `path`, without a sidecar."""
  check_format(fmt, quantize)
  path = check_output(path, overwrite, sidecar=False)
  require_packages(fmt)
  if fmt == 'stablehlo':
    data = stablehlo_bytes(module, params, platforms, input_shape)
  elif fmt == 'onnx':
    data = onnx_model(module, params, description, input_shape).SerializeToString()
  else:
    data = tflite_model(module, params, quantize, input_shape)
  path.write_bytes(data)
  return path


def export(generator: inference.Generator,
           fmt: str,
           path: str | Path,
           quantize: str = 'none',
           overwrite: bool = False,
           platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
           input_shape: InputShape = None) -> Path:
  """Writes `generator` in `fmt` to `path` and its description to `<path>.json`."""
  check_format(fmt, quantize)
  input_dims(input_shape, generator.min_side)
  path = check_output(path, overwrite)
  require_packages(fmt)
  module, params = generator.module, generator.params
  if input_channels(module, params) != generator.in_channels:
    raise errors.InvalidValueError(
        f'The generator takes {input_channels(module, params)} channels, not '
        f'{generator.in_channels}')
  write(module,
        params,
        fmt,
        path,
        quantize=quantize,
        platforms=platforms,
        input_shape=input_shape,
        description=generator.description,
        overwrite=True)
  description = describe(generator, fmt, quantize, path, platforms, input_shape)
  sidecar_path(path).write_text(json.dumps(description, indent=2) + '\n')
  return path
