"""ONNX: an opset-17 graph of standard ops written with the `onnx` package, run by ONNX Runtime."""

from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import numpy as np

from cyclegan_jax import errors
from cyclegan_jax.export.common import contract
from cyclegan_jax.export.common import input_channels
from cyclegan_jax.export.common import input_dims
from cyclegan_jax.export.common import INPUT_NAME
from cyclegan_jax.export.common import InputShape
from cyclegan_jax.export.common import OUTPUT_NAME
from cyclegan_jax.models import layers
from cyclegan_jax.models import layout as layout_lib

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


def _onnx_norm(graph: _OnnxGraph, x: str, norm: str, params: dict[str, Any], channels: int,
               name: str) -> str:
  """Instance norm (biased variance, eps 1e-5, no affine: layers.instance_norm), or batch norm
  with each image's own statistics, as the official test.py at batch size 1 (the generator in
  test mode, `models.for_test`): instance normalisation with batch norm's scale and bias; or, for
  params with running statistics (eval mode), batch normalisation with them."""
  if norm == 'none':
    return x
  if norm == 'batch' and 'mean' in params['norm']:  # Eval mode: the running statistics.
    norm_params = params['norm']
    return graph.op('BatchNormalization',
                    x,
                    *(graph.const(norm_params[k]) for k in ('scale', 'bias', 'mean', 'var')),
                    epsilon=layers.NORM_EPS,
                    name=name)
  scale, bias = np.ones(channels), np.zeros(channels)
  if norm == 'batch':
    scale, bias = params['norm']['scale'], params['norm']['bias']
  return graph.op('InstanceNormalization',
                  x,
                  graph.const(scale),
                  graph.const(bias),
                  epsilon=layers.NORM_EPS,
                  name=name)


def _onnx_activation(graph: _OnnxGraph, x: str, activation: str | None, name: str) -> str:
  if activation == 'relu':
    return graph.op('Relu', x, name=f'{name}/relu')
  if activation == 'leaky_relu':
    return graph.op('LeakyRelu', x, alpha=0.2, name=f'{name}/leaky_relu')
  if activation == 'tanh':
    return graph.op('Tanh', x, name=f'{name}/tanh')
  return x


def _onnx_reflect_pad(graph: _OnnxGraph, x: str, pad: int) -> str:
  pads = graph.const([0, 0, pad, pad, 0, 0, pad, pad], np.int64)
  return graph.op('Pad', x, pads, mode='reflect')


def _onnx_conv(graph: _OnnxGraph, x: str, conv: layout_lib.Conv, params: dict[str, Any],
               name: str) -> str:
  """One layout `Conv` in NCHW: the flax kernel (HWIO, or (kH, kW, out, in) for transposed convs,
  as PyTorch's ConvTranspose2d weight) becomes ONNX's OIHW (or IOHW for ConvTranspose)."""
  x = _onnx_activation(graph, x, conv.pre_activation, f'{name}/pre')
  if conv.reflect:
    x = _onnx_reflect_pad(graph, x, conv.reflect)
  kernel = np.asarray(params['conv']['kernel'], np.float32)
  inputs = [x, graph.const(kernel.transpose(3, 2, 0, 1), name=f'{name}/kernel')]
  if 'bias' in params['conv']:
    inputs.append(graph.const(params['conv']['bias'], name=f'{name}/bias'))
  attributes = dict(kernel_shape=[conv.kernel] * 2,
                    strides=[conv.stride] * 2,
                    pads=[conv.padding] * 4)
  if conv.transpose:
    y = graph.op('ConvTranspose',
                 *inputs,
                 output_padding=[conv.output_padding] * 2,
                 name=f'{name}/conv',
                 **attributes)
  else:
    y = graph.op('Conv', *inputs, name=f'{name}/conv', **attributes)
  y = _onnx_norm(graph, y, conv.norm, params, conv.features, f'{name}/norm')
  return _onnx_activation(graph, y, conv.activation, name)


def _onnx_layers(graph: _OnnxGraph,
                 x: str,
                 layers: layout_lib.Layout,
                 params: dict[str, Any],
                 prefix: str = '') -> str:
  """The layout's layers, in order, on NCHW `x`. Dropout is the identity: artifacts are
  deterministic, as test.py --eval."""
  for layer in layers:
    name = prefix + layer.name
    if isinstance(layer, layout_lib.Residual):
      y = _onnx_layers(graph, x, layer.body, params[layer.name], name + '/')
      x = graph.op('Add', x, y, name=f'{name}/add')
    elif isinstance(layer, layout_lib.Skip):
      y = _onnx_layers(graph, x, layer.body, params[layer.name], name + '/')
      x = graph.op('Concat', x, y, axis=1, name=f'{name}/concat')
    elif isinstance(layer, layout_lib.Conv):
      x = _onnx_conv(graph, x, layer, params[layer.name], name)
  return x


def _check_params(layers: layout_lib.Layout, params: dict[str, Any]) -> None:
  expected = {layer.name for layer in layers if layout_lib.has_parameters(layer)}
  if set(params) != expected:
    raise errors.InvalidValueError(f'The parameters ({", ".join(sorted(params))}) do not match the '
                                   f'network\'s layers ({", ".join(sorted(expected))})')


def onnx_model(module: nn.Module,
               params: dict[str, Any],
               description: str = '',
               input_shape: InputShape = None):
  """The generator as an `onnx.ModelProto` (walking its layout): NHWC in and out, batch, height and
  width dynamic unless `input_shape` fixes them."""
  import onnx  # pylint: disable=g-import-not-at-top
  in_channels = input_channels(module, params)
  layers = module.layout(in_channels)
  _check_params(layers, params)
  smallest = layout_lib.min_side(layers)
  graph = _OnnxGraph()
  x = graph.op('Transpose', INPUT_NAME, perm=[0, 3, 1, 2], name='to_nchw')
  # Reflection padding at the bottom and right to the multiples the network needs (cropped back
  # at the end), as inference.pad_to_multiple.
  size = graph.op('Slice', graph.op('Shape', x), graph.const([2], np.int64),
                  graph.const([4], np.int64), name='height_width')
  multiple = layout_lib.size_multiple(layers)
  factor = graph.const([multiple], np.int64)
  rounded_up = graph.op('Add', size, graph.const([multiple - 1], np.int64))
  padded = graph.op('Mul', graph.op('Div', rounded_up, factor), factor)
  pads = graph.op('Concat', graph.const([0] * 6, np.int64), graph.op('Sub', padded, size), axis=0)
  x = graph.op('Pad', x, pads, mode='reflect', name='pad_to_multiple')
  x = _onnx_layers(graph, x, layers, params)
  x = graph.op('Slice', x, graph.const([0, 0], np.int64), size, graph.const([2, 3], np.int64),
               name='crop')
  graph.nodes.append(
      onnx.helper.make_node('Transpose', [x], [OUTPUT_NAME], name='to_nhwc', perm=[0, 2, 3, 1]))

  out_channels = next(conv for _, conv in reversed(list(layout_lib.walk(layers)))).features
  dims = input_dims(input_shape, smallest)
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
                                 doc_string=description or 'CycleGAN generator')
  model.ir_version = ONNX_IR_VERSION
  onnx.helper.set_model_props(model, {'contract': contract(smallest)})
  onnx.checker.check_model(model, full_check=True)
  return model


def load_onnx(path: str | Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
  import onnxruntime  # pylint: disable=g-import-not-at-top
  options = onnxruntime.SessionOptions()
  if threads:
    options.intra_op_num_threads = threads
  session = onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
  return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(x, np.float32)})[0]
