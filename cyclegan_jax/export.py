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
             Pad, ...), written with the `onnx` package and checked with ONNX Runtime.
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
8 and need not be multiples of 4: like `inference.translate_any_size`, sides are
reflection-padded at the bottom and right to multiples of 4 inside the artifact and cropped back.
Batch norm (norm='batch') normalizes with the statistics of the batch given, as the training
network does. Beside the artifact, `<output>.json` describes the contract, the source and the
tool versions. The exporters need `pip install -r requirements-export.txt`.
"""

import contextlib
import datetime
import importlib
import importlib.util
import json
import os
from pathlib import Path
import sys
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cyclegan_jax import cli
from cyclegan_jax import errors
from cyclegan_jax import inference
from cyclegan_jax import models

FLAGS = flags.FLAGS

FORMATS = ('stablehlo', 'onnx', 'tflite')
QUANTIZE = ('none', 'float16', 'int8')
DEFAULT_PLATFORMS = ('cpu', 'cuda', 'tpu')
MIN_SIDE = inference.MIN_SIDE  # Height and width of at least 8 pixels.
ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # Read by ONNX Runtime 1.14 and newer.
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


# --- The exported function ------------------------------------------------------------------------


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
  """Computes the generator's stride-2 transposed convs as `models.subpixel_conv_transpose`.

  The same products and sums, as a stride-1 conv and a depth-to-space reshape: TensorFlow's
  TFLite converter turns the input-dilated convolution that `nn.ConvTranspose` lowers to into
  wrong results (max error ~1 on a random layer), and fails at run time with dynamic sizes.
  """
  module = context.module
  if (context.method_name == '__call__' and isinstance(module, nn.ConvTranspose) and
      module.transpose_kernel and tuple(module.kernel_size) == (3, 3) and
      tuple(module.strides) == (2, 2) and
      tuple(map(tuple, module.padding)) == models.TRANSPOSED_PAD):
    (x,) = args
    y = models.subpixel_conv_transpose(x, module.get_variable('params', 'kernel'))
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


# --- StableHLO ------------------------------------------------------------------------------------


def export_stablehlo(module: models.ResnetGenerator,
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
  exported = jax.export.export(jax.jit(translate), platforms=tuple(platforms))(
      _input_spec(input_channels(params), input_shape))
  path.write_bytes(exported.serialize())
  return path


def load_stablehlo(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
  exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))
  call = jax.jit(exported.call)
  return lambda x: np.asarray(call(jnp.asarray(x, jnp.float32)))


# --- ONNX -----------------------------------------------------------------------------------------


class _OnnxGraph:
  """Nodes and initializers of one ONNX graph, with generated tensor names."""

  def __init__(self):
    import onnx  # pylint: disable=g-import-not-at-top
    self.onnx = onnx
    self.nodes, self.initializers = [], []
    self._count = 0

  def _name(self, prefix: str) -> str:
    self._count += 1
    return f'{prefix}_{self._count}'

  def const(self, value, dtype=np.float32, name: str | None = None) -> str:
    name = name or self._name('const')
    self.initializers.append(
        self.onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name=name))
    return name

  def op(self, op_type: str, *inputs: str, name: str | None = None, **attributes) -> str:
    output = self._name(name or op_type.lower())
    self.nodes.append(
        self.onnx.helper.make_node(op_type, list(inputs), [output], name=output, **attributes))
    return output


def _onnx_norm(graph: _OnnxGraph, x: str, norm: str, layer: dict[str, Any], channels: int,
               name: str) -> str:
  if norm == 'instance':  # Biased variance, eps 1e-5, no affine: models.instance_norm.
    return graph.op('InstanceNormalization', x, graph.const(np.ones(channels)),
                    graph.const(np.zeros(channels)), epsilon=models.NORM_EPS, name=name)
  if norm == 'batch':  # The current batch's statistics, as models.BatchStatsNorm.
    mean = graph.op('ReduceMean', x, axes=[0, 2, 3], keepdims=1)
    centered = graph.op('Sub', x, mean)
    var = graph.op('ReduceMean', graph.op('Mul', centered, centered), axes=[0, 2, 3], keepdims=1)
    inv_std = graph.op('Reciprocal',
                       graph.op('Sqrt', graph.op('Add', var, graph.const(models.NORM_EPS))))
    scale = np.asarray(layer['norm']['scale'], np.float32).reshape(1, -1, 1, 1)
    bias = np.asarray(layer['norm']['bias'], np.float32).reshape(1, -1, 1, 1)
    scaled = graph.op('Mul', centered, graph.op('Mul', inv_std, graph.const(scale)))
    return graph.op('Add', scaled, graph.const(bias), name=name)
  return x


def _onnx_reflect_pad(graph: _OnnxGraph, x: str, pad: int) -> str:
  pads = graph.const([0, 0, pad, pad, 0, 0, pad, pad], np.int64)
  return graph.op('Pad', x, pads, mode='reflect')


def _onnx_conv_layer(graph: _OnnxGraph, x: str, layer: dict[str, Any], name: str, *, stride: int,
                     pads: tuple[int, int, int, int], norm: str, relu: bool,
                     transpose: bool = False) -> str:
  """ConvNormAct in NCHW: the flax kernel (HWIO, or (kH, kW, out, in) for transposed convs, as
  PyTorch's ConvTranspose2d weight) becomes ONNX's OIHW (or IOHW for ConvTranspose)."""
  kernel = np.asarray(layer['conv']['kernel'], np.float32)
  inputs = [x, graph.const(kernel.transpose(3, 2, 0, 1), name=f'{name}/kernel')]
  if 'bias' in layer['conv']:
    inputs.append(graph.const(layer['conv']['bias'], name=f'{name}/bias'))
  size = list(kernel.shape[:2])
  if transpose:  # PyTorch's ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1).
    y = graph.op('ConvTranspose', *inputs, kernel_shape=size, strides=[stride, stride],
                 pads=list(pads), output_padding=[1, 1], name=f'{name}/conv')
    channels = kernel.shape[2]
  else:
    y = graph.op('Conv', *inputs, kernel_shape=size, strides=[stride, stride], pads=list(pads),
                 name=f'{name}/conv')
    channels = kernel.shape[3]
  y = _onnx_norm(graph, y, norm, layer, channels, f'{name}/norm')
  return graph.op('Relu', y, name=f'{name}/relu') if relu else y


def _check_generator_params(module: models.ResnetGenerator, params: dict[str, Any]) -> None:
  expected = {'stem', 'down_0', 'down_1', 'up_0', 'up_1', 'head'}
  expected |= {f'block_{i}' for i in range(module.num_blocks)}
  if set(params) != expected:
    raise errors.InvalidValueError(
        f'Parameters do not match a ResnetGenerator with {module.num_blocks} blocks: '
        f'got {sorted(params)}')
  if module.norm not in models.NORM_TYPES:
    raise errors.InvalidValueError(f'norm must be one of {models.NORM_TYPES}, got {module.norm!r}')


def onnx_model(module: models.ResnetGenerator,
               params: dict[str, Any],
               description: str = '',
               input_shape: InputShape = None):
  """The generator as an `onnx.ModelProto`: NHWC in and out, batch, height and width dynamic
  unless `input_shape` fixes them."""
  import onnx  # pylint: disable=g-import-not-at-top
  _check_generator_params(module, params)
  graph, norm = _OnnxGraph(), module.norm
  x = graph.op('Transpose', INPUT_NAME, perm=[0, 3, 1, 2], name='to_nchw')
  # Reflection padding at the bottom and right to multiples of 4 (cropped back at the end).
  size = graph.op('Slice', graph.op('Shape', x), graph.const([2], np.int64),
                  graph.const([4], np.int64), name='height_width')
  four = graph.const([inference.SIZE_MULTIPLE], np.int64)
  padded = graph.op('Mul', graph.op('Div', graph.op('Add', size, graph.const([3], np.int64)), four),
                    four)
  pads = graph.op('Concat', graph.const([0] * 6, np.int64), graph.op('Sub', padded, size), axis=0)
  x = graph.op('Pad', x, pads, mode='reflect', name='pad_to_multiple_of_4')

  x = _onnx_reflect_pad(graph, x, 3)
  x = _onnx_conv_layer(graph, x, params['stem'], 'stem', stride=1, pads=(0, 0, 0, 0), norm=norm,
                       relu=True)
  for i in range(2):
    x = _onnx_conv_layer(graph, x, params[f'down_{i}'], f'down_{i}', stride=2, pads=(1, 1, 1, 1),
                         norm=norm, relu=True)
  for i in range(module.num_blocks):
    block = params[f'block_{i}']
    y = _onnx_reflect_pad(graph, x, 1)
    y = _onnx_conv_layer(graph, y, block['conv_0'], f'block_{i}/conv_0', stride=1,
                         pads=(0, 0, 0, 0), norm=norm, relu=True)
    y = _onnx_reflect_pad(graph, y, 1)
    y = _onnx_conv_layer(graph, y, block['conv_1'], f'block_{i}/conv_1', stride=1,
                         pads=(0, 0, 0, 0), norm=norm, relu=False)
    x = graph.op('Add', x, y, name=f'block_{i}/add')
  for i in range(2):
    x = _onnx_conv_layer(graph, x, params[f'up_{i}'], f'up_{i}', stride=2, pads=(1, 1, 1, 1),
                         norm=norm, relu=True, transpose=True)
  x = _onnx_reflect_pad(graph, x, 3)
  x = _onnx_conv_layer(graph, x, params['head'], 'head', stride=1, pads=(0, 0, 0, 0), norm='none',
                       relu=False)
  x = graph.op('Tanh', x, name='tanh')
  x = graph.op('Slice', x, graph.const([0, 0], np.int64), size, graph.const([2, 3], np.int64),
               name='crop')
  graph.nodes.append(
      onnx.helper.make_node('Transpose', [x], [OUTPUT_NAME], name='to_nhwc', perm=[0, 2, 3, 1]))

  in_channels, out_channels = input_channels(params), module.output_nc
  dims = input_dims(input_shape)
  inputs = [
      onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, [*dims, in_channels])
  ]
  outputs = [
      onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT,
                                         [*dims, out_channels])
  ]
  onnx_graph = onnx.helper.make_graph(graph.nodes, 'cyclegan_generator', inputs, outputs,
                                      graph.initializers)
  model = onnx.helper.make_model(onnx_graph,
                                 opset_imports=[onnx.helper.make_opsetid('', ONNX_OPSET)],
                                 producer_name='cyclegan_jax.export',
                                 doc_string=description or 'CycleGAN ResnetGenerator')
  model.ir_version = ONNX_IR_VERSION
  onnx.helper.set_model_props(model, {'contract': _CONTRACT})
  onnx.checker.check_model(model, full_check=True)
  return model


def export_onnx(module: models.ResnetGenerator,
                params: dict[str, Any],
                path: str | Path,
                description: str = '',
                input_shape: InputShape = None,
                overwrite: bool = False) -> Path:
  """Writes the generator as an ONNX model (see `onnx_model`)."""
  path = check_output(path, overwrite)
  require_packages('onnx')
  path.write_bytes(onnx_model(module, params, description, input_shape).SerializeToString())
  return path


def load_onnx(path: str | Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
  import onnxruntime  # pylint: disable=g-import-not-at-top
  options = onnxruntime.SessionOptions()
  if threads:
    options.intra_op_num_threads = threads
  session = onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
  return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(x, np.float32)})[0]


# --- TFLite ---------------------------------------------------------------------------------------


def _import_tensorflow():
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Keep TensorFlow's start-up chatter out.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def tflite_model(module: models.ResnetGenerator,
                 params: dict[str, Any],
                 quantize: str = 'none',
                 input_shape: InputShape = None) -> bytes:
  """The generator as a TFLite flatbuffer (builtin ops), batch, height and width dynamic unless
  `input_shape` fixes them (a fixed size runs faster: see the README's Export section)."""
  check_format('tflite', quantize)
  tf = _import_tensorflow()
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  channels = input_channels(params)
  spec, constraints = _shape_spec(input_shape)
  translate = jax2tf.convert(translate_function(module, params, subpixel=True),
                             polymorphic_shapes=[f'{spec}, {channels}'],
                             polymorphic_constraints=constraints,
                             with_gradient=False,
                             native_serialization_platforms=('cpu',))
  signature = [d if isinstance(d, int) else None for d in input_dims(input_shape)]
  function = tf.function(
      translate,
      autograph=False,
      input_signature=[tf.TensorSpec([*signature, channels], tf.float32, INPUT_NAME)])
  converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()],
                                                              function)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if quantize != 'none':
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == 'float16':
    converter.target_spec.supported_types = [tf.float16]
  return converter.convert()


