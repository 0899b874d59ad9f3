"""Time and peak memory of translating one large photo whole and in tiles, and their difference.

    python -m experiments.benchmark_tiling --height=3000 --width=4000            # Both modes.
    python -m experiments.benchmark_tiling --height=4000 --width=6000 --modes=tiled
    python -m experiments.benchmark_tiling --torch_checkpoint=horse2zebra.pth --tile=384

Translates a random but smooth --height x --width photo (`photo`: bicubic colour blobs with some
texture, the same for every mode) with the paper-size generator (resnet_9blocks, ngf 64, the
official random init: N(0, 0.02) kernels, zero biases; or --torch_checkpoint), once per mode, each
in its own child process so that its peak RSS is its own:

- whole: `inference.translate_any_size`, the whole image in one program;
- tiled: `inference.translate` with --tile (or, with --max_memory, tiles only if the whole image
  needs more than that budget), the tiled executor of `cyclegan_jax.inference.tiling`.

Reports per mode the wall time of the child process, the time of the translation itself
(compilation included, as one `python -m cyclegan_jax.translate` call pays it), seconds per
megapixel, and the child's peak RSS (`resource` usage of that child); when both modes ran, the
largest |tiled - whole| in float and in grey levels. Prints a markdown table and, with --json,
appends one JSON line per run to that file.
"""

import json
import os
from pathlib import Path
import resource
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_integer('height', 3000, 'Photo height in pixels.')
flags.DEFINE_integer('width', 4000, 'Photo width in pixels.')
flags.DEFINE_list('modes', ['whole', 'tiled'], 'Modes to run, each in its own process.')
flags.DEFINE_integer('tile', 512, 'Tile side for the tiled mode (ignored with --max_memory).')
flags.DEFINE_string('max_memory', None,
                    "Tiled mode: a budget such as '2G' instead of --tile (tiles only if needed).")
flags.DEFINE_string('torch_checkpoint', None, 'An official generator .pth instead of random init.')
flags.DEFINE_string('generator', 'resnet_9blocks', 'Random-init generator (config name).')
flags.DEFINE_integer('ngf', 64, 'Random-init generator filters in the first layer.')
flags.DEFINE_string('norm', 'instance', 'Random-init generator norm: instance, batch or none.')
flags.DEFINE_integer('seed', 0, 'Seed of the random weights and of the photo.')
flags.DEFINE_string('json', None, 'Append the results as JSON lines to this file.')
flags.DEFINE_string('child', None, 'Internal: run one mode and save the output to this .npy.')

RESULT_PREFIX = 'BENCHMARK_RESULT '


