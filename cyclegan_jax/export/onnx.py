"""ONNX: an opset-17 graph of standard ops written with the `onnx` package, run by ONNX Runtime."""

from pathlib import Path
from typing import Any, Callable

import numpy as np

from cyclegan_jax import errors
from cyclegan_jax import inference
from cyclegan_jax import models
from cyclegan_jax.export.common import _CONTRACT
from cyclegan_jax.export.common import check_output
from cyclegan_jax.export.common import input_channels
from cyclegan_jax.export.common import input_dims
from cyclegan_jax.export.common import INPUT_NAME
from cyclegan_jax.export.common import InputShape
from cyclegan_jax.export.common import OUTPUT_NAME
from cyclegan_jax.export.common import require_packages
from cyclegan_jax.models import layers

ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # Read by ONNX Runtime 1.14 and newer.


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
  if norm == 'instance':  # Biased variance, eps 1e-5, no affine: layers.instance_norm.
    return graph.op('InstanceNormalization',
                    x,
                    graph.const(np.ones(channels)),
                    graph.const(np.zeros(channels)),
                    epsilon=layers.NORM_EPS,
                    name=name)
  if norm == 'batch':  # The current batch's statistics, as layers.BatchStatsNorm.
    mean = graph.op('ReduceMean', x, axes=[0, 2, 3], keepdims=1)
    centered = graph.op('Sub', x, mean)
    var = graph.op('ReduceMean', graph.op('Mul', centered, centered), axes=[0, 2, 3], keepdims=1)
    inv_std = graph.op('Reciprocal',
                       graph.op('Sqrt', graph.op('Add', var, graph.const(layers.NORM_EPS))))
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
  if module.norm not in layers.NORM_TYPES:
    raise errors.InvalidValueError(f'norm must be one of {layers.NORM_TYPES}, got {module.norm!r}')


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