def export_tflite(module: models.ResnetGenerator,
                  params: dict[str, Any],
                  path: str | Path,
                  quantize: str = 'none',
                  input_shape: InputShape = None,
                  overwrite: bool = False) -> Path:
  """Writes the generator as a TFLite model: float32, float16 weights or dynamic-range int8."""
  check_format('tflite', quantize)
  path = check_output(path, overwrite)
  require_packages('tflite')
  path.write_bytes(tflite_model(module, params, quantize, input_shape))
  return path


def load_tflite(path: str | Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
  from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
  interpreter = litert.Interpreter(model_path=str(path), num_threads=threads)
  interpreter.allocate_tensors()
  input_index = interpreter.get_input_details()[0]['index']
  output_index = interpreter.get_output_details()[0]['index']
  allocated = [tuple(interpreter.get_input_details()[0]['shape'])]

  def run(x):
    x = np.asarray(x, np.float32)
    if x.shape != allocated[0]:
      interpreter.resize_tensor_input(input_index, x.shape, strict=False)
      interpreter.allocate_tensors()
      allocated[0] = x.shape
    interpreter.set_tensor(input_index, x)
    interpreter.invoke()
    return interpreter.get_tensor(output_index).copy()

  return run


# --- Any format -----------------------------------------------------------------------------------

_CONTRACT = (f'input "{INPUT_NAME}": float32 NHWC in [-1, 1], dynamic batch, height and width '
             f'(at least {MIN_SIDE}); output "{OUTPUT_NAME}": the translated float32 NHWC batch '
             'in [-1, 1] of the same batch, height and width')
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
  dims = input_dims(input_shape)
  runtimes = {
      'stablehlo': 'jax.export.deserialize(open(path, "rb").read()).call(x)',
      'onnx': f'onnxruntime.InferenceSession(path).run(["{OUTPUT_NAME}"], {{"{INPUT_NAME}": x}})',
      'tflite': 'ai_edge_litert.interpreter.Interpreter(path): resize_tensor_input(0, x.shape), '
                'allocate_tensors(), set_tensor, invoke, get_tensor',
  }
  description = {
      'format': fmt,
      'quantize': quantize,
      'file': path.name,
      'bytes': path.stat().st_size,
      'source': generator.description,
      'generator': {
          'architecture': f'resnet_{module.num_blocks}blocks',
          'ngf': module.ngf,
          'norm': module.norm,
          'params': models.count_params(generator.params),
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
      'min_height_width': MIN_SIDE,
      'contract': _CONTRACT if dims == list(DIM_NAMES) else
                  f'{_CONTRACT}; this file takes only [batch, height, width] = {dims}',
      'run_with': runtimes[fmt],
      'exported_with': _versions(fmt),
      'exported_at': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }
  if fmt == 'stablehlo':
    description['platforms'] = list(platforms)
  return description


def export(generator: inference.Generator,
           fmt: str,
           path: str | Path,
           quantize: str = 'none',
           overwrite: bool = False,
           platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
           input_shape: InputShape = None) -> Path:
  """Writes `generator` in `fmt` to `path` and its description to `<path>.json`."""
  check_format(fmt, quantize)
  input_dims(input_shape)
  path = check_output(path, overwrite)
  require_packages(fmt)
  if input_channels(generator.params) != generator.in_channels:
    raise errors.InvalidValueError(
        f'The generator takes {input_channels(generator.params)} channels, not '
        f'{generator.in_channels}')
  module, params = generator.module, generator.params
  if fmt == 'stablehlo':
    export_stablehlo(module, params, path, platforms, input_shape, overwrite=True)
  elif fmt == 'onnx':
    export_onnx(module, params, path, generator.description, input_shape, overwrite=True)
  else:
    export_tflite(module, params, path, quantize, input_shape, overwrite=True)
  description = describe(generator, fmt, quantize, path, platforms, input_shape)
  sidecar_path(path).write_text(json.dumps(description, indent=2) + '\n')
  return path


def main(argv):
  cli.no_extra_arguments(argv)
  if (FLAGS.workdir is None) == (FLAGS.torch_checkpoint is None):
    raise app.UsageError('Give exactly one of --workdir and --torch_checkpoint.')
  platforms = tuple(p.strip() for p in FLAGS.platforms.split(',') if p.strip())
  input_shape = None
  if FLAGS.input_shape:
    try:
      input_shape = tuple(int(size) for size in FLAGS.input_shape.split(','))
    except ValueError:
      raise errors.InvalidValueError(f'--input_shape={FLAGS.input_shape}: expected '
                                     'BATCH,HEIGHT,WIDTH integers, -1 for dynamic') from None
    input_dims(input_shape)
  check_format(FLAGS.format, FLAGS.quantize)
  check_output(FLAGS.output, FLAGS.overwrite)
  require_packages(FLAGS.format)
  generator = inference.load_generator(FLAGS.workdir,
                                       FLAGS.torch_checkpoint,
                                       FLAGS.direction,
                                       FLAGS.step,
                                       fast_convs=False)
  logging.info('Exporting %s as %s.', generator.description, FLAGS.format)
  path = export(generator, FLAGS.format, FLAGS.output, FLAGS.quantize, FLAGS.overwrite, platforms,
                input_shape)
  print(f'export: format={FLAGS.format} quantize={FLAGS.quantize} bytes={path.stat().st_size} '
        f'output={path} description={sidecar_path(path)}',
        flush=True)


def define_flags():
  """Command-line flags (defined only when run as a program, so modules import together)."""
  flags.DEFINE_string('workdir', None, 'A training run (or converted) workdir to take G or F from.')
  flags.DEFINE_string('torch_checkpoint', None,
                      'An official PyTorch generator .pth (e.g. horse2zebra.pth), instead of '
                      '--workdir.')
  flags.DEFINE_enum('direction', 'AtoB', list(inference.DIRECTIONS),
                    'AtoB exports G (domain A to B), BtoA exports F. Ignored with '
                    '--torch_checkpoint.')
  flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: the latest).')
  flags.DEFINE_enum('format', None, list(FORMATS),
                    'stablehlo (jax.export), onnx (ONNX Runtime) or tflite (LiteRT).')
  flags.DEFINE_enum('quantize', 'none', list(QUANTIZE),
                    'With --format=tflite: none (float32), float16 (float16 weights) or int8 '
                    '(dynamic-range: int8 weights, float32 input and output).')
  flags.DEFINE_string('output', None, 'The file to write; its description goes to OUTPUT.json.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing output file.')
  flags.DEFINE_string('input_shape', None,
                      'BATCH,HEIGHT,WIDTH to fix (-1 keeps one dynamic), e.g. 1,256,256 for a '
                      'faster fixed-size TFLite model. Default: all dynamic.')
  flags.DEFINE_string('platforms', ','.join(DEFAULT_PLATFORMS),
                      'With --format=stablehlo: the comma-separated platforms to lower for.')
  flags.mark_flags_as_required(['format', 'output'])


if __name__ == '__main__':
  define_flags()
  cli.run(main)
