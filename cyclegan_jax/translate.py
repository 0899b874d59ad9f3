"""Translates your images with a trained generator or an official pretrained `.pth` model.

    python -m cyclegan_jax.translate --workdir=runs/monet --direction=BtoA \
        --input=photos/ --output=out/
    python -m cyclegan_jax.translate --torch_checkpoint=horse2zebra.pth \
        --input='horses/*.jpg' --output=zebras/ --grid

--input is an image file, a folder (searched recursively) or a quoted glob. Each output is a PNG
named after its input (`a/b.jpg` -> `OUTPUT/a/b.png`, the folder structure kept); `--grid` also
writes input | output pairs to `OUTPUT/grid/`. Images keep their size: sides that are not
multiples of 4 are reflection-padded for the network and cropped back. Greyscale, palette,
RGBA and 16-bit inputs are converted by the data pipeline's channel policy (README, "Data").
An unreadable file is reported and skipped; existing outputs are kept unless --overwrite.
"""

import collections
import glob
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from absl import app
from absl import flags
from absl import logging
import numpy as np

from cyclegan_jax import cli
from cyclegan_jax import errors
from cyclegan_jax import inference
from cyclegan_jax import input_pipeline
from cyclegan_jax import summaries

FLAGS = flags.FLAGS


class Job(collections.namedtuple('Job', 'source relative')):
  """One input image and its path relative to the input root (which names its outputs)."""

  def output_path(self, root: Path) -> Path:
    return root / self.relative.with_suffix('.png')


def find_inputs(pattern: str) -> list[Job]:
  """The images that --input names, each with the relative path its outputs take."""
  path = Path(pattern)
  if path.is_file():
    return [Job(path, Path(path.name))]
  if path.is_dir():
    images = input_pipeline.list_images(path)
    if not images:
      raise errors.InvalidValueError(f'No images in folder {path} (looked for '
                                     f'{", ".join(sorted(input_pipeline.IMAGE_EXTENSIONS))}).')
    return [Job(image, image.relative_to(path)) for image in images]
  if glob.has_magic(pattern):
    matches = sorted(Path(match) for match in glob.glob(pattern, recursive=True))
    files = [m for m in matches if m.is_file() and not input_pipeline.is_hidden(str(m))]
    images = [m for m in files if input_pipeline.is_image_name(m.name)]
    input_pipeline.report_ignored([str(m) for m in files if m not in images], repr(pattern))
    if not images:
      raise errors.InvalidValueError(f'No image files match {pattern!r}.')
    root = Path(os.path.commonpath([str(image.parent.absolute()) for image in images]))
    return [Job(image, image.absolute().relative_to(root)) for image in images]
  raise errors.PathNotFoundError(
      f'Input not found: {pattern} (expected an image file, a folder or a '
      'glob pattern)')


def check_outputs(jobs: list[Job], output: Path, grid: bool, overwrite: bool) -> None:
  """Rejects two inputs that would write one output, and existing outputs unless overwriting."""
  seen: dict[Path, Path] = {}
  for job in jobs:
    target = job.output_path(output)
    if target in seen:
      raise errors.InvalidValueError(
          f'{seen[target]} and {job.source} would both be written to {target}; '
          'translate them into different --output folders.')
    seen[target] = job.source
  if overwrite:
    return
  targets = list(seen)
  if grid:
    targets += [job.output_path(output / 'grid') for job in jobs]
  existing = [target for target in targets if target.exists()]
  if existing:
    raise errors.PathExistsError(
        f'{len(existing)} output file(s) already exist, e.g. {existing[0]}; pass --overwrite to '
        'replace them or choose another --output.')


def read_images(jobs: list[Job], channels: int) -> Iterator[tuple[Job, np.ndarray | None, str]]:
  """(job, uint8 HWC image or None, error message) in input order; bad files do not stop it."""
  for job in jobs:
    try:
      image = input_pipeline.as_hwc(input_pipeline.load_image(job.source, channels))
      inference.check_size(image.shape[0], image.shape[1], str(job.source))
    except (input_pipeline.UnreadableImageError, ValueError) as error:
      yield job, None, str(error)
    else:
      yield job, image, ''


def batches_by_size(items, batch_size: int):
  """Groups (job, image) pairs into lists of equal-sized images, at most batch_size each."""
  pending: dict[tuple[int, ...], list] = collections.defaultdict(list)
  for job, image in items:
    group = pending[image.shape]
    group.append((job, image))
    if len(group) == batch_size:
      yield pending.pop(image.shape)
  yield from (group for group in pending.values() if group)


