"""The torch-free .pth reader against files written by torch.save (tests/data) and bad files."""

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import load_npz_state_dict
from cyclegan_jax.torch_io import pth

DATA = Path(__file__).parent / 'data'
PARITY_DIR = Path(__file__).resolve().parents[1].parent / 'shared' / 'reference' / 'torch_parity'
FORMATS = ('zip', 'legacy')


@pytest.mark.parametrize('file_format', FORMATS)
def test_reads_every_dtype_layout_and_nesting(file_format):
  state_dict = pth.load_state_dict(DATA / f'torch_checkpoint_{file_format}.pth')
  expected = np.load(DATA / 'torch_checkpoint_expected.npz')
  assert sorted(state_dict) == sorted(expected.files)
  for key in expected.files:
    np.testing.assert_array_equal(state_dict[key], expected[key], err_msg=key)
    assert state_dict[key].dtype == expected[key].dtype, key
    assert state_dict[key].flags.writeable, key


@pytest.mark.parametrize('file_format', FORMATS)
def test_load_keeps_non_tensor_entries(file_format):
  contents = pth.load(DATA / f'torch_checkpoint_{file_format}.pth')
  assert contents['epoch'] == 7
  assert contents['state_dict']['transposed'].shape == (6, 4)


@pytest.mark.skipif(not PARITY_DIR.is_dir(), reason='shared reference files not present')
@pytest.mark.parametrize('pth_file, npz', [
    ('G_resnet_9blocks_ngf8_64_randbias.pth', 'G_resnet_9blocks_ngf8_64_randbias.npz'),
    ('G_resnet_6blocks_ngf8_32_randbias_legacy.pth', 'G_resnet_6blocks_ngf8_32_randbias.npz'),
])
def test_official_generator_checkpoints_equal_their_npz_twins(pth_file, npz):
  state_dict = pth.load_state_dict(PARITY_DIR / pth_file)
  reference = load_npz_state_dict(PARITY_DIR / npz)
  for key, value in reference.items():
    np.testing.assert_array_equal(state_dict[key], value, err_msg=key)
  # The legacy file also carries InstanceNorm running statistics, which nothing else has.
  assert all(
      key.endswith(('running_mean', 'running_var')) for key in set(state_dict) - set(reference))


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='not found'):
    pth.load_state_dict(tmp_path / 'absent.pth')


def test_not_a_checkpoint(tmp_path):
  path = tmp_path / 'photo.pth'
  path.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(100))
  with pytest.raises(pth.TorchCheckpointError, match='not a PyTorch checkpoint'):
    pth.load_state_dict(path)


def test_zip_without_data_pkl(tmp_path):
  path = tmp_path / 'other.zip'
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('readme.txt', 'hello')
  with pytest.raises(pth.TorchCheckpointError, match='data.pkl'):
    pth.load_state_dict(path)


@pytest.mark.parametrize('file_format', FORMATS)
def test_truncated_file(tmp_path, file_format):
  data = (DATA / f'torch_checkpoint_{file_format}.pth').read_bytes()
  path = tmp_path / 'truncated.pth'
  path.write_bytes(data[:len(data) - 40])
  with pytest.raises((pth.TorchCheckpointError, zipfile.BadZipFile)):
    pth.load_state_dict(path)


class _RunsCode:

  def __reduce__(self):
    return (print, ('this must never run',))


def test_refuses_pickles_that_ask_for_code(tmp_path, capsys):
  path = tmp_path / 'evil.pth'
  with open(path, 'wb') as file:
    for header in (pth.LEGACY_MAGIC_NUMBER, pth.LEGACY_PROTOCOL_VERSION, {'little_endian': True}):
      pickle.dump(header, file, protocol=2)
    pickle.dump({'weight': _RunsCode()}, file, protocol=2)
  with pytest.raises(pth.TorchCheckpointError, match='asks for .*print'):
    pth.load_state_dict(path)
  assert 'must never run' not in capsys.readouterr().out
