"""Shared test helpers: load config files by name; one XLA compilation cache per test session."""

import atexit
import importlib.util
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Many tests compile the same tiny train step, in this process and in `python -m
# cyclegan_jax.main` subprocesses (which inherit the environment). A persistent compilation cache
# shared by the session compiles each distinct program once. Set before jax is imported.
_XLA_CACHE = tempfile.mkdtemp(prefix='cyclegan_jax_tests_xla_cache_')
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _XLA_CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')


def pytest_unconfigure(config):
  """Tests that restore damaged checkpoints leave reads in flight (see
  `checkpointing.drop_aborted_read_noise`), which report at exit, after pytest has put back the
  interpreter's own hooks: filter them there too."""
  del config
  from cyclegan_jax import checkpointing  # pylint: disable=g-import-not-at-top  # After the cache setup.
  checkpointing.drop_aborted_read_noise()


def simulated_devices_env(devices: int) -> dict[str, str]:
  """The environment of a subprocess that sees `devices` simulated CPU devices.

  Their collectives wait for every device's thread: on a 2-core machine that is busy with other
  tests, one device's thread can reach an all-reduce long after the others, beyond XLA's default
  limit of 40 s at which it aborts the process. Allow minutes."""
  return {
      **os.environ,
      'XLA_FLAGS': (f'--xla_force_host_platform_device_count={devices} '
                    '--xla_cpu_collective_call_terminate_timeout_seconds=600'),
      'JAX_PLATFORMS': 'cpu',
  }


def load_config(name: str):
  """`configs/<name>.py`'s get_config(), as the command line would load it."""
  spec = importlib.util.spec_from_file_location(f'configs_{name}', ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture
def tiny_config():
  return load_config('tiny')


@pytest.fixture(scope='session')
def finished_tiny_run(tmp_path_factory):
  """(workdir, final summary) of one finished tiny run (6 steps, checkpoints at 3 and 6), shared
  by the tests that only read a trained run. Do not write into it."""
  from cyclegan_jax import loop  # pylint: disable=g-import-not-at-top  # After the cache setup.
  workdir = tmp_path_factory.mktemp('finished_tiny_run')
  final = loop.train_and_evaluate(load_config('tiny'), str(workdir))
  return workdir, final


def assert_one_line_user_error(result, *expected_parts):
  """A finished subprocess that reported a user error: exit status 2, one `Error:` (or absl's
  flag error) line holding `expected_parts`, and no traceback."""
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  reports = [line for line in result.stderr.splitlines()
             if line.startswith(('Error: ', 'FATAL Flags parsing error: '))]
  assert len(reports) == 1, result.stderr[-3000:]
  for part in expected_parts:
    assert part in reports[0], reports[0]


def train_batch(dataset, step: int, batch_size: int) -> dict:
  """Global batch `step` of a run at `batch_size`, as the trainer's iterator gives it."""
  with dataset.train_iterator(batch_size, step * batch_size, prefetch=0) as batches:
    return next(batches)


def train_batch_uint8(dataset, step: int, batch_size: int) -> dict:
  """`train_batch` as the uint8 pixels it was scaled from (exactly: x = u / 127.5 - 1)."""
  return {
      domain: np.round((images + 1.0) * 127.5).astype(np.uint8)
      for domain, images in train_batch(dataset, step, batch_size).items()
  }


def load_npz_state_dict(path) -> dict[str, np.ndarray]:
  """The state_dict entries (`model.*`, or `net.*` for the pixel discriminator) of a reference
  .npz file, keys verbatim (no pickles allowed)."""
  with np.load(path, allow_pickle=False) as data:
    return {key: data[key] for key in data.files if key.startswith(('model.', 'net.'))}


def updated(config, **fields):
  """A copy of `config` with `fields` changed; nested fields as model__ngf=16."""
  copy = config.copy_and_resolve_references()
  copy.update_from_flattened_dict({k.replace('__', '.'): v for k, v in fields.items()})
  return copy


def make_jpeg_dataset(root: pathlib.Path, seed: int = 0, counts=(5, 4, 2, 2)) -> pathlib.Path:
  """A small CycleGAN folder dataset (trainA, trainB, testA, testB) of JPEGs of assorted sizes."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  for split, count in zip(('trainA', 'trainB', 'testA', 'testB'), counts):
    (root / split).mkdir(parents=True)
    for index in range(count):
      height, width = rng.integers(30, 60, size=2)
      pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(root / split / f'{index}.jpg')
  return root


def _leaves(tree) -> list[np.ndarray]:
  import jax  # pylint: disable=g-import-not-at-top  # Only after the cache settings above.
  return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def relative_difference(tree_a, tree_b) -> float:
  """max |a - b| / max |a| over all leaves."""
  leaves_a, leaves_b = _leaves(tree_a), _leaves(tree_b)
  scale = max(float(np.max(np.abs(a), initial=0.0)) for a in leaves_a)
  return max(float(np.max(np.abs(a - b), initial=0.0)) for a, b in zip(leaves_a, leaves_b)) / scale


def fraction_above(tree_a, tree_b, tolerance: float) -> float:
  """Fraction of all elements whose absolute difference exceeds `tolerance`."""
  leaves_a, leaves_b = _leaves(tree_a), _leaves(tree_b)
  above = sum(int(np.sum(np.abs(a - b) > tolerance)) for a, b in zip(leaves_a, leaves_b))
  return above / sum(a.size for a in leaves_a)