def photo(height: int, width: int, seed: int) -> np.ndarray:
  """A smooth random 1 x H x W x 3 float32 image in [-1, 1]: bicubic blobs plus texture."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
  smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
  x = smooth / 127.5 - 1
  x += 0.2 * rng.standard_normal(x.shape, dtype=np.float32)
  return np.clip(x, -1, 1, out=x)[None]


def make_generator():
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from cyclegan_jax import inference  # pylint: disable=g-import-not-at-top
  from cyclegan_jax import models  # pylint: disable=g-import-not-at-top
  from cyclegan_jax.models import layout as layout_lib  # pylint: disable=g-import-not-at-top

  if FLAGS.torch_checkpoint:
    return inference.generator_from_torch(FLAGS.torch_checkpoint)
  config = ml_collections.ConfigDict(
      dict(generator=FLAGS.generator,
           ngf=FLAGS.ngf,
           norm=FLAGS.norm,
           init_type='normal',
           init_gain=0.02))
  module = models.build_generator(config, 3)
  side = layout_lib.min_side(module.layout(3))
  params = jax.jit(module.init)(jax.random.PRNGKey(FLAGS.seed),
                                np.zeros((1, side, side, 3), np.float32))['params']
  return inference.Generator(module, params, 3, 3,
                             f'random {FLAGS.generator}, ngf {FLAGS.ngf}, {FLAGS.norm} norm')


def run_child(mode: str, output: Path) -> None:
  """One mode in this process: translate, save, print the result line."""
  from cyclegan_jax import inference  # pylint: disable=g-import-not-at-top

  generator = make_generator()
  x = photo(FLAGS.height, FLAGS.width, FLAGS.seed)
  start = time.perf_counter()
  if mode == 'whole':
    y, how = inference.translate_any_size(generator, x), 'whole'
  elif mode == 'tiled':
    tile = None if FLAGS.max_memory else FLAGS.tile
    translation = inference.plan_translation(generator, x.shape, tile, FLAGS.max_memory)
    y = inference.translate(generator, x, translation=translation)
    how = translation.why
  else:
    raise app.UsageError(f'Unknown mode {mode!r}: expected whole or tiled')
  seconds = time.perf_counter() - start
  np.save(output, y)
  print(RESULT_PREFIX + json.dumps(dict(translate_s=seconds, how=how, model=generator.description)),
        flush=True)


def run_parent(mode: str, output: Path) -> dict:
  """Runs one mode in a child process; its result with wall time and peak RSS."""
  names = ('height', 'width', 'tile', 'max_memory', 'torch_checkpoint', 'generator', 'ngf', 'norm',
           'seed')
  passed = [f'--{name}={FLAGS[name].value}' for name in names if FLAGS[name].value is not None]
  command = [
      sys.executable, '-m', 'experiments.benchmark_tiling', *passed, f'--child={output}',
      f'--modes={mode}'
  ]
  start = time.perf_counter()
  child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
  stdout = child.stdout.read()
  _, status, usage = os.wait4(child.pid, 0)
  wall = time.perf_counter() - start
  child.returncode = os.waitstatus_to_exitcode(status)
  lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
  if child.returncode or not lines:
    raise SystemExit(f'{mode}: the child process failed (exit {child.returncode}):\n{stdout}')
  result = json.loads(lines[-1][len(RESULT_PREFIX):])
  megapixels = FLAGS.height * FLAGS.width / 1e6
  result.update(mode=mode,
                height=FLAGS.height,
                width=FLAGS.width,
                wall_s=wall,
                s_per_megapixel=result['translate_s'] / megapixels,
                peak_rss_bytes=usage.ru_maxrss * 1024)  # Linux reports KiB.
  return result


def main(argv):
  del argv
  if FLAGS.child:
    run_child(FLAGS.modes[0], Path(FLAGS.child))
    return
  from cyclegan_jax.data import image_io  # pylint: disable=g-import-not-at-top

  results = []
  with tempfile.TemporaryDirectory() as folder:
    outputs = {}
    for mode in FLAGS.modes:
      outputs[mode] = Path(folder) / f'{mode}.npy'
      results.append(run_parent(mode, outputs[mode]))
      print(f'{mode}: {results[-1]["how"]}', flush=True)
    if {'whole', 'tiled'} <= set(outputs):
      whole, tiled = (np.load(outputs[mode]) for mode in ('whole', 'tiled'))
      difference = float(np.abs(tiled - whole).max())
      grey = int(np.abs(image_io.to_uint8(tiled).astype(int) - image_io.to_uint8(whole)).max())
      del whole, tiled
      for result in results:
        result.update(max_abs_difference=difference, max_grey_levels=grey)

  print(f'\n{results[0]["model"]}, {FLAGS.width}x{FLAGS.height}, {os.cpu_count()} CPUs\n')
  print('| mode | wall (s) | translate (s) | s / megapixel | peak RSS (GB) | max abs diff |')
  print('|---|---|---|---|---|---|')
  for r in results:
    difference = (f'{r["max_abs_difference"]:.1e} ({r["max_grey_levels"]} grey)'
                  if 'max_abs_difference' in r else '')
    print(f'| {r["mode"]} | {r["wall_s"]:.1f} | {r["translate_s"]:.1f} | '
          f'{r["s_per_megapixel"]:.2f} | {r["peak_rss_bytes"] / 1e9:.2f} | {difference} |')
  if FLAGS.json:
    with open(FLAGS.json, 'a', encoding='utf-8') as file:
      for result in results:
        file.write(json.dumps(result) + '\n')


if __name__ == '__main__':
  app.run(main)
