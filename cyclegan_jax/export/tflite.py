"""TFLite: jax2tf and TensorFlow's converter (builtin ops only), run with the LiteRT interpreter."""

import os
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import numpy as np

from cyclegan_jax.export.common import _shape_spec
from cyclegan_jax.export.common import check_format
from cyclegan_jax.export.common import input_channels
from cyclegan_jax.export.common import input_dims
from cyclegan_jax.export.common import INPUT_NAME
from cyclegan_jax.export.common import InputShape
from cyclegan_jax.export.common import min_side
from cyclegan_jax.export.common import translate_function

def _import_tensorflow():
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Keep TensorFlow's start-up chatter out.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def tflite_model(module: nn.Module,
                 params: dict[str, Any],
                 quantize: str = 'none',
                 input_shape: InputShape = None) -> bytes:
  """The generator as a TFLite flatbuffer (builtin ops), batch, height and width dynamic unless
  `input_shape` fixes them (a fixed size runs faster: see the README's Export section)."""
  check_format('tflite', quantize)
  tf = _import_tensorflow()
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  channels, smallest = input_channels(module, params), min_side(module, params)
  spec, constraints = _shape_spec(input_shape, smallest)
  translate = jax2tf.convert(translate_function(module, params, subpixel=True),
                             polymorphic_shapes=[f'{spec}, {channels}'],
                             polymorphic_constraints=constraints,
                             with_gradient=False,
                             native_serialization_platforms=('cpu',))
  signature = [d if isinstance(d, int) else None for d in input_dims(input_shape, smallest)]
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