class ProgressLine:
  """One updating stderr line on a terminal; a log line every 10% otherwise."""

  def __init__(self, total: int):
    self.total, self.done, self.start = total, 0, time.perf_counter()
    self._tty = sys.stderr.isatty()
    self._next_log = 0.1

  def advance(self, count: int) -> None:
    self.done += count
    fraction = self.done / max(self.total, 1)
    rate = self.done / max(time.perf_counter() - self.start, 1e-9)
    text = f'{self.done}/{self.total} images ({rate:.1f}/s)'
    if self._tty:
      bar = '#' * int(30 * fraction)
      sys.stderr.write(f'\r[{bar:<30}] {text}')
      if self.done >= self.total:
        sys.stderr.write('\n')
      sys.stderr.flush()
    elif fraction >= self._next_log or self.done >= self.total:
      logging.info('Translated %s', text)
      self._next_log = fraction + 0.1


def write_outputs(batch, outputs: np.ndarray, output: Path, grid: bool) -> None:
  for (job, image), translated in zip(batch, outputs):
    translated = input_pipeline.to_uint8(translated)
    summaries.save_png(job.output_path(output),
                       np.squeeze(translated, axis=-1) if translated.shape[-1] == 1 else translated)
    if grid:
      pair = summaries.image_grid([image[None], translated[None]])
      summaries.save_png(job.output_path(output / 'grid'), pair)


def translate_files(generator: inference.Generator,
                    jobs: list[Job],
                    output: Path,
                    batch_size: int = 8,
                    grid: bool = False) -> tuple[int, list[str]]:
  """Translates every readable input; returns (images written, error per skipped file)."""
  errors: list[str] = []

  def readable():
    for job, image, error in read_images(jobs, generator.in_channels):
      if image is None:
        logging.warning('Skipping %s (%d skipped so far).', error, len(errors) + 1)
        errors.append(error)
        progress.advance(1)
      else:
        yield job, image

  progress = ProgressLine(len(jobs))
  written = 0
  for batch in batches_by_size(readable(), batch_size):
    images = np.stack([image for _, image in batch])
    count = len(batch)
    if count < batch_size and len(jobs) > batch_size:  # Pad to reuse the compiled batch shape.
      images = np.concatenate([images, np.repeat(images[-1:], batch_size - count, axis=0)])
    outputs = inference.translate_any_size(generator, input_pipeline.from_uint8(images))[:count]
    write_outputs(batch, outputs, output, grid)
    written += count
    progress.advance(count)
  return written, errors


def main(argv):
  cli.no_extra_arguments(argv)
  if (FLAGS.workdir is None) == (FLAGS.torch_checkpoint is None):
    raise app.UsageError('Give exactly one of --workdir and --torch_checkpoint.')
  if FLAGS.batch_size < 1:
    raise app.UsageError('--batch_size must be >= 1')
  output = Path(FLAGS.output)
  jobs = find_inputs(FLAGS.input)
  check_outputs(jobs, output, FLAGS.grid, FLAGS.overwrite)
  generator = inference.load_generator(FLAGS.workdir, FLAGS.torch_checkpoint, FLAGS.direction,
                                       FLAGS.step)
  logging.info('Translating %d image(s) with %s into %s.', len(jobs), generator.description, output)
  written, errors_seen = translate_files(generator, jobs, output, FLAGS.batch_size, FLAGS.grid)
  summary = f'translate: written={written} skipped={len(errors_seen)} output={output}'
  print(summary, flush=True)
  if errors_seen:
    logging.warning('%d unreadable file(s) skipped:\n  %s', len(errors_seen),
                    '\n  '.join(errors_seen))
  if written == 0:
    raise errors.InvalidValueError(
        f'no image could be translated: {len(errors_seen)} unreadable file(s), listed above')


def define_flags():
  """Command-line flags (defined only when run as a program, so modules import together)."""
  flags.DEFINE_string('workdir', None, 'A training run (or converted) workdir to take G or F from.')
  flags.DEFINE_string(
      'torch_checkpoint', None,
      'An official PyTorch generator .pth (e.g. horse2zebra.pth), instead of '
      '--workdir.')
  flags.DEFINE_enum('direction', 'AtoB', list(inference.DIRECTIONS),
                    'AtoB uses G (domain A to B), BtoA uses F. Ignored with --torch_checkpoint.')
  flags.DEFINE_integer('step', None, 'Checkpoint step to use (default: the latest).')
  flags.DEFINE_string('input', None, 'Image file, folder or glob pattern.')
  flags.DEFINE_string('output', None, 'Folder for the translated PNGs.')
  flags.DEFINE_integer('batch_size', 8, 'Images of the same size translated together.')
  flags.DEFINE_bool('grid', False, 'Also write input | output images to OUTPUT/grid/.')
  flags.DEFINE_bool('overwrite', False, 'Replace outputs that already exist.')
  flags.mark_flags_as_required(['input', 'output'])


if __name__ == '__main__':
  define_flags()
  cli.run(main)
