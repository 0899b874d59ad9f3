"""Config files load, and bad values are rejected before any compute, naming the field."""

import pathlib
import subprocess
import sys

import pytest

import conftest
from cyclegan_jax import config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPER_CONFIGS = ('monet', 'horse2zebra', 'apple2orange', 'summer2winter_yosemite', 'cezanne',
                 'ukiyoe', 'vangogh', 'maps', 'facades', 'iphone2dslr_flower')


load = conftest.load_config


@pytest.mark.parametrize('name', PAPER_CONFIGS)
def test_paper_configs_have_the_paper_recipe(name):
  config = load(name)
  config_lib.validate(config)
  assert config.data.crop_size == 256 and config.data.load_size == 286
  assert config.model.generator == 'resnet_9blocks' and config.model.discriminator == 'basic'
  assert (config.num_epochs, config.num_epochs_decay, config.batch_size) == (100, 100, 1)
  assert (config.lambda_cycle, config.lambda_identity, config.pool_size) == (10.0, 0.5, 50)
  assert (config.learning_rate, config.beta1, config.beta2) == (2e-4, 0.5, 0.999)
  assert config.gan_mode == 'lsgan' and config.model.norm == 'instance'
  assert config.model.ngf == 64 and config.model.ndf == 64
  assert config.model.init_type == 'normal' and config.model.init_gain == 0.02


PAPER_CONFIGS = {
    'apple2orange': 'apple2orange',
    'cezanne': 'cezanne2photo',
    'facades': 'facades',
    'horse2zebra': 'horse2zebra',
    'iphone2dslr_flower': 'iphone2dslr_flower',
    'maps': 'maps',
    'monet': 'monet2photo',
    'summer2winter_yosemite': 'summer2winter_yosemite',
    'ukiyoe': 'ukiyoe2photo',
    'vangogh': 'vangogh2photo',
}


@pytest.mark.parametrize('name, dataset', PAPER_CONFIGS.items())
def test_paper_configs_read_their_tfds_dataset_or_folder(name, dataset):
  config = load(name)
  config_lib.validate(config)
  assert config.data.source == 'tfds'
  assert config.data.tfds_name == f'cycle_gan/{dataset}'
  assert config.data.root == f'datasets/{dataset}'
  assert f'--name={dataset} ' in (ROOT / 'configs' / f'{name}.py').read_text()


def test_folder_and_tfds_sources_need_their_location():
  config = load('monet')
  config.data.source = 'folder'
  config.data.root = ''
  with pytest.raises(ValueError, match=r'config\.data\.root'):
    config_lib.validate(config)
  config.data.source = 'tfds'
  config.data.tfds_name = ''
  with pytest.raises(ValueError, match=r'config\.data\.tfds_name'):
    config_lib.validate(config)


@pytest.mark.parametrize('preprocess', ['none', 'scale_width'])
def test_uncropped_preprocessing_cannot_use_pools(preprocess):
  config = load('monet')
  config.data.preprocess = preprocess
  with pytest.raises(ValueError, match=r'config\.data\.preprocess.*pool_size=0'):
    config_lib.validate(config)
  config.pool_size = 0
  config_lib.validate(config)


@pytest.mark.parametrize('name', ('default', 'tiny'))
def test_offline_configs_are_valid(name):
  config = load(name)
  config_lib.validate(config)
  assert config.data.source == 'embedded'
  assert config.lambda_identity == 0.0


@pytest.mark.parametrize(
    'field, value, message',
    [
        ('model.generator', 'unet_100', 'model.generator'),
        ('model.generator', 'unet_16', 'model.generator'),
        ('model.generator', 'resnet_0blocks', 'model.generator'),
        ('model.generator', 'unet_512', 'data.crop_size'),  # monet crops 256 px.
        ('model.discriminator', 'pixels', 'model.discriminator'),
        ('model.norm', 'layer', 'model.norm'),
        ('model.init_type', 'uniform', 'model.init_type'),
        ('model.channels_A', 4, 'model.channels_A'),
        ('lambda_cycle', -1.0, 'lambda_cycle'),
        ('lambda_identity', -0.5, 'lambda_identity'),
        ('lambda_gp', -1.0, 'lambda_gp'),
        ('r1_gamma', float('nan'), 'r1_gamma'),
        ('gan_mode', 'wgan', 'gan_mode'),
        ('lambda_cycle', float('nan'), 'lambda_cycle'),
        ('learning_rate', 0.0, 'learning_rate'),
        ('beta1', 1.0, 'beta1'),
        ('gan_mode', 'wgan', 'gan_mode'),
        ('lr_policy', 'plateau', 'lr_policy'),
        ('pool_size', -1, 'pool_size'),
        ('batch_size', 0, 'batch_size'),
        ('num_epochs', -1, 'num_epochs'),
        ('data.crop_size', 300, 'data.crop_size'),  # Larger than load_size 286.
        ('data.crop_size', 254, 'data.crop_size'),  # Not a multiple of 4.
        ('data.source', 'tfrecord', 'data.source'),
        ('data.preprocess', 'scale_height', 'data.preprocess'),
        ('data.num_workers', -1, 'data.num_workers'),
        ('compute_dtype', 'float16', 'compute_dtype'),
        ('checkpoint_every_steps', 0, 'checkpoint_every_steps'),
    ])
