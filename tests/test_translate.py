"""translate and convert: official checkpoints reproduce the official outputs; files in, files out.

The official outputs in tests/data/official_test_outputs/ were written by the authors' `test.py`
(see the README there) from the shared reference checkpoints.
"""

import json
import logging
import pathlib
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from conftest import assert_one_line_user_error
from conftest import load_npz_state_dict
from cyclegan_jax import inference
from cyclegan_jax.inference import files
from cyclegan_jax.data import image_io
from cyclegan_jax.torch_io import runs

ROOT = pathlib.Path(__file__).resolve().parents[1]
PARITY_DIR = ROOT.parent / 'shared' / 'reference' / 'torch_parity'
OFFICIAL_OUTPUTS = pathlib.Path(__file__).parent / 'data' / 'official_test_outputs'
ZIP_PTH = PARITY_DIR / 'G_resnet_9blocks_ngf8_64_randbias.pth'
LEGACY_PTH = PARITY_DIR / 'G_resnet_6blocks_ngf8_32_randbias_legacy.pth'
needs_parity_files = pytest.mark.skipif(not PARITY_DIR.is_dir(),
                                        reason='shared reference files not present')

# (checkpoint, its .npz twin, the official test.py input and output for it)
OFFICIAL_CASES = {
    'zip': (ZIP_PTH, 'G_resnet_9blocks_ngf8_64_randbias.npz', 'photo64'),
    'legacy': (LEGACY_PTH, 'G_resnet_6blocks_ngf8_32_randbias.npz', 'photo32'),
}


@pytest.fixture(scope='module')
def legacy_generator():
  return inference.load_generator(torch_checkpoint=LEGACY_PTH)


