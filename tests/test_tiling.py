"""Tiled inference equals whole-image inference: global statistics, exact halos, no seams.

Small generators (ngf 8, one or two residual blocks) keep compilation short; the paper-size
generator is compared at photo sizes by `experiments/benchmark_tiling.py`. Tiled and whole-image
outputs come from different programs (other windows, other orders of float sums), so they are
compared within tolerances, never bitwise.
"""

import functools
import logging
import pathlib

import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest

from conftest import load_npz_state_dict
from cyclegan_jax import errors
from cyclegan_jax import inference
from cyclegan_jax import models
from cyclegan_jax.data import image_io
from cyclegan_jax.inference import files
from cyclegan_jax.inference import tiling
from cyclegan_jax.models import layout as layout_lib
from cyclegan_jax.torch_io import mapping

PARITY_DIR = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'reference' / 'torch_parity'
FLOAT_TOLERANCE = 1e-4  # Outputs in [-1, 1]; one grey level is 2 / 255 = 7.8e-3.


@functools.lru_cache(maxsize=None)
def small_generator(norm: str = 'instance',
                    num_blocks: int = 1,
                    unet_downs: int = 0,
                    use_dropout: bool = False) -> inference.Generator:
  """A ResnetGenerator with ngf 8 (or with `unet_downs`, a UnetGenerator with that many levels)
  and random parameters: kernels that keep activations near unit scale, and random biases and
  batch-norm affines (the official init's zeros and ones would hide mistakes). Dropout layers,
  if any, are off (eval mode)."""
  shared = dict(output_nc=3, ngf=8, norm=norm, use_dropout=use_dropout, deterministic=True)
  if unet_downs:
    module = models.UnetGenerator(num_downs=unet_downs, **shared)
  else:
    module = models.ResnetGenerator(num_blocks=num_blocks, **shared)
  side = layout_lib.min_side(module.layout(3))
  x = jax.ShapeDtypeStruct((1, side, side, 3), np.float32)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)['params']
  rng = np.random.default_rng(1)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      return rng.normal(0, np.prod(leaf.shape[:-1])**-0.5, leaf.shape).astype(np.float32)
    return (name == 'scale') + rng.normal(0, 0.1, leaf.shape).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(draw, shapes)
  return inference.Generator(module, params, 3, 3, f'{module.architecture}, ngf 8, {norm} norm')


