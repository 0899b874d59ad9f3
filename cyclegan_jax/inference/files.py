"""Translating image files: inputs found from a file, folder or glob, outputs written as PNGs.

Each output is a PNG named after its input (`a/b.jpg` -> `OUTPUT/a/b.png`, the folder structure
kept); `grid` also writes input | output pairs to `OUTPUT/grid/`. Images keep their size: sides
that are not multiples of 4 are reflection-padded for the network and cropped back. Images too
large for the memory budget are translated in tiles with the same result (`inference.translate`;
a progress bar per image). Greyscale, palette, RGBA and 16-bit inputs are converted by the data
pipeline's channel policy (README, "Data"). An unreadable file is reported and skipped; files
that are not images are listed.
"""

import collections
import glob
import os
from pathlib import Path
import sys
import time
from typing import Iterator

from absl import logging
import numpy as np

from cyclegan_jax import errors
from cyclegan_jax import inference
from cyclegan_jax import summaries
from cyclegan_jax import workdir as workdir_lib
from cyclegan_jax.data import image_io

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
    images = image_io.list_images(path)
    if not images:
      raise errors.InvalidValueError(f'No images in folder {path} (looked for '
                                     f'{", ".join(sorted(image_io.IMAGE_EXTENSIONS))}).')
    return [Job(image, image.relative_to(path)) for image in images]
  if glob.has_magic(pattern):
    matches = sorted(Path(match) for match in glob.glob(pattern, recursive=True))
    files = [m for m in matches if m.is_file() and not image_io.is_hidden(str(m))]
    images = [m for m in files if image_io.is_image_name(m.name)]
    image_io.report_ignored([str(m) for m in files if m not in images], repr(pattern))
    if not images:
      raise errors.InvalidValueError(f'No image files match {pattern!r}.')
    root = Path(os.path.commonpath([str(image.parent.absolute()) for image in images]))
    return [Job(image, image.absolute().relative_to(root)) for image in images]
  raise errors.PathNotFoundError(
      f'Input not found: {pattern} (expected an image file, a folder or a '
      'glob pattern)')


def check_outputs(jobs: list[Job], output: Path, grid: bool, overwrite: bool) -> None:
  """Rejects an output folder that is a file, two inputs that would write one output, and
  existing outputs unless overwriting."""
  workdir_lib.check_folder(output, '--output')
  seen: dict[Path, Path] = {}
  for job in jobs:
    target = job.output_path(output)
    if target in seen:
      raise errors.InvalidValueError(
          f'{seen[target]} and {job.source} would both be written to {target}; '
          'translate them into different --output folders.')
    seen[target] = job.source
  inputs = {job.source.resolve() for job in jobs}
  outputs = [job.output_path(folder) for job in jobs
             for folder in ((output, output / 'grid') if grid else (output,))]
  replaced = [target for target in outputs if target.resolve() in inputs]
  if replaced:
    raise errors.PathExistsError(
        f'An output would replace the input image {replaced[0]} (inputs are kept, even with '
        '--overwrite); choose an --output folder apart from the inputs.')
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


def read_images(jobs: list[Job], channels: int,
                min_side: int) -> Iterator[tuple[Job, np.ndarray | None, str]]:
  """(job, uint8 HWC image or None, error message) in input order; bad files do not stop it."""
  for job in jobs:
    try:
      image = image_io.as_hwc(image_io.load_image(job.source, channels))
      inference.check_size(image.shape[0], image.shape[1], min_side, str(job.source))
    except (image_io.UnreadableImageError, ValueError) as error:
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

  def __init__(self, total: int, unit: str = 'images'):
    self.total, self.done, self.start = total, 0, time.perf_counter()
    self.unit = unit
    self._tty = sys.stderr.isatty()
    self._next_log = 0.1

  def advance(self, count: int) -> None:
    self.done += count
    fraction = self.done / max(self.total, 1)
    rate = self.done / max(time.perf_counter() - self.start, 1e-9)
    text = f'{self.done}/{self.total} {self.unit} ({rate:.1f}/s)'
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
    translated = image_io.to_uint8(translated)
    summaries.save_png(job.output_path(output),
                       np.squeeze(translated, axis=-1) if translated.shape[-1] == 1 else translated)
    if grid:
      pair = summaries.image_grid([image[None], translated[None]])
      summaries.save_png(job.output_path(output / 'grid'), pair)


def translate_files(generator: inference.Generator,
                    jobs: list[Job],
                    output: Path,
                    batch_size: int = 8,
                    grid: bool = False,
                    seed: int = 0,
                    tile: int | None = None,
                    max_memory: int | str | None = None) -> tuple[int, list[str]]:
  """Translates every readable input, each as it is translated alone, whole or in tiles
  (`inference.plan_translation`: `tile` forces tiles; batched by size only for speed); `seed`
  draws the masks of dropout that stays on. Returns (images written, error per skipped file)."""
  errors: list[str] = []
  if tile is None and max_memory is None:
    max_memory = inference.default_memory_budget()  # Once: the same choice for every batch.

  def readable():
    for job, image, error in read_images(jobs, generator.in_channels, generator.min_side):
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
    translation = inference.plan_translation(generator, images.shape, tile, max_memory)
    if translation.per_call == 1:  # One image at a time: no need to translate the padding.
      images = images[:count]

    def tile_progress(first, tiles, batch=batch):
      return ProgressLine(tiles, f'tiles of {batch[first][0].source.name}').advance

    outputs = inference.translate(generator,
                                  image_io.from_uint8(images),
                                  seed=seed,
                                  translation=translation,
                                  tile_progress=tile_progress)[:count]
    write_outputs(batch, outputs, output, grid)
    written += count
    progress.advance(count)
  return written, errors


def translate_path(pattern: str,
                   output: Path,
                   *,
                   workdir: str | Path | None = None,
                   torch_checkpoint: str | Path | None = None,
                   direction: str = 'AtoB',
                   step: int | None = None,
                   batch_size: int = 8,
                   grid: bool = False,
                   overwrite: bool = False,
                   eval_mode: bool | None = None,
                   weights: str | None = None,
                   seed: int = 0,
                   tile: int | None = None,
                   max_memory: int | str | None = None) -> tuple[int, list[str]]:
  """Translates the images `pattern` names (`find_inputs`) into `output` with the generator of a
  workdir or an official `.pth` (`inference.load_generator`, which `eval_mode` and `weights` go
  to);
  (images written, unreadable ones). `seed` draws the masks of dropout that stays on. `tile`
  forces tiles of at most tile x tile pixels; otherwise images whose whole-image program needs
  more than `max_memory` (bytes or e.g. '2G'; default `inference.default_memory_budget()`) are
  tiled.

  Nothing is written if an output exists (without `overwrite`) or two inputs collide, or if
  `tile` or `max_memory` is invalid.
  """
  if max_memory is not None:
    max_memory = inference.parse_memory(max_memory)
  jobs = find_inputs(pattern)
  check_outputs(jobs, output, grid, overwrite)
  generator = inference.load_generator(workdir,
                                       torch_checkpoint,
                                       direction,
                                       step,
                                       eval_mode=eval_mode,
                                       weights=weights)
  if tile is not None:
    inference.check_tile(generator.module, generator.in_channels, tile)
  logging.info('Translating %d image(s) with %s into %s.', len(jobs), generator.description, output)
  written, unreadable = translate_files(generator, jobs, output, batch_size, grid, seed, tile,
                                        max_memory)
  if unreadable:
    logging.warning('%d unreadable file(s) skipped:\n  %s', len(unreadable),
                    '\n  '.join(unreadable))
  return written, unreadable