def run(module, *args):
  return subprocess.run([sys.executable, '-m', f'cyclegan_jax.{module}', *map(str, args)],
                        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


# --- the official checkpoints ---------------------------------------------------------------


@needs_parity_files
@pytest.mark.parametrize('file_format', OFFICIAL_CASES)
def test_official_checkpoint_reproduces_the_official_network(file_format):
  path, npz, _ = OFFICIAL_CASES[file_format]
  reference = np.load(PARITY_DIR / npz)
  generator = inference.load_generator(torch_checkpoint=path)
  with jax.default_matmul_precision('highest'):
    y = inference.translate_any_size(generator, reference['input'].transpose(0, 2, 3, 1))
  official = reference['output'].transpose(0, 2, 3, 1)
  assert np.abs(y - official).max() < 1e-4
  # As saved images (official util.tensor2im): within one grey level.
  difference = image_io.to_uint8(y).astype(int) - image_io.to_uint8(official)
  assert np.abs(difference).max() <= 1


@needs_parity_files
@pytest.mark.parametrize('file_format, flags', [('zip', []), ('legacy', []),
                                                ('legacy', ['--tile=16'])])
def test_translate_cli_matches_official_test_py_output(tmp_path, file_format, flags):
  path, _, name = OFFICIAL_CASES[file_format]
  result = run('translate', f'--torch_checkpoint={path}',
               f'--input={OFFICIAL_OUTPUTS / f"{name}.png"}', f'--output={tmp_path}', *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'translate: written=1 skipped=0' in result.stdout
  ours = np.asarray(Image.open(tmp_path / f'{name}.png'), dtype=int)
  official = np.asarray(Image.open(OFFICIAL_OUTPUTS / f'{name}_fake_{file_format}.png'), dtype=int)
  assert ours.shape == official.shape
  assert np.abs(ours - official).max() <= 1


@needs_parity_files
def test_architecture_is_inferred_from_the_state_dict(legacy_generator):
  module = legacy_generator.module
  assert (module.ngf, module.num_blocks, module.norm, module.output_nc) == (8, 6, 'instance', 3)
  assert legacy_generator.in_channels == 3
  assert 'resnet_6blocks' in legacy_generator.description


def test_a_discriminator_checkpoint_is_not_a_generator(tmp_path):
  path = tmp_path / 'net_D.pth'
  path.write_bytes((pathlib.Path(__file__).parent / 'data' / 'torch_checkpoint_zip.pth')
                   .read_bytes())
  with pytest.raises(ValueError, match='not an official ResnetGenerator'):
    inference.load_generator(torch_checkpoint=path)


# --- a U-Net with batch norm (pix2pix's generator) --------------------------------------------

UNET_PTH = OFFICIAL_OUTPUTS / 'unet_128_ngf8_batchnorm.pth'
UNET_IMAGES = ('photo128a', 'photo128b')


# test.py without and with --eval: batch norm with each image's statistics, or the running ones.
UNET_MODES = {'default': ('', '_outputs'), 'eval': ('_eval', '_eval_outputs')}


def unet_inputs_and_official_outputs(mode='default'):
  """The two test images as one NHWC batch in [-1, 1], and the official network's outputs."""
  images = np.stack(
      [np.asarray(Image.open(OFFICIAL_OUTPUTS / f'{name}.png')) for name in UNET_IMAGES])
  outputs_file = f'unet_128_ngf8_batchnorm{UNET_MODES[mode][1]}.npz'
  with np.load(OFFICIAL_OUTPUTS / outputs_file) as official:
    outputs = np.stack([official[name].transpose(1, 2, 0) for name in UNET_IMAGES])
  return image_io.from_uint8(images), outputs


@pytest.mark.parametrize('mode', UNET_MODES)
def test_translate_cli_matches_official_test_py_output_of_a_unet(tmp_path, mode):
  """Both images go through translate in one batch; test.py translated them one at a time, each
  normalised by its own statistics (or, with --eval, by the file's running statistics), and so
  does translate."""
  inputs = tmp_path / 'in'
  inputs.mkdir()
  for name in UNET_IMAGES:
    (inputs / f'{name}.png').write_bytes((OFFICIAL_OUTPUTS / f'{name}.png').read_bytes())
  result = run('translate', f'--torch_checkpoint={UNET_PTH}', f'--input={inputs}',
               f'--output={tmp_path / "out"}', '--batch_size=2',
               *(['--eval'] if mode == 'eval' else []))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'translate: written=2 skipped=0' in result.stdout
  for name in UNET_IMAGES:
    ours = np.asarray(Image.open(tmp_path / 'out' / f'{name}.png'), dtype=int)
    official = np.asarray(Image.open(OFFICIAL_OUTPUTS /
                                     f'{name}_fake_unet{UNET_MODES[mode][0]}.png'),
                          dtype=int)
    assert ours.shape == official.shape == (128, 128, 3)
    assert np.abs(ours - official).max() <= 1, name


@pytest.mark.parametrize('mode', UNET_MODES)
def test_unet_checkpoint_converted_and_exported_equals_the_official_network(tmp_path, mode):
  """.pth -> convert -> export (ONNX, StableHLO): the official network's outputs within 1e-4,
  in test.py's default mode and with --eval (the running statistics go through every step)."""
  eval_mode = mode == 'eval'
  generator = inference.load_generator(torch_checkpoint=UNET_PTH, eval_mode=eval_mode)
  assert generator.module.architecture == 'unet_128' and generator.module.norm == 'batch'
  assert 'unet_128, ngf 8, batch norm' in generator.description
  x, official = unet_inputs_and_official_outputs(mode)
  with jax.default_matmul_precision('highest'):
    direct = inference.translate_any_size(generator, x)
  assert np.abs(direct - official).max() < 1e-4
  workdir = tmp_path / 'converted'
  result = run('convert', f'--torch_checkpoint={UNET_PTH}', '--crop_size=128',
               f'--output={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.loads((workdir / 'config.json').read_text())['model']
  assert (saved['generator'], saved['ngf'], saved['norm']) == ('unet_128', 8, 'batch')
  converted = inference.load_generator(workdir=workdir, eval_mode=eval_mode)
  with jax.default_matmul_precision('highest'):
    assert np.abs(inference.translate_any_size(converted, x) - official).max() < 1e-4
  for fmt in ('onnx', 'stablehlo'):
    path = tmp_path / f'unet.{fmt}'
    result = run('export', f'--workdir={workdir}', f'--format={fmt}', f'--output={path}',
                 '--platforms=cpu', f'--eval={eval_mode}')
    assert result.returncode == 0, result.stderr[-3000:]
    from cyclegan_jax import export  # pylint: disable=g-import-not-at-top  # Its packages.
    assert np.abs(export.load_artifact(path)(x) - official).max() < 1e-4, fmt
    generator_description = json.loads(export.sidecar_path(path).read_text())['generator']
    assert generator_description['params'] == 655_443  # Without the running statistics.
    assert generator_description['batch_norm_statistics'].startswith(
        'running' if eval_mode else 'per image')


# --- any size, any file -----------------------------------------------------------------------


@needs_parity_files
def test_any_size_is_padded_and_cropped_back(legacy_generator):
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 37, 30, 3)).astype(np.float32)
  y = inference.translate_any_size(legacy_generator, x)
  assert y.shape == x.shape
  # Equal to translating the explicitly reflection-padded image and cropping.
  padded = np.pad(x, ((0, 0), (0, 3), (0, 2), (0, 0)), mode='reflect')
  expected = inference.translate_any_size(legacy_generator, padded)[:, :37, :30]
  # Two compiled programs (the padding inside or outside) may fuse and order float sums
  # differently: ~1e-7 apart at the output's scale of 1, far below the 4e-3 of one grey level.
  np.testing.assert_allclose(y, expected, atol=1e-5)
  with pytest.raises(ValueError, match='at least 8 pixels'):
    inference.translate_any_size(legacy_generator, x[:, :6])


def write_inputs(folder: pathlib.Path) -> dict[str, tuple[int, int]]:
  """Images in every mode the channel policy covers, odd sizes, a subfolder and bad files."""
  rng = np.random.default_rng(1)
  (folder / 'sub').mkdir(parents=True)
  rgb = rng.integers(0, 256, (33, 41, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(folder / 'rgb.jpg')
  Image.fromarray(rgb[:, :, 0]).save(folder / 'grey.png')
  Image.fromarray(np.dstack([rgb, rgb[..., :1]]), mode='RGBA').save(folder / 'sub' / 'rgba.png')
  Image.fromarray(rng.integers(0, 65536, (32, 32), dtype=np.uint16)).save(folder / 'deep.png')
  (folder / 'broken.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
  (folder / 'notes.txt').write_text('not an image')
  Image.fromarray(rgb).save(folder / 'sub' / 'anim.gif')  # An image, of a type not read.
  return {'rgb': (33, 41), 'grey': (33, 41), 'sub/rgba': (33, 41), 'deep': (32, 32)}


@needs_parity_files
def test_folder_of_mixed_images(tmp_path, legacy_generator, caplog):
  inputs = tmp_path / 'in'
  sizes = write_inputs(inputs)
  with caplog.at_level(logging.WARNING):
    jobs = files.find_inputs(str(inputs))
  # Files that are not images of a known type are listed, so a missing output is explained.
  assert any('Ignoring 2 file(s)' in r.getMessage() and 'notes.txt' in r.getMessage() and
             'sub/anim.gif' in r.getMessage() for r in caplog.records)
  assert sorted(str(job.relative) for job in jobs) == [
      'broken.jpg', 'deep.png', 'grey.png', 'rgb.jpg', 'sub/rgba.png']
  output = tmp_path / 'out'
  files.check_outputs(jobs, output, grid=True, overwrite=False)
  written, errors = files.translate_files(legacy_generator, jobs, output, batch_size=2, grid=True)
  assert written == 4 and len(errors) == 1 and 'broken.jpg' in errors[0]
  for name, (height, width) in sizes.items():
    image = np.asarray(Image.open(output / f'{name}.png'))
    assert image.shape == (height, width, 3), name
    grid = np.asarray(Image.open(output / 'grid' / f'{name}.png'))
    assert grid.shape == (height, 2 * width, 3), name
  # The same image alone or in a batch gives the same translation (no batch coupling). XLA
  # blocks the convolutions of a batch of 2 differently from those of one image, so float sums
  # run in another order and differ by a few float32 ulps (~1e-7 at the output's scale of 1);
  # to_uint8 truncates, so such a difference can still cross a grey level: within one.
  single = inference.translate_any_size(
      legacy_generator, image_io.from_uint8(np.asarray(Image.open(inputs / 'rgb.jpg'))[None]))
  written_png = np.asarray(Image.open(output / 'rgb.png'), dtype=int)
  assert np.abs(written_png - image_io.to_uint8(single[0])).max() <= 1
  with pytest.raises(FileExistsError, match='--overwrite'):
    files.check_outputs(jobs, output, grid=False, overwrite=False)
  files.check_outputs(jobs, output, grid=True, overwrite=True)


def test_inputs_that_name_nothing(tmp_path):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='No images in folder'):
    files.find_inputs(str(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError, match='Input not found'):
    files.find_inputs(str(tmp_path / 'absent.jpg'))
  with pytest.raises(ValueError, match='No image files match'):
    files.find_inputs(str(tmp_path / '*.jpg'))


def test_glob_keeps_names_and_rejects_colliding_outputs(tmp_path):
  for name in ('a/x.jpg', 'b/x.jpg', 'b/x.png'):
    (tmp_path / name).parent.mkdir(exist_ok=True)
    Image.new('RGB', (8, 8)).save(tmp_path / name)
  jobs = files.find_inputs(str(tmp_path / '*' / 'x.jpg'))
  assert [str(job.relative) for job in jobs] == ['a/x.jpg', 'b/x.jpg']
  jobs = files.find_inputs(str(tmp_path / 'b'))
  with pytest.raises(ValueError, match='would both be written'):
    files.check_outputs(jobs, tmp_path / 'out', grid=False, overwrite=False)


@needs_parity_files
def test_an_output_never_replaces_an_input_even_with_overwrite(tmp_path):
  inputs = tmp_path / 'in'
  (inputs / 'sub').mkdir(parents=True)
  for name in ('a.png', 'sub/a.png'):
    Image.new('RGB', (8, 8)).save(inputs / name)
  jobs = files.find_inputs(str(inputs))
  for overwrite in (False, True):
    # The input folder itself (also spelt another way), or a subfolder holding inputs.
    for output in (inputs, tmp_path / 'sub' / '..' / 'in', inputs / 'sub'):
      with pytest.raises(FileExistsError, match='would replace the input image'):
        files.check_outputs(jobs, output, grid=False, overwrite=overwrite)
    files.check_outputs(jobs, tmp_path / 'out', grid=True, overwrite=overwrite)
  # Inputs in <output>/grid/: the grid images would replace them.
  (tmp_path / 'g' / 'grid').mkdir(parents=True)
  Image.new('RGB', (8, 8)).save(tmp_path / 'g' / 'grid' / 'x.png')
  jobs = files.find_inputs(str(tmp_path / 'g' / 'grid'))
  files.check_outputs(jobs, tmp_path / 'g', grid=False, overwrite=False)
  with pytest.raises(FileExistsError, match='would replace the input image'):
    files.check_outputs(jobs, tmp_path / 'g', grid=True, overwrite=True)


def test_cli_errors_are_one_clear_line(tmp_path):
  (tmp_path / 'bad.png').write_bytes(b'garbage')
  result = run('translate', f'--torch_checkpoint={LEGACY_PTH}', f'--input={tmp_path / "bad.png"}',
               f'--output={tmp_path / "out"}')
  assert result.returncode == 2
  assert 'cannot read image' in result.stderr and 'no image could be translated' in result.stderr
  result = run('translate', f'--workdir={tmp_path / "nowhere"}', f'--input={tmp_path}',
               f'--output={tmp_path / "out"}')
  assert result.returncode == 2 and 'Error:' in result.stderr
  assert 'Workdir not found' in result.stderr or 'No images' in result.stderr


@needs_parity_files
@pytest.mark.parametrize('flag, message', [('--tile=6', 'tile 6 does not suit this generator'),
                                           ('--max_memory=lots', "'lots' is not a memory size")])
def test_bad_tile_and_memory_flags_are_one_line_errors(tmp_path, flag, message):
  Image.new('RGB', (20, 20)).save(tmp_path / 'x.png')
  result = run('translate', f'--torch_checkpoint={LEGACY_PTH}', f'--input={tmp_path / "x.png"}',
               f'--output={tmp_path / "out"}', flag)
  assert_one_line_user_error(result, message)
  assert not (tmp_path / 'out').exists()


# --- convert ----------------------------------------------------------------------------------


@needs_parity_files
def test_converted_workdir_translates_like_the_checkpoint(tmp_path, legacy_generator):
  output = tmp_path / 'converted'
  result = run('convert', f'--torch_checkpoint={LEGACY_PTH}', '--direction=BtoA', '--crop_size=32',
               f'--output={output}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((output / 'imported.json').read_text()) == {'F': str(LEGACY_PTH)}
  saved = json.loads((output / 'config.json').read_text())
  assert saved['model']['generator'] == 'resnet_6blocks' and saved['model']['ngf'] == 8
  converted = inference.load_generator(workdir=output, direction='BtoA')
  x = np.random.default_rng(2).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
  # The same network, parameters and input shape: the same compiled program, so bitwise equal.
  np.testing.assert_array_equal(inference.translate_any_size(converted, x),
                                inference.translate_any_size(legacy_generator, x))
  with pytest.raises(ValueError, match='holds no AtoB generator'):
    inference.load_generator(workdir=output, direction='AtoB')
  with pytest.raises(FileNotFoundError, match='No checkpoint for step 5'):
    inference.load_generator(workdir=output, direction='BtoA', step=5)
  # Never written over.
  again = run('convert', f'--torch_checkpoint={LEGACY_PTH}', f'--output={output}')
  assert again.returncode == 2 and 'already holds checkpoints' in again.stderr


@needs_parity_files
def test_official_run_folder_maps_names(tmp_path):
  for name in ('G_A', 'G_B'):
    (tmp_path / f'latest_net_{name}.pth').symlink_to(LEGACY_PTH)
  files = runs.official_run_files(tmp_path, 'latest')
  assert files == {'G': tmp_path / 'latest_net_G_A.pth', 'F': tmp_path / 'latest_net_G_B.pth'}
  with pytest.raises(FileNotFoundError, match='7_net_G_A.pth'):
    runs.official_run_files(tmp_path, '7')


@needs_parity_files
def test_an_official_pix2pix_run_converts_into_a_pix2pix_workdir(tmp_path):
  """<epoch>_net_G.pth and _net_D.pth (U-Net and conditional PatchGAN, batch norm): a pix2pix
  workdir whose G translates as the file does, in both test modes, with D's weights and running
  statistics in its train state."""
  from cyclegan_jax import checkpointing  # pylint: disable=g-import-not-at-top
  d_npz = PARITY_DIR / 'D_basic_cond6_ndf8_batchnorm_64_randbias.npz'
  folder = tmp_path / 'facades_pix2pix'
  folder.mkdir()
  for name in ('G', 'D'):  # Only the names matter to the discovery.
    (folder / f'latest_net_{name}.pth').symlink_to(UNET_PTH)
  assert runs.official_run_files(folder, 'latest') == {
      'G': folder / 'latest_net_G.pth',
      'D': folder / 'latest_net_D.pth'
  }
  from cyclegan_jax.torch_io import pth  # pylint: disable=g-import-not-at-top
  state_dicts = {'G': pth.load_state_dict(UNET_PTH), 'D': load_npz_state_dict(d_npz)}
  params, batch_stats, config = runs.convert_state_dicts(state_dicts)
  assert config.model_type == 'pix2pix' and config.data.dataset_mode == 'aligned'
  assert (config.model.generator, config.model.discriminator, config.model.ndf) == ('unet_128',
                                                                                    'basic', 8)
  workdir = runs.write_workdir(tmp_path / 'converted', params, config, {
      'G': 'g',
      'D': 'd'
  }, batch_stats)
  state, _ = checkpointing.restore_train_state(workdir)
  assert set(state.params) == set(state.batch_stats) == {'G', 'D'}
  np.testing.assert_array_equal(state.batch_stats['D']['layer_1']['norm']['var'],
                                state_dicts['D']['model.3.running_var'])
  x, _ = unet_inputs_and_official_outputs()
  for eval_mode in (False, True):
    converted = inference.load_generator(workdir=workdir, eval_mode=eval_mode)
    direct = inference.load_generator(torch_checkpoint=UNET_PTH, eval_mode=eval_mode)
    np.testing.assert_allclose(inference.translate_any_size(converted, x),
                               inference.translate_any_size(direct, x),
                               atol=1e-6)
  unconditional = {**state_dicts['D'], 'model.0.weight': state_dicts['D']['model.0.weight'][:, :3]}
  with pytest.raises(ValueError, match='takes 3 channels.*stacked on channels: 6'):
    runs.convert_state_dicts({'G': state_dicts['G'], 'D': unconditional})


@needs_parity_files
def test_discriminators_convert_with_their_architecture():
  state_dict = load_npz_state_dict(PARITY_DIR / 'D_basic_ndf8_64_randbias.npz')
  generator = load_npz_state_dict(PARITY_DIR / 'G_resnet_6blocks_ngf8_32_randbias.npz')
  params, _, config = runs.convert_state_dicts({'D_Y': state_dict, 'G': generator})
  assert set(params) == {'D_Y', 'G'}
  assert (config.model.ndf, config.model.discriminator, config.model.ngf) == (8, 'basic', 8)
  assert config.model.generator == 'resnet_6blocks'
  with pytest.raises(ValueError, match='the D_X state_dict is not an NLayerDiscriminator'):
    runs.convert_state_dicts({'D_X': generator})
