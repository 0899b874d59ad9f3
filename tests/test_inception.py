"""The Flax FID Inception against pytorch-fid on seeded random weights, and weight loading.

tests/data/fid_inception_reference.npz holds pytorch-fid's outputs (experiments/
make_fid_reference.py); the weights are regenerated here by
`experiments.make_fid_reference.random_state_dict`.
All forwards share one compiled network (batch 3).
"""

from pathlib import Path

import jax
import numpy as np
import pytest

from experiments.make_fid_reference import random_state_dict
from cyclegan_jax.evaluation import inception

REFERENCE = Path(__file__).parent / 'data' / 'fid_inception_reference.npz'
BATCH = 3
NUM_BASIC_CONVS = 94


def _relative_error(actual, expected) -> float:
  return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


@pytest.fixture(scope='module')
def reference():
  with np.load(REFERENCE) as data:
    return {key: data[key] for key in data.files}


@pytest.fixture(scope='module')
def layout(reference):
  """{key: shape} of the weight file as torchvision builds it (with num_batches_tracked)."""
  return {
      str(key): tuple(int(n) for n in shape[:ndim])
      for key, shape, ndim in zip(reference['keys'], reference['shapes'], reference['ndims'])
  }


@pytest.fixture(scope='module')
def state_dict(reference, layout):
  return random_state_dict(layout, int(reference['seed']))


@pytest.fixture(scope='module')
def features(state_dict):
  return inception.feature_extractor(inception.variables_from_state_dict(state_dict), BATCH)


@pytest.fixture(scope='module')
def large(reference):
  return reference['large'].astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def test_layout_matches_pytorch_fid(layout):
  without_buffers = {k: v for k, v in layout.items() if not k.endswith('num_batches_tracked')}
  assert inception.state_dict_shapes() == without_buffers
  assert len(without_buffers) == 5 * NUM_BASIC_CONVS + 2


def test_module_keys_map_to_weight_file_keys(reference, layout):
  module_keys = [str(key) for key in reference['module_keys']]
  mapped = [inception.canonical_key(key) for key in module_keys]
  assert len(set(mapped)) == len(mapped)
  assert set(mapped) == set(layout) - set(inception.IGNORED_KEYS)


def test_every_entry_is_used_exactly_once(state_dict):
  variables = inception.variables_from_state_dict(state_dict)
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  names = {
      'kernel': 'conv.weight',
      'scale': 'bn.weight',
      'bias': 'bn.bias',
      'mean': 'bn.running_mean',
      'var': 'bn.running_var'
  }
  seen = set()
  for path, leaf in leaves:
    keys = [entry.key for entry in path]
    torch_key = '.'.join(keys[1:-2] + [names[keys[-1]]])
    source = state_dict[torch_key]
    if keys[-1] == 'kernel':
      source = source.transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(np.asarray(leaf), source, err_msg=torch_key)
    seen.add(torch_key)
  assert len(seen) == len(leaves) == 5 * NUM_BASIC_CONVS
  unused = set(state_dict) - seen
  assert all(k.endswith('num_batches_tracked') or k.startswith('fc.') for k in unused)


def test_bad_state_dicts_raise_with_names(state_dict):
  missing = dict(state_dict)
  del missing['Mixed_6c.branch7x7dbl_4.bn.running_var']
  with pytest.raises(ValueError, match=r'missing Mixed_6c\.branch7x7dbl_4\.bn\.running_var'):
    inception.variables_from_state_dict(missing)
  extra = dict(state_dict, **{'AuxLogits.conv0.conv.weight': np.zeros((128, 768, 1, 1))})
  with pytest.raises(ValueError, match=r'unexpected AuxLogits\.conv0\.conv\.weight'):
    inception.variables_from_state_dict(extra)
  misshapen = dict(state_dict, **{'Mixed_5b.branch_pool.conv.weight': np.zeros((64, 192, 1, 1))})
  with pytest.raises(ValueError, match=r'wrong shape Mixed_5b\.branch_pool\.conv\.weight'):
    inception.variables_from_state_dict(misshapen)
  torchvision = dict(state_dict, **{'fc.weight': np.zeros((1000, 2048))})
  with pytest.raises(ValueError, match='torchvision'):
    inception.variables_from_state_dict(torchvision)
  duplicated = dict(state_dict,
                    **{'blocks.0.0.conv.weight': state_dict['Conv2d_1a_3x3.conv.weight']})
  with pytest.raises(ValueError, match='duplicates'):
    inception.variables_from_state_dict(duplicated)


