"""File size and CPU latency of each export format, next to JAX's own latency.

    python -m experiments.benchmark_export                      # resnet_9blocks, ngf 64, 256 px
    python -m experiments.benchmark_export --num_blocks=6 --size=128 --runs=5

Builds the paper-size generator with random weights (the official init: N(0, 0.02) kernels),
exports it in every format (`cyclegan_jax.export`: stablehlo, onnx, tflite float32 / float16 /
int8, with dynamic batch, height and width, and the TFLite ones also with the input size fixed)
to --output_dir (default: a temporary folder), and times G(x) on one random batch with each
artifact's own runtime (JAX for StableHLO, ONNX Runtime, the LiteRT interpreter, each with
--threads threads where it takes a count) and with JAX itself (the jitted `module.apply`, with
the default fast convolutions and with the plain ones that the exporters trace). Latency is the
median of --runs calls after --warmup calls; the error is max / mean |artifact - JAX| on that
batch. Prints a markdown table.
"""

import os
from pathlib import Path
import statistics
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from cyclegan_jax import export
from cyclegan_jax import inference
from cyclegan_jax import models

FLAGS = flags.FLAGS
flags.DEFINE_integer('num_blocks', 9, 'Residual blocks of the generator.')
flags.DEFINE_integer('ngf', 64, 'Generator filters in the first layer.')
flags.DEFINE_integer('size', 256, 'Input height and width.')
flags.DEFINE_integer('batch', 1, 'Batch size.')
flags.DEFINE_integer('runs', 10, 'Timed calls per runtime.')
flags.DEFINE_integer('warmup', 3, 'Untimed calls first.')
flags.DEFINE_integer('threads', os.cpu_count(), 'Threads for ONNX Runtime and LiteRT.')
flags.DEFINE_string('output_dir', None, 'Where to keep the artifacts (default: a temporary one).')

# (format, quantize, fixed input size): dynamic batch, height and width unless fixed.
VARIANTS = (('stablehlo', 'none', False), ('onnx', 'none', False), ('tflite', 'none', False),
            ('tflite', 'float16', False), ('tflite', 'int8', False), ('tflite', 'none', True),
            ('tflite', 'float16', True), ('tflite', 'int8', True))


def median_seconds(call, x, runs: int, warmup: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(call(x))
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(call(x))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def run(output_dir: Path) -> list[dict]:
  module = models.ResnetGenerator(output_nc=3, ngf=FLAGS.ngf, num_blocks=FLAGS.num_blocks,
                                  norm='instance', fast_convs=False)
  shape = (FLAGS.batch, FLAGS.size, FLAGS.size, 3)
  params = jax.jit(module.init)(jax.random.key(0), jnp.zeros(shape))['params']
  generator = inference.Generator(module, params, 3, 3, f'random resnet_{FLAGS.num_blocks}blocks')
  x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
  rows = []
  expected = None
  for name, fast_convs in (('JAX jit, fast_convs=True (default)', True),
                           ('JAX jit, fast_convs=False (as exported)', False)):
    apply = jax.jit(module.clone(fast_convs=fast_convs).apply)
    call = lambda batch, apply=apply: apply({'params': params}, batch)
    start = time.perf_counter()
    y = np.asarray(call(x))
    compile_s = time.perf_counter() - start
    expected = y if expected is None else expected
    rows.append({
        'name': name,
        'bytes': None,
        'export_s': None,
        'first_call_s': compile_s,
        'latency_s': median_seconds(call, x, FLAGS.runs, FLAGS.warmup),
        'errors': (float(np.abs(y - expected).max()), float(np.abs(y - expected).mean())),
    })
    print(rows[-1], flush=True)
  for fmt, quantize, fixed in VARIANTS:
    size = 'fixed' if fixed else 'dynamic'
    path = output_dir / f'resnet_{FLAGS.num_blocks}blocks_{quantize}_{size}{export.SUFFIXES[fmt]}'
    start = time.perf_counter()
    export.export(generator, fmt, path, quantize, overwrite=True,
                  input_shape=shape[:3] if fixed else None)
    export_s = time.perf_counter() - start
    call = export.load_artifact(path, fmt, FLAGS.threads)
    start = time.perf_counter()
    y = np.asarray(call(x))
    first_call_s = time.perf_counter() - start
    error = np.abs(y - expected)
    rows.append({
        'name': f'{fmt}' + (f' {quantize}' if fmt == 'tflite' else '') +
                (f', fixed {"x".join(map(str, shape))}' if fixed else ', dynamic'),
        'bytes': path.stat().st_size,
        'export_s': export_s,
        'first_call_s': first_call_s,
        'latency_s': median_seconds(call, x, FLAGS.runs, FLAGS.warmup),
        'errors': (float(error.max()), float(error.mean())),
    })
    print(rows[-1], flush=True)
  return rows


def main(argv):
  del argv
  load = os.getloadavg()[0]
  if FLAGS.output_dir:
    Path(FLAGS.output_dir).mkdir(parents=True, exist_ok=True)
    rows = run(Path(FLAGS.output_dir))
  else:
    with tempfile.TemporaryDirectory() as folder:
      rows = run(Path(folder))
  module = models.ResnetGenerator(ngf=FLAGS.ngf, num_blocks=FLAGS.num_blocks)
  shape = (FLAGS.batch, FLAGS.size, FLAGS.size, 3)
  count = models.count_params(jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(shape)))
  print(f'\nresnet_{FLAGS.num_blocks}blocks, ngf {FLAGS.ngf}, {count:,} params, input {shape}, '
        f'{FLAGS.threads} threads, median of {FLAGS.runs} after {FLAGS.warmup} warm-up calls, '
        f'load average before: {load:.2f}\n')
  print('| runtime | file size | export (s) | first call (s) | latency (ms) '
        '| max / mean abs error |')
  print('| --- | --- | --- | --- | --- | --- |')
  for row in rows:
    size = f'{row["bytes"] / 2**20:.1f} MiB' if row['bytes'] else '-'
    export_s = f'{row["export_s"]:.1f}' if row['export_s'] else '-'
    print(f'| {row["name"]} | {size} | {export_s} | {row["first_call_s"]:.2f} | '
          f'{1000 * row["latency_s"]:.0f} | {row["errors"][0]:.1e} / {row["errors"][1]:.1e} |')


if __name__ == '__main__':
  app.run(main)
