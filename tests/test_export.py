"""Exported generators (StableHLO, ONNX, TFLite float32 / float16 / int8) run with their own
runtimes and match the JAX generator; the export CLI end to end on an official `.pth`."""

import functools
import importlib.util
import json
import os
import pickle
from pathlib import Path
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyclegan_jax import export
from cyclegan_jax import inference
from cyclegan_jax import models
from cyclegan_jax.models import layout

ROOT = Path(__file__).resolve().parents[1]
EXPORT_PACKAGES = ('flatbuffers', 'onnx', 'onnxruntime', 'tensorflow', 'ai_edge_litert')
_MISSING = [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]
if _MISSING and os.environ.get('CI') != 'true':  # CI installs them: there, a missing one fails.
  pytest.skip(f'the exporters\' packages are not installed ({", ".join(_MISSING)}): '
              'pip install -r requirements.txt -r requirements-export.txt',
              allow_module_level=True)
TORCH_PTH = (ROOT.parent / 'shared' / 'reference' / 'torch_parity' /
             'G_resnet_6blocks_ngf8_32_randbias_legacy.pth')

FLOAT32_TOLERANCE = 1e-4  # Max |exported - JAX| in float32.
# Quantized TFLite, max / mean |exported - JAX| on outputs in [-1, 1]: the bounds stated in the
# README's Export section, about twice the largest error measured on these inputs over three
# weight seeds (float16 4.5e-3 / 4.4e-4, int8 0.16 / 0.016; the random 11.4M-parameter
# resnet_9blocks at 256 px: float16 4.2e-3 / 5.6e-4, int8 0.20 / 0.026).
QUANTIZED_TOLERANCE = {'float16': (1e-2, 1e-3), 'int8': (0.3, 0.03)}
# Two batch sizes; 37 x 26 is not a multiple of 4 (padded and cropped inside the artifact).
SHAPES = ((2, 32, 32, 3), (1, 37, 26, 3))