def test_invalid_values_name_the_field(field, value, message):
  config = load('monet')
  section, _, key = field.rpartition('.')
  (config[section] if section else config)[key] = value
  with pytest.raises(ValueError, match=f'config.{message}'.replace('.', r'\.')):
    config_lib.validate(config)


def test_batch_must_divide_over_devices():
  config = load('monet')
  config.batch_size = 6
  config_lib.validate(config, num_devices=3)
  with pytest.raises(ValueError, match=r'config\.batch_size.*4 devices'):
    config_lib.validate(config, num_devices=4)


def test_identity_loss_needs_matching_channels():
  config = load('monet')
  config.model.channels_B = 1
  with pytest.raises(ValueError, match=r'config\.lambda_identity'):
    config_lib.validate(config)
  config.lambda_identity = 0.0
  config_lib.validate(config)


def test_crop_too_small_for_discriminator():
  config = load('tiny')
  config.data.crop_size = 16  # 16 → 8 → 4 → 2 → 1 → 0 patches for a 3-layer PatchGAN.
  with pytest.raises(ValueError, match=r'config\.data\.crop_size.*discriminator'):
    config_lib.validate(config)
  config.model.discriminator, config.model.n_layers_D = 'n_layers', 2
  config_lib.validate(config)
  config.data.crop_size = 4
  config.model.discriminator = 'pixel'  # A score per pixel: any crop.
  config_lib.validate(config)


def test_unet_generators_validate_with_fitting_crops():
  config = load('monet')
  for name in ('unet_256', 'unet_128', 'unet_32'):  # Crops of 256 px are multiples of each.
    config.model.generator = name
    config_lib.validate(config)
  config.data.preprocess = 'scale_width'  # Images of any size: no U-Net fits all.
  config.pool_size = 0
  with pytest.raises(ValueError, match=r'config\.data\.preprocess.*unet_32.*multiples of 32'):
    config_lib.validate(config)


def test_discriminator_output_size_matches_the_spec():
  assert config_lib.discriminator_output_size(256, 3) == 30
  assert config_lib.discriminator_output_size(128, 3) == 14
  assert config_lib.discriminator_output_size(64, 3) == 6
  assert config_lib.discriminator_output_size(64, 0) == 64  # The pixel discriminator.


def test_override_typo_fails_with_the_field_name(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'cyclegan_jax.main', '--config=configs/tiny.py',
       f'--workdir={tmp_path / "run"}', '--config.lamda_cycle=5'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  conftest.assert_one_line_user_error(result, 'no such config field', 'lamda_cycle')
  assert not (tmp_path / 'run').exists()


def test_architecture_mismatch_is_listed():
  saved = load('tiny').to_dict()
  config = load('tiny')
  config.model.ngf = 16
  assert config_lib.architecture_mismatches(saved, config) == ['model.ngf: saved 8, now 16']
  config.model.ngf = 8
  config.num_train_steps = 100  # Not an architecture field.
  assert not config_lib.architecture_mismatches(saved, config)


def test_switching_every_loss_term_off_is_an_error():
  config = load('default')
  config.update(dict(use_gan_G=False, use_gan_F=False, use_cycle_forward=False,
                     use_cycle_backward=False))
  with pytest.raises(ValueError, match=r'config\.use_gan_G.*nothing would be trained'):
    config_lib.validate(config)
  config.lambda_identity = 0.5  # Identity alone trains something.
  config_lib.validate(config)


def test_a_run_saved_with_the_old_channel_field_names_reads_and_resumes():
  config = load('tiny')
  config.model.channels_B = 1
  saved = config.to_dict()
  saved['model']['input_nc'] = saved['model'].pop('channels_A')
  saved['model']['output_nc'] = saved['model'].pop('channels_B')
  upgraded = config_lib.upgrade_saved_config(saved)
  assert upgraded['model']['channels_A'] == 3 and upgraded['model']['channels_B'] == 1
  assert 'input_nc' not in upgraded['model'] and 'input_nc' in saved['model']  # A copy.
  assert not config_lib.architecture_mismatches(upgraded, config)