def test_optional_entries_may_be_absent(state_dict):
  required = {
      k: v
      for k, v in state_dict.items()
      if not k.endswith('num_batches_tracked') and not k.startswith('fc.')
  }
  a = jax.tree.leaves(inception.variables_from_state_dict(required))
  b = jax.tree.leaves(inception.variables_from_state_dict(state_dict))
  assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_resize_matches_torch_interpolate(reference):
  for key in (k for k in reference if k.startswith('resize_') and k != 'resize_input'):
    height, width = (int(n) for n in key.removeprefix('resize_').split('x'))
    resized = inception.resize_bilinear(reference['resize_input'], (height, width))
    np.testing.assert_allclose(resized, reference[key], atol=2e-6, err_msg=key)
  same = inception.resize_bilinear(reference['resize_input'], (13, 17))
  np.testing.assert_array_equal(same, reference['resize_input'])


def test_features_match_pytorch_fid(reference, features, large):
  small = features(reference['small'])  # 64x64: resized to 299 inside.
  native = features(large)
  assert small.shape == (2, 2048) and native.shape == (1, 2048)
  assert small.dtype == np.float32
  actual = np.concatenate([small, native])
  error = _relative_error(actual, reference['features'])
  assert error < 1e-4, error
  # The features are not degenerate: they differ between images.
  assert _relative_error(actual[0], actual[1]) > 0.01


def test_blocks_match_pytorch_fid(reference, state_dict, large):
  variables = inception.variables_from_state_dict(state_dict)
  images = np.concatenate([inception.resize_bilinear(reference['small']), large])
  blocks = jax.jit(lambda v, x: inception.FIDInceptionV3().apply(v, x, return_blocks=True))(
      variables, images)
  for index, (block, size) in enumerate(zip(blocks[:3], (73, 35, 17))):
    assert block.shape[1:3] == (size, size)
    error = _relative_error(np.mean(block, axis=(1, 2)), reference[f'block{index}_mean'])
    assert error < 1e-4, (index, error)
  # Activations keep their scale through the random network (neither vanish nor explode).
  assert np.all((reference['block_std'] > 0.3) & (reference['block_std'] < 10))


def test_batches_are_chunked_and_padded(reference, features):
  small = reference['small']
  both = features(small)
  four = features(np.concatenate([small, small[::-1]]))  # Chunks of 3 and 1 (padded).
  np.testing.assert_allclose(four, np.concatenate([both, both[::-1]]), rtol=1e-5, atol=1e-5)
  gray = features(small[..., :1])
  np.testing.assert_allclose(gray, features(np.repeat(small[..., :1], 3, axis=-1)), rtol=1e-6)
  assert features(small[:0]).shape == (0, 2048)
  with pytest.raises(ValueError, match='NHWC'):
    features(small[0])


def test_load_fid_inception_from_npz_with_module_keys(tmp_path, reference, state_dict, large):
  inverse = {inception.canonical_key(str(k)): str(k) for k in reference['module_keys']}
  path = tmp_path / 'inception.npz'
  np.savez(path, **{inverse.get(key, key): value for key, value in state_dict.items()})
  features = inception.load_fid_inception(path, batch_size=BATCH)
  error = _relative_error(features(large), reference['features'][2:])
  assert error < 1e-4, error


def test_pth_files_are_read_with_the_pth_reader(tmp_path, monkeypatch, state_dict):
  from cyclegan_jax.torch_io import pth  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'pt_inception-2015-12-05-6726825d.pth'
  path.write_bytes(b'')
  read = []
  monkeypatch.setattr(pth, 'load_state_dict', lambda p: read.append(str(p)) or dict(state_dict))
  loaded = inception.load_state_dict(path)
  assert read == [str(path)] and loaded.keys() == state_dict.keys()


def test_missing_weights_file_names_the_download(tmp_path):
  with pytest.raises(FileNotFoundError, match='pt_inception-2015-12-05-6726825d.pth'):
    inception.load_fid_inception(tmp_path / 'absent.pth')
