"""TensorBoard summaries, sample-image grids and the console progress line."""

import io
import json
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from cyclegan_jax import workdir as workdir_lib
from cyclegan_jax.data.image_io import to_uint8


def image_grid(columns: list[np.ndarray]) -> np.ndarray:
  """Tiles equally sized [n, H, W, C] batches: one column per batch, one row per example."""
  columns = [np.repeat(c, 3, axis=-1) if c.shape[-1] == 1 else c for c in columns]
  rows = [np.concatenate([column[i] for column in columns], axis=1)
          for i in range(columns[0].shape[0])]
  return np.concatenate(rows, axis=0)


def translation_grid(images: dict[str, np.ndarray]) -> np.ndarray:
  """uint8 grid, one row per sample: real A | G(A) | F(G(A)) | real B | F(B) | G(F(B)), those
  columns that `images` has (pix2pix: real A | G(A) | real B)."""
  order = ('real_A', 'fake_B', 'rec_A', 'real_B', 'fake_A', 'rec_B')
  return image_grid([to_uint8(images[name]) for name in order if name in images])


def save_png(path: Path, image: np.ndarray) -> None:
  """Writes a uint8 [H, W] or [H, W, C] image as a PNG, atomically."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  workdir_lib.write_atomic(path, buffer.getvalue())


class SummaryWriter:
  """TensorBoard event files plus `metrics.jsonl`, written by process 0 only (else a no-op).

  `metrics.jsonl` holds one JSON object per `scalars` call, `{"step": N, name: value, ...}`, for
  plots and scripts that should not need TensorBoard. A resumed run appends to it, so a step can
  appear twice (from before and after the resume): the later line wins.
  """

  def __init__(self, workdir: Path):
    self._writer = None
    self._jsonl_path = Path(workdir) / workdir_lib.METRICS_FILE
    if jax.process_index() == 0:
      # pylint: disable-next=g-import-not-at-top
      from tensorboardX import SummaryWriter as TensorBoardWriter
      self._writer = TensorBoardWriter(logdir=str(Path(workdir) / workdir_lib.TENSORBOARD_DIR))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if self._writer:
      for name, value in values.items():
        self._writer.add_scalar(name, value, step)
      line = json.dumps({'step': int(step), **{k: float(v) for k, v in values.items()}})
      with open(self._jsonl_path, 'a', encoding='utf-8') as file:
        file.write(line + '\n')

  def image(self, step: int, name: str, image: np.ndarray) -> None:
    if self._writer:
      self._writer.add_image(name, image, step, dataformats='HWC')

  def flush(self) -> None:
    if self._writer:
      self._writer.flush()

  def close(self) -> None:
    if self._writer:
      self._writer.close()


class Progress:
  """Steps/s and ETA over the interval since the last report."""

  def __init__(self, start_step: int, total_steps: int):
    self.total_steps = total_steps
    self._last_step = start_step
    self._last_time = time.perf_counter()

  def report(self, step: int) -> tuple[float, float]:
    now = time.perf_counter()
    steps_per_s = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta_s = (self.total_steps - step) / steps_per_s if steps_per_s > 0 else float('inf')
    return steps_per_s, eta_s


def format_duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{secs:02d}s'


def key_values(values: dict[str, float]) -> str:
  """`key=value` pairs, the format of the machine-readable `final:` line."""
  parts = []
  for key, value in values.items():
    parts.append(f'{key}={value:.6g}' if isinstance(value, float) else f'{key}={value}')
  return ' '.join(parts)