def random_params(module, input_shape, seed):
  """Random weights (std 0.1) and biases (std 0.2) in the module's parameter tree, made without
  running the module (eager `init` compiles every op: seconds)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(input_shape))['params']
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    std = 0.2 if jax.tree_util.keystr(path).endswith("'bias']") else 0.1
    return jnp.asarray(rng.normal(0, std, shape.shape).astype(np.float32))

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope='module')
def generator():
  """A tiny generator with random weights and non-trivial biases, plain convs."""
  module = models.ResnetGenerator(output_nc=3, ngf=8, num_blocks=1, norm='instance',
                                  fast_convs=False)
  return module, random_params(module, (1, 32, 32, 3), seed=0)


@pytest.fixture(scope='module')
def batches(generator):
  """(input, JAX output) pairs, one per shape in SHAPES."""
  module, params = generator
  translate = jax.jit(functools.partial(inference.apply_any_size, module))
  rng = np.random.default_rng(0)
  inputs = [rng.uniform(-1, 1, shape).astype(np.float32) for shape in SHAPES]
  return [(x, np.asarray(translate(params, x))) for x in inputs]


def max_and_mean_error(run, pairs):
  errors = []
  for x, expected in pairs:
    y = run(x)
    assert y.shape == expected.shape and y.dtype == np.float32
    errors.append(np.abs(y - expected))
  return max(float(e.max()) for e in errors), max(float(e.mean()) for e in errors)


def test_stablehlo_runs_without_the_model_code(generator, batches, tmp_path):
  module, params = generator
  path = export.write(module, params, 'stablehlo', tmp_path / 'g.stablehlo')
  exported = jax.export.deserialize(bytearray(path.read_bytes()))
  batch, height, width, channels = exported.in_avals[0].shape
  assert [str(d) for d in (batch, height, width)] == ['batch', 'height', 'width']
  assert channels == 3 and exported.in_avals[0].dtype == jnp.float32
  assert set(exported.platforms) == set(export.DEFAULT_PLATFORMS)
  max_error, _ = max_and_mean_error(lambda x: np.asarray(exported.call(x)), batches)
  assert max_error < FLOAT32_TOLERANCE
  with pytest.raises(Exception):  # Below the 8-pixel minimum.
    exported.call(np.zeros((1, 4, 16, 3), np.float32))


def test_onnx_matches_jax(generator, batches, tmp_path):
  import onnx  # pylint: disable=g-import-not-at-top
  module, params = generator
  path = export.write(module, params, 'onnx', tmp_path / 'g.onnx', description='tiny test')
  model = onnx.load(str(path))
  dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
  assert dims == ['batch', 'height', 'width', 3]
  assert model.doc_string == 'tiny test'
  assert {'Conv', 'ConvTranspose', 'InstanceNormalization'} <= {n.op_type for n in model.graph.node}
  max_error, _ = max_and_mean_error(export.load_artifact(path), batches)
  assert max_error < FLOAT32_TOLERANCE


def test_fixed_input_shape(generator, batches, tmp_path):
  """--input_shape fixes some or all of batch, height and width."""
  module, params = generator
  (x, expected), _ = batches
  fixed = export.write(module,
                       params,
                       'stablehlo',
                       tmp_path / 'f.stablehlo',
                       input_shape=x.shape[:3])
  exported = jax.export.deserialize(bytearray(fixed.read_bytes()))
  assert exported.in_avals[0].shape == x.shape
  np.testing.assert_allclose(exported.call(x), expected, atol=FLOAT32_TOLERANCE)
  partly = export.write(module, params, 'onnx', tmp_path / 'f.onnx', input_shape=(-1, 32, 32))
  np.testing.assert_allclose(export.load_artifact(partly)(x), expected, atol=FLOAT32_TOLERANCE)
  with pytest.raises(ValueError, match='height 4 is too small'):
    export.input_dims((1, 4, 16), min_side=8)


def test_batch_norm_artifacts_translate_each_image_as_alone(tmp_path):
  """As the official test.py (batch size 1, train-mode batch norm): each image of a batch gets
  the output the network gives it alone."""
  module = models.ResnetGenerator(output_nc=1, ngf=4, num_blocks=1, norm='batch', fast_convs=False)
  params = random_params(module, (1, 16, 16, 2), seed=2)
  x = np.random.default_rng(1).uniform(-1, 1, (3, 20, 16, 2)).astype(np.float32)
  alone = np.concatenate([jax.jit(module.apply)({'params': params}, x[i:i + 1]) for i in range(3)])
  for fmt in ('onnx', 'stablehlo'):
    path = export.write(module,
                        params,
                        fmt,
                        tmp_path / f'b{export.SUFFIXES[fmt]}',
                        platforms=('cpu',))
    np.testing.assert_allclose(export.load_artifact(path)(x), alone, atol=FLOAT32_TOLERANCE)


# TFLite conversion imports TensorFlow, which other tests check stays out of the test process
# (the data pipeline reads TFDS without it): convert in a child process.
_CONVERT_TFLITE = """
import pickle, sys
from cyclegan_jax import export, models
for kind, fields, params, variants in pickle.loads(open(sys.argv[1], 'rb').read()):
  module = getattr(models, kind)(**fields)
  for path, quantize, input_shape in variants:
    export.write(module, params, 'tflite', path, quantize=quantize, input_shape=input_shape)