def photo(height: int, width: int, batch: int = 1, seed: int = 0) -> np.ndarray:
  """Smooth random images in [-1, 1] with some texture (like a photo, unlike white noise)."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(-1, 1, (batch, height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
  smooth = jax.image.resize(coarse, (batch, height, width, 3), 'cubic')
  texture = 0.2 * rng.normal(size=(batch, height, width, 3))
  return np.clip(np.asarray(smooth) + texture, -1, 1).astype(np.float32)


def whole(generator, x):
  return inference.translate_any_size(generator, x)


def tiled(generator, x, tile, **plan_options):
  """The generator's output for `x` in tiles of `tile`, in test mode as inference runs it (plan
  options as `tiling.plan_tiles`)."""
  layers = generator.layout
  multiple = layout_lib.size_multiple(layers)
  height, width = x.shape[1:3]
  padded = np.pad(x, ((0, 0), (0, -height % multiple), (0, -width % multiple), (0, 0)),
                  mode='reflect')
  plan_options.setdefault('settings', tiling.Settings.of_module(models.for_test(generator.module)))
  plan = tiling.plan_tiles(layers, padded.shape, tile, **plan_options)
  return tiling.run_tiles(plan, generator.params, padded)[:, :height, :width], plan


def max_grey_levels(a, b) -> int:
  return int(np.abs(image_io.to_uint8(a).astype(int) - image_io.to_uint8(b)).max())


# --- tiles equal the whole image ---------------------------------------------------------------


@pytest.mark.parametrize(
    'norm, batch, height, width, tile, plan_options',
    [
        # Odd photo sizes, tiles that divide neither side: the default plan.
        ('instance', 1, 389, 517, 128, {}),
        ('instance', 1, 768, 1024, 320, {}),
        # Batch norm in test mode: each image's statistics over all its tiles, two images that
        # must not interact; every conv output kept on the host (one layer per pass).
        ('batch', 2, 97, 75, 32, dict(threshold=0)),
        # Every normalised conv recomputed from the kept maps (long fused passes with wide
        # margins, statistics passes that recompute their inputs).
        ('instance', 1, 150, 203, 64, dict(threshold=float('inf'), within_peak=False)),
    ],
    ids=['517x389', '1024x768', 'batch-norm-75x97x2', 'recompute-203x150'])
def test_tiled_equals_whole(norm, batch, height, width, tile, plan_options):
  generator = small_generator(norm)
  x = photo(height, width, batch)
  y, plan = tiled(generator, x, tile, **plan_options)
  assert plan.passes[-1].tiles > 4 and y.shape == x.shape
  expected = whole(generator, x)
  assert np.abs(y - expected).max() <= FLOAT_TOLERANCE
  assert max_grey_levels(y, expected) <= 1


@pytest.mark.parametrize(
    'norm, batch, height, width, tile, plan_options',
    [
        # Skip blocks concatenate each level's input with its body's output; an odd size, tiles
        # that divide neither side, at every level down to maps of 7x5 pixels; the default plan
        # (long passes that recompute levels through their concatenations: ~20 s to compile).
        ('instance', 1, 203, 150, 64, {}),
        # Batch norm in test mode (each image by its own statistics), two images; every conv
        # output kept (short passes, quick to compile).
        ('batch', 2, 97, 75, 32, dict(threshold=0)),
    ],
    ids=['unet-203x150', 'unet-batch-norm-75x97x2'])
def test_unet_tiled_equals_whole(norm, batch, height, width, tile, plan_options):
  generator = small_generator(norm, unet_downs=5)
  x = photo(height, width, batch, seed=5)
  y, plan = tiled(generator, x, tile, **plan_options)
  assert plan.passes[-1].tiles > 4 and y.shape == x.shape
  assert any(isinstance(node.op, tiling.ConcatOp) for node in plan.nodes)
  expected = whole(generator, x)
  assert np.abs(y - expected).max() <= FLOAT_TOLERANCE
  assert max_grey_levels(y, expected) <= 1


def test_dropout_is_tiled_in_eval_mode_and_refused_when_on():
  """Dropout that stays on draws masks for the whole map, which tiles cannot reproduce."""
  generator = small_generator('batch', unet_downs=6, use_dropout=True)
  assert generator.module.deterministic
  x = photo(130, 100, seed=6)
  y, _ = tiled(generator, x, 64, threshold=0)
  assert np.abs(y - whole(generator, x)).max() <= FLOAT_TOLERANCE
  dropout_on = generator._replace(module=generator.module.clone(deterministic=False))
  with pytest.raises(ValueError, match='dropout that stays on'):
    tiled(dropout_on, x, 64)


def test_a_network_without_norms_is_one_pass_per_kept_map():
  generator = small_generator('none')
  x = photo(60, 44)
  y, plan = tiled(generator, x, 24)
  # No statistics to wait for: a pass per kept map (but the input), none for statistics.
  assert not any(p.program.stats for p in plan.passes)
  assert len(plan.passes) == len(plan.kept) - 1
  assert np.abs(y - whole(generator, x)).max() <= FLOAT_TOLERANCE


@pytest.mark.skipif(not PARITY_DIR.is_dir(), reason='shared reference files not present')
def test_tiles_reproduce_the_official_batch_norm_network():
  """The official ResnetGenerator (batch norm, batch of 2, random biases) run by PyTorch in train
  mode: batch statistics over both images (`norm_per_image` off), merged over all tiles."""
  reference = np.load(PARITY_DIR / 'G_resnet_6blocks_ngf8_batchnorm_b2_randbias.npz')
  state_dict = load_npz_state_dict(PARITY_DIR / 'G_resnet_6blocks_ngf8_batchnorm_b2_randbias.npz')
  params, arch = mapping.generator_params_from_state_dict(state_dict)
  module = models.build_generator(ml_collections.ConfigDict(arch), arch['output_nc'])
  generator = inference.Generator(module, params, 3, 3, 'official')
  y, plan = tiled(generator,
                  reference['input'].transpose(0, 2, 3, 1),
                  16,
                  settings=tiling.Settings(norm_per_image=False))
  assert plan.passes[-1].tiles == 4
  assert np.abs(y - reference['output'].transpose(0, 2, 3, 1)).max() <= FLOAT_TOLERANCE


# --- what tiling gets wrong when done naively, caught ---------------------------------------


def naive_tiles(generator, x, columns):
  """Each vertical strip translated on its own (per-strip statistics, padding at its edges)."""
  bounds = [0, *columns, x.shape[2]]
  return np.concatenate([whole(generator, x[:, :, a:b]) for a, b in zip(bounds[:-1], bounds[1:])],
                        axis=2)


def test_statistics_are_global_not_per_tile():
  """An image whose halves differ strongly in colour, tiled at the colour boundary: statistics per
  tile would normalise each half to the same range and change its colour."""
  generator = small_generator()
  x = photo(64, 128)
  x[..., :64, :] = 0.2 * x[..., :64, :] + np.array([0.8, -0.8, -0.8], np.float32)  # Red.
  x[..., 64:, :] = 0.2 * x[..., 64:, :] + np.array([-0.8, -0.8, 0.8], np.float32)  # Blue.
  y, plan = tiled(generator, x, 64)
  assert plan.passes[-1].starts[1] == [0, 64]
  expected = whole(generator, x)
  assert np.abs(y - expected).max() <= FLOAT_TOLERANCE
  # The same network with per-tile statistics is far off: this image catches them.
  per_tile = naive_tiles(generator, x, [64])
  assert np.abs(per_tile - expected).mean() > 50 * FLOAT_TOLERANCE


def test_no_seams_at_tile_borders():
  """The step between the columns on either side of every tile border (where a seam shows) is
  the untiled output's step, in every pass's grid."""
  generator = small_generator()
  x = photo(64, 128, seed=3)
  y, plan = tiled(generator, x, 64)
  expected = whole(generator, x)
  borders = {int(start / plan.nodes[p.target].scale) for p in plan.passes for start in p.starts[1]}
  borders -= {0}
  assert borders == {64}

  def steps(image, column):
    return image[:, :, column] - image[:, :, column - 1]

  for column in borders:
    assert np.abs(steps(y, column) - steps(expected, column)).max() <= 2 * FLOAT_TOLERANCE
  # A seam (tiles translated apart) is a step far from the untiled one: this test sees it.
  seamed = naive_tiles(generator, x, [64])
  assert np.abs(steps(seamed, 64) - steps(expected, 64)).max() > 100 * FLOAT_TOLERANCE


# --- plans: bounded memory, few compilations ------------------------------------------------------


def test_plan_of_the_paper_generator_keeps_quarter_resolution_maps():
  """resnet_9blocks, ngf 64, a 4000x3000 photo, planned (not run)."""
  layers = models.ResnetGenerator9(output_nc=3, ngf=64).layout(3)
  plan = tiling.plan_tiles(layers, (1, 3000, 4000, 3), 512)
  # Host memory: three quarter-resolution maps of 256 channels in float32 at most.
  assert plan.peak_host_bytes == 3 * 1000 * 750 * 256 * 4
  # Only the stem and the last upsampling conv are recomputed (in two passes each).
  recomputed = {plan.nodes[i].name for i in range(len(plan.nodes)) if i not in plan.kept}
  assert {name for name in recomputed if name.endswith('(conv)')} == {'stem (conv)', 'up_1 (conv)'}
  assert len(plan.passes) == 33
  # Every tile of a pass has one shape, and the residual blocks after the first share programs.
  assert len({p.program for p in plan.passes}) == 11
  assert plan.margin <= 16


def test_tile_grid_covers_the_map_with_equal_tiles():
  assert tiling._tile_starts(10, 4) == [0, 4, 6]
  assert tiling._owned([0, 4, 6], 4, 10) == [(0, 4), (0, 4), (2, 4)]


def test_moments_merge_exactly():
  rng = np.random.default_rng(0)
  values = rng.normal(3.0, 2.0, (2, 100, 5))
  moments = tiling.Moments()
  for part in np.split(values, [30, 31, 77], axis=1):
    mean = part.mean(axis=1)
    moments.add(part.shape[1], mean, np.square(part - mean[:, None]).sum(axis=1))
  mean, var = moments.statistics()
  np.testing.assert_allclose(mean, values.mean(axis=1), rtol=1e-6)
  np.testing.assert_allclose(var, values.var(axis=1), rtol=1e-6)
  mean, var = moments.statistics(over_batch=True)
  np.testing.assert_allclose(mean[0], values.mean(axis=(0, 1)), rtol=1e-6)
  np.testing.assert_allclose(var[1], values.var(axis=(0, 1)), rtol=1e-6)


# --- choosing whole or tiles; files ----------------------------------------------------------


def test_memory_budget_chooses_whole_or_tiles():
  generator = small_generator()
  shape = (2, 70, 93, 3)
  needs = inference.whole_image_bytes(generator.module, shape)
  assert inference.plan_translation(generator, shape, max_memory=2 * needs).plan is None
  translation = inference.plan_translation(generator, shape, max_memory=needs // 4)
  # Images do not interact in test mode, so one at a time is enough: also with batch norm.
  assert translation.per_call == 1 and translation.plan is not None
  batch_norm = inference.plan_translation(small_generator('batch'), shape, max_memory='64K')
  assert batch_norm.per_call == 1 and batch_norm.plan is not None


def test_dropout_that_stays_on_is_translated_whole_never_in_tiles():
  """Its masks are drawn for the whole batch: translate gives translate_any_size's output for the
  seed, and refuses tiles (asked for, or for a budget that the whole image exceeds) with a
  one-line error naming the fixes; in eval mode the same generator is tiled."""
  generator = small_generator('batch', unet_downs=6, use_dropout=True)
  dropout_on = generator._replace(module=generator.module.clone(deterministic=False))
  x = photo(64, 70, batch=2, seed=7)
  np.testing.assert_array_equal(inference.translate(dropout_on, x, seed=3, max_memory='1G'),
                                inference.translate_any_size(dropout_on, x, seed=3))
  with pytest.raises(errors.InvalidValueError, match='tiles of 64 pixels .* --eval'):
    inference.check_tile(dropout_on.module, 3, 64)
  with pytest.raises(errors.InvalidValueError, match='--eval .* a larger --max_memory'):
    inference.plan_translation(dropout_on, x.shape, max_memory='64K')
  assert inference.plan_translation(generator, x.shape, max_memory='64K').plan is not None


@pytest.mark.parametrize('text, expected', [('2G', 2 * 2**30), ('512m', 512 * 2**20),
                                            ('1.5GiB', 3 * 2**29), ('3000', 3000),
                                            (' 64 KB ', 64 * 2**10), (7, 7)])
def test_memory_sizes_parse(text, expected):
  assert inference.parse_memory(text) == expected


@pytest.mark.parametrize('text', ['lots', '2X', '-1G', '0', 'G', '', True])
def test_bad_memory_sizes_are_user_errors(text):
  with pytest.raises(errors.InvalidValueError, match='is not a memory size'):
    inference.parse_memory(text)


@pytest.mark.parametrize('tile', [2, 8, 30])
def test_bad_tiles_are_user_errors(tile):
  generator = small_generator()
  smallest = inference.smallest_tile(generator.module, 3)
  assert smallest % 4 == 0 and smallest >= generator.min_side
  with pytest.raises(errors.InvalidValueError,
                     match=f'multiples of 4 pixels .* at least {smallest}'):
    inference.check_tile(generator.module, 3, tile)


def test_translate_files_in_tiles_writes_the_whole_image_pngs(tmp_path, caplog):
  generator = small_generator()
  inputs = tmp_path / 'in'
  inputs.mkdir()
  rng = np.random.default_rng(4)
  for name in 'ab':
    pixels = image_io.to_uint8(photo(61, 90, seed=int(rng.integers(100)))[0])
    Image.fromarray(pixels).save(inputs / f'{name}.png')
  jobs = files.find_inputs(str(inputs))
  with caplog.at_level(logging.INFO):
    written, unreadable = files.translate_files(generator, jobs, tmp_path / 'tiled', tile=32)
  assert (written, unreadable) == (2, [])
  assert any('tiles of a.png' in record.getMessage() for record in caplog.records)
  files.translate_files(generator, jobs, tmp_path / 'whole', max_memory='1G')
  for name in 'ab':
    pngs = [
        np.asarray(Image.open(tmp_path / mode / f'{name}.png'), int) for mode in ('tiled', 'whole')
    ]
    assert np.abs(pngs[0] - pngs[1]).max() <= 1