"""


@pytest.fixture(scope='module')
def unet():
  """A small U-Net (5 levels, batch norm, as pix2pix's) with random weights, plain convs."""
  module = models.UnetGenerator(output_nc=3, ngf=4, num_downs=5, norm='batch', fast_convs=False)
  return module, random_params(module, (1, 32, 32, 3), seed=5)


@pytest.fixture(scope='module')
def tflite_models(generator, unet, tmp_path_factory):
  """One conversion per variant (each takes seconds): name -> path."""
  folder = tmp_path_factory.mktemp('tflite')
  variants = {quantize: (quantize, None) for quantize in export.QUANTIZE}
  variants['fixed'] = ('none', SHAPES[0][:3])
  paths = {name: folder / f'g_{name}.tflite' for name in variants}
  paths['unet'] = folder / 'unet.tflite'
  jobs = []
  for (module, params), named in ((generator, variants), (unet, {'unet': ('none', None)})):
    fields = {field: getattr(module, field) for field in ('output_nc', 'ngf', 'norm', 'fast_convs')}
    fields.update(
        {f: getattr(module, f) for f in ('num_blocks', 'num_downs') if hasattr(module, f)})
    jobs.append((type(module).__name__, fields, jax.tree.map(np.asarray, params),
                 [(str(paths[name]), *variant) for name, variant in named.items()]))
  job = folder / 'job.pkl'
  job.write_bytes(pickle.dumps(jobs))
  result = subprocess.run([sys.executable, '-c', _CONVERT_TFLITE, str(job)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'tensorflow' not in sys.modules
  return paths


def test_tflite_float32_matches_jax(tflite_models, batches):
  run = export.load_artifact(tflite_models['none'])
  max_error, _ = max_and_mean_error(run, batches)
  assert max_error < FLOAT32_TOLERANCE
  # Dynamic batch, height and width; the same interpreter after resizing back.
  from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
  signature = litert.Interpreter(str(tflite_models['none'])).get_input_details()[0]
  assert list(signature['shape_signature']) == [-1, -1, -1, 3]
  assert max_and_mean_error(run, batches[:1])[0] < FLOAT32_TOLERANCE


def test_tflite_fixed_size(tflite_models, batches):
  from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
  signature = litert.Interpreter(str(tflite_models['fixed'])).get_input_details()[0]
  assert list(signature['shape_signature']) == list(SHAPES[0])
  assert max_and_mean_error(export.load_artifact(tflite_models['fixed']),
                            batches[:1])[0] < FLOAT32_TOLERANCE


@pytest.mark.parametrize('quantize', ['float16', 'int8'])
def test_tflite_quantized_within_measured_bounds(tflite_models, batches, quantize):
  from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
  weight_dtype = {'float16': np.float16, 'int8': np.int8}[quantize]
  tensors = litert.Interpreter(str(tflite_models[quantize])).get_tensor_details()
  assert any(t['dtype'] == weight_dtype and len(t['shape']) == 4 for t in tensors)  # Conv weights.
  assert tflite_models[quantize].stat().st_size < tflite_models['none'].stat().st_size
  max_error, mean_error = max_and_mean_error(export.load_artifact(tflite_models[quantize]), batches)
  max_bound, mean_bound = QUANTIZED_TOLERANCE[quantize]
  assert max_error < max_bound and mean_error < mean_bound, (max_error, mean_error)


def test_errors(generator, tmp_path, monkeypatch):
  module, params = generator
  with pytest.raises(ValueError, match="Unknown format 'savedmodel'"):
    export.check_format('savedmodel')
  with pytest.raises(ValueError, match='--quantize=int8 is for --format=tflite only'):
    export.check_format('onnx', 'int8')
  with pytest.raises(FileNotFoundError, match='output folder .*missing does not exist'):
    export.write(module, params, 'onnx', tmp_path / 'missing' / 'g.onnx')
  existing = tmp_path / 'g.onnx'
  existing.write_bytes(b'keep')
  with pytest.raises(FileExistsError, match='pass --overwrite'):
    export.write(module, params, 'onnx', existing)
  assert existing.read_bytes() == b'keep'
  # A stale description beside a new output needs --overwrite too.
  export.sidecar_path(tmp_path / 'new.onnx').write_text('{}')
  with pytest.raises(FileExistsError, match=r'new.onnx.json exists; pass --overwrite'):
    export.export(inference.Generator(module, params, 3, 3, 'g'), 'onnx', tmp_path / 'new.onnx')
  # A run's own files are never replaced, not even with --overwrite: the output, or its
  # description <output>.json, as the run's config.json.
  run = tmp_path / 'run'
  run.mkdir()
  for name in ('config.json', 'metrics.jsonl'):
    (run / name).write_text('keep')
  for output in (run / 'config', run / 'config.json', run / 'metrics.jsonl'):
    with pytest.raises(FileExistsError, match='a file of the run in .*run; give another file'):
      export.export(inference.Generator(module, params, 3, 3, 'g'), 'onnx', output,
                    overwrite=True)
  assert [(run / name).read_text() for name in ('config.json', 'metrics.jsonl')] == ['keep'] * 2
  assert sorted(path.name for path in run.iterdir()) == ['config.json', 'metrics.jsonl']
  monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # As if not installed.
  with pytest.raises(export.MissingPackageError,
                     match=r'needs onnxruntime.*pip install -r requirements-export.txt'):
    export.write(module, params, 'onnx', existing, overwrite=True)


def run_cli(*args):
  return subprocess.run([sys.executable, '-m', 'cyclegan_jax.export', *map(str, args)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.skipif(not TORCH_PTH.is_file(), reason='shared reference files not present')
def test_cli_exports_an_official_checkpoint(tmp_path):
  output = tmp_path / 'h2z.onnx'
  result = run_cli(f'--torch_checkpoint={TORCH_PTH}', '--format=onnx', f'--output={output}')
  assert result.returncode == 0, result.stderr
  assert f'output={output}' in result.stdout
  description = json.loads(export.sidecar_path(output).read_text())
  assert description['format'] == 'onnx' and description['bytes'] == output.stat().st_size
  assert description['dynamic_dims'] == ['batch', 'height', 'width']
  assert description['generator']['architecture'] == 'resnet_6blocks'
  assert description['generator']['ngf'] == 8
  generator = inference.load_generator(torch_checkpoint=TORCH_PTH)
  x = np.random.default_rng(2).uniform(-1, 1, (2, 36, 30, generator.in_channels))
  np.testing.assert_allclose(export.load_artifact(output)(x),
                             inference.translate_any_size(generator, x),
                             atol=FLOAT32_TOLERANCE)

  again = run_cli(f'--torch_checkpoint={TORCH_PTH}', '--format=onnx', f'--output={output}')
  assert again.returncode == 2 and 'pass --overwrite' in again.stderr
  unknown = run_cli(f'--torch_checkpoint={TORCH_PTH}', '--format=pb', f'--output={output}')
  assert unknown.returncode == 2 and '<stablehlo|onnx|tflite>' in unknown.stderr


def test_a_new_architecture_exports_from_its_layout_alone(tmp_path):
  """A toy generator written only as a layout (a 4x4 transposed conv, leaky ReLU, batch norm, a
  residual block: nothing the ResNet has in this form) exports to ONNX and StableHLO, and the
  artifacts match the Flax network: the exporters walk the layout, not one architecture."""
  layers = (
      layout.Conv('stem', 6, 3, reflect=1, norm='instance', activation='relu'),
      layout.Conv('down',
                  8,
                  4,
                  stride=2,
                  padding=1,
                  norm='batch',
                  bias=False,
                  activation='leaky_relu'),
      layout.Residual('block', (
          layout.Conv('a', 8, 3, reflect=1, norm='instance', activation='relu'),
          layout.Conv('b', 8, 3, reflect=1, norm='instance'),
      )),
      layout.Conv('up', 6, 4, stride=2, padding=1, transpose=True, activation='relu'),
      layout.Conv('head', 3, 3, reflect=1, activation='tanh'),
  )
  module = layout.LayoutNetwork(layers=layers, fast_convs=False, architecture='toy')
  generator = inference.Generator(module, random_params(module, (1, 16, 16, 3), seed=3), 3, 3,
                                  'a toy layout')
  assert generator.min_side == 4  # Reflection by 1 after one downsampling needs 2 x 2 maps.
  x = np.random.default_rng(4).uniform(-1, 1, (2, 21, 18, 3)).astype(np.float32)
  expected = inference.translate_any_size(generator, x)
  for fmt in ('onnx', 'stablehlo'):
    path = export.export(generator,
                         fmt,
                         tmp_path / f'toy{export.SUFFIXES[fmt]}',
                         platforms=('cpu',))
    np.testing.assert_allclose(export.load_artifact(path)(x), expected, atol=FLOAT32_TOLERANCE)
    described = json.loads(export.sidecar_path(path).read_text())
    assert described['generator']['architecture'] == 'toy' and described['min_height_width'] == 4


def test_unet_exports_match_jax(unet, tflite_models, tmp_path):
  """A U-Net (skip concatenations, 4x4 transposed convs, batch norm) in every format: the same
  function as the JAX generator, any batch and size from its minimum (32) on."""
  module, params = unet
  generator = inference.Generator(module, params, 3, 3, 'a random unet_32')
  rng = np.random.default_rng(6)
  pairs = []
  for shape in ((2, 32, 32, 3), (1, 45, 37, 3)):
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    pairs.append((x, inference.translate_any_size(generator, x)))
  for fmt in ('onnx', 'stablehlo'):
    path = export.export(generator,
                         fmt,
                         tmp_path / f'unet{export.SUFFIXES[fmt]}',
                         platforms=('cpu',))
    assert max_and_mean_error(export.load_artifact(path), pairs)[0] < FLOAT32_TOLERANCE, fmt
    described = json.loads(export.sidecar_path(path).read_text())
    assert described['generator']['architecture'] == 'unet_32'
    assert described['min_height_width'] == 32
  assert max_and_mean_error(export.load_artifact(tflite_models['unet']),
                            pairs)[0] < FLOAT32_TOLERANCE
