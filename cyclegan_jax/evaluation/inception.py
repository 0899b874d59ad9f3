"""The FID Inception-v3 network (Flax linen, NHWC) and its 2048-d pool3 features.

This is the network that pytorch-fid, clean-fid and jax-fid compute FID with: the TensorFlow
Inception graph of 2015-12-05, not torchvision's Inception v3. It has the torchvision layer
names and shapes (1008 classes) but differs in its blocks:
- Mixed_5b/5c/5d, Mixed_6b..6e and Mixed_7b average-pool their pool branch without counting the
  zero padding (TensorFlow's average pool; `count_include_pad=False` in PyTorch);
- Mixed_7c max-pools its pool branch (3x3, stride 1, padding 1) instead of average-pooling;
- every conv is bias-free and followed by a BatchNorm (eps 1e-3, running statistics) and a ReLU.

`FIDInceptionV3` maps 299x299 images in [-1, 1] to the global average pool of Mixed_7c. Like
pytorch-fid's `InceptionV3(resize_input=True, normalize_input=True)` given the same images in
[0, 1], `load_fid_inception` first resizes images of any size to 299x299 bilinearly, as
`F.interpolate(mode='bilinear', align_corners=False)` without antialiasing does (`resize_bilinear`;
resizing commutes with the affine map between [0, 1] and [-1, 1]).

Weights. Nothing is downloaded at run time. Use pytorch-fid's weight file, the release asset

    https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

(`FID_WEIGHTS_URL`, the same address as in pytorch-fid's source; the 8 hex digits in the name
start its SHA-256). It is a PyTorch state_dict, read here without PyTorch by
`pth.load_state_dict`. A `.npz` holding the same state_dict (key -> array in PyTorch
layouts, e.g. `np.savez(path, **{k: v.numpy() for k, v in state_dict.items()})`) works too, with
the keys of that file (`Conv2d_1a_3x3.conv.weight`, ..., `fc.bias`) or of pytorch-fid's
`InceptionV3` module (`blocks.0.0.conv.weight`, ...). `num_batches_tracked` buffers and the
classifier (`fc.*`) are accepted and unused; any other unknown, missing or misshapen entry is an
error that names it.

Parameter tree: one entry per PyTorch `BasicConv2d`, at the PyTorch path (`Conv2d_1a_3x3`,
`Mixed_5b/branch1x1`, ...), holding `conv/kernel` (HWIO) in 'params', `bn/scale` and `bn/bias`
in 'params' and `bn/mean` and `bn/var` in 'batch_stats'.
"""

import functools
import os
import re
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cyclegan_jax import errors

FID_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
                   'pt_inception-2015-12-05-6726825d.pth')
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # The FID graph's classifier; torchvision's Inception v3 has 1000.
BN_EPS = 1e-3
DEFAULT_BATCH_SIZE = 16

# The modules of pytorch-fid's `InceptionV3.blocks[i]`, in order (None: a parameter-free pool).
PYTORCH_FID_BLOCKS = (
    ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', None),
    ('Conv2d_3b_1x1', 'Conv2d_4a_3x3', None),
    ('Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a', 'Mixed_6b', 'Mixed_6c', 'Mixed_6d',
     'Mixed_6e'),
    ('Mixed_7a', 'Mixed_7b', 'Mixed_7c', None),
)
IGNORED_KEYS = ('fc.weight', 'fc.bias')
# PyTorch BasicConv2d entries and where they go: (collection, Flax path below the BasicConv).
_ENTRIES = {
    'conv.weight': ('params', ('conv', 'kernel')),
    'bn.weight': ('params', ('bn', 'scale')),
    'bn.bias': ('params', ('bn', 'bias')),
    'bn.running_mean': ('batch_stats', ('bn', 'mean')),
    'bn.running_var': ('batch_stats', ('bn', 'var')),
}
_NUM_BATCHES_TRACKED = '.bn.num_batches_tracked'
_BLOCK_KEY = re.compile(r'^blocks\.(\d+)\.(\d+)\.(.*)$')

Padding = tuple[int, int]


class BasicConv(nn.Module):
  """Bias-free conv, BatchNorm with running statistics (eps 1e-3), ReLU: PyTorch's BasicConv2d."""
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: Padding = (0, 0)
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    (pad_h, pad_w) = self.padding
    x = nn.Conv(self.features,
                self.kernel_size,
                strides=self.strides,
                padding=((pad_h, pad_h), (pad_w, pad_w)),
                use_bias=False,
                precision=self.precision,
                name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name='bn')(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """TensorFlow's 3x3 stride-1 'SAME' average pool: the padding is not counted."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int = 1) -> jax.Array:
  padding = ((1, 1), (1, 1)) if stride == 1 else 'VALID'
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nn.Module):
  """Mixed_5b/5c/5d (35x35): 1x1, 5x5, double 3x3 and average-pool branches."""
  pool_features: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    branch1x1 = conv(64, (1, 1), name='branch1x1')(x)
    branch5x5 = conv(48, (1, 1), name='branch5x5_1')(x)
    branch5x5 = conv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(branch5x5)
    branch3x3dbl = conv(64, (1, 1), name='branch3x3dbl_1')(x)
    branch3x3dbl = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(branch3x3dbl)
    branch_pool = conv(self.pool_features, (1, 1), name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: 35x35 -> 17x17 by a stride-2 3x3, a double 3x3 and a max pool."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    branch3x3 = conv(384, (3, 3), strides=2, name='branch3x3')(x)
    branch3x3dbl = conv(64, (1, 1), name='branch3x3dbl_1')(x)
    branch3x3dbl = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = conv(96, (3, 3), strides=2, name='branch3x3dbl_3')(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e (17x17): factorised 7x7 branches of `channels_7x7` inner channels."""
  channels_7x7: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    c7 = self.channels_7x7
    branch1x1 = conv(192, (1, 1), name='branch1x1')(x)
    branch7x7 = conv(c7, (1, 1), name='branch7x7_1')(x)
    branch7x7 = conv(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(branch7x7)
    branch7x7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(branch7x7)
    branch7x7dbl = conv(c7, (1, 1), name='branch7x7dbl_1')(x)
    branch7x7dbl = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(branch7x7dbl)
    branch7x7dbl = conv(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(branch7x7dbl)
    branch7x7dbl = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(branch7x7dbl)
    branch7x7dbl = conv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(branch7x7dbl)
    branch_pool = conv(192, (1, 1), name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: 17x17 -> 8x8 by stride-2 convs and a max pool."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    branch3x3 = conv(192, (1, 1), name='branch3x3_1')(x)
    branch3x3 = conv(320, (3, 3), strides=2, name='branch3x3_2')(branch3x3)
    branch7x7x3 = conv(192, (1, 1), name='branch7x7x3_1')(x)
    branch7x7x3 = conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(branch7x7x3)
    branch7x7x3 = conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(branch7x7x3)
    branch7x7x3 = conv(192, (3, 3), strides=2, name='branch7x7x3_4')(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/7c (8x8): split 1x3/3x1 branches; `pool` 'avg' (7b) or 'max' (7c)."""
  pool: str
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    branch1x1 = conv(320, (1, 1), name='branch1x1')(x)
    branch3x3 = conv(384, (1, 1), name='branch3x3_1')(x)
    branch3x3 = jnp.concatenate((
        conv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(branch3x3),
        conv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(branch3x3),
    ), -1)
    branch3x3dbl = conv(448, (1, 1), name='branch3x3dbl_1')(x)
    branch3x3dbl = conv(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = jnp.concatenate((
        conv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(branch3x3dbl),
        conv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(branch3x3dbl),
    ), -1)
    if self.pool == 'avg':
      pooled = _avg_pool_3x3(x)
    elif self.pool == 'max':
      pooled = _max_pool_3x3(x)
    else:
      raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
    branch_pool = conv(192, (1, 1), name='branch_pool')(pooled)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class FIDInceptionV3(nn.Module):
  """[N, 299, 299, 3] images in [-1, 1] -> [N, 2048] pool3 features (module docstring).

  With `return_blocks=True` it returns the outputs of pytorch-fid's four blocks instead: the
  first and second max pools ([N, 73, 73, 64], [N, 35, 35, 192]), Mixed_6e ([N, 17, 17, 768]) and
  the pool3 features ([N, 2048]).
  """
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array, return_blocks: bool = False):
    conv = functools.partial(BasicConv, precision=self.precision)
    p = self.precision
    x = conv(32, (3, 3), strides=2, name='Conv2d_1a_3x3')(x)
    x = conv(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = conv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    block0 = x = _max_pool_3x3(x, stride=2)
    x = conv(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = conv(192, (3, 3), name='Conv2d_4a_3x3')(x)
    block1 = x = _max_pool_3x3(x, stride=2)
    x = InceptionA(32, precision=p, name='Mixed_5b')(x)
    x = InceptionA(64, precision=p, name='Mixed_5c')(x)
    x = InceptionA(64, precision=p, name='Mixed_5d')(x)
    x = InceptionB(precision=p, name='Mixed_6a')(x)
    x = InceptionC(128, precision=p, name='Mixed_6b')(x)
    x = InceptionC(160, precision=p, name='Mixed_6c')(x)
    x = InceptionC(160, precision=p, name='Mixed_6d')(x)
    block2 = x = InceptionC(192, precision=p, name='Mixed_6e')(x)
    x = InceptionD(precision=p, name='Mixed_7a')(x)
    x = InceptionE('avg', precision=p, name='Mixed_7b')(x)
    x = InceptionE('max', precision=p, name='Mixed_7c')(x)
    features = jnp.mean(x, axis=(1, 2))
    return (block0, block1, block2, features) if return_blocks else features


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] weights of PyTorch's bilinear resize (align_corners=False, no antialias).

  Output pixel i samples the input at (i + 0.5) * in_size / out_size - 0.5, clamped below at 0,
  between its two neighbours (the upper one clamped to the last pixel).
  """
  weights = np.zeros((out_size, in_size), np.float64)
  source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  source = np.maximum(source, 0.0)
  lower = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  upper = np.minimum(lower + 1, in_size - 1)
  frac = source - lower
  rows = np.arange(out_size)
  np.add.at(weights, (rows, lower), 1.0 - frac)
  np.add.at(weights, (rows, upper), frac)
  return weights.astype(np.float32)


def resize_bilinear(images: jax.Array, size: Sequence[int] | int = INPUT_SIZE) -> jax.Array:
  """NHWC `images` resized to `size` (an int: square) as PyTorch's bilinear F.interpolate."""
  height, width = (size, size) if isinstance(size, int) else tuple(size)
  x = images.astype(jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  if x.shape[1] != height:
    x = jnp.einsum('oh,nhwc->nowc', bilinear_matrix(x.shape[1], height), x, precision=hi)
  if x.shape[2] != width:
    x = jnp.einsum('ow,nhwc->nhoc', bilinear_matrix(x.shape[2], width), x, precision=hi)
  return x


@functools.lru_cache(maxsize=None)
def _abstract_variables() -> dict:
  shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return jax.tree.map(lambda leaf: leaf.shape, shapes)


def _basic_conv_paths() -> list[tuple[str, ...]]:
  """Flax paths of every BasicConv (the parents of a 'conv' entry), in network order."""
  paths = []

  def visit(tree: Mapping, path: tuple[str, ...]):
    if 'conv' in tree:
      paths.append(path)
      return
    for name, subtree in tree.items():
      visit(subtree, path + (name,))

  visit(_abstract_variables()['params'], ())
  return paths


def state_dict_shapes(include_classifier: bool = True) -> dict[str, tuple[int, ...]]:
  """{key: PyTorch shape} of pytorch-fid's weight file, without `num_batches_tracked` buffers."""
  variables = _abstract_variables()
  shapes = {}
  for path in _basic_conv_paths():
    prefix = '.'.join(path)
    for torch_name, (collection, leaf) in _ENTRIES.items():
      shape = _get(variables[collection], path + leaf)
      if leaf[-1] == 'kernel':  # HWIO -> OIHW
        shape = (shape[3], shape[2], shape[0], shape[1])
      shapes[f'{prefix}.{torch_name}'] = tuple(shape)
  if include_classifier:
    shapes['fc.weight'] = (NUM_CLASSES, FEATURE_DIM)
    shapes['fc.bias'] = (NUM_CLASSES,)
  return shapes


def _get(tree: Mapping, path: tuple[str, ...]):
  for name in path:
    tree = tree[name]
  return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def canonical_key(key: str) -> str:
  """A pytorch-fid `InceptionV3` key (`blocks.2.0.branch1x1...`) as in the weight file."""
  key = key.removeprefix('module.')
  match = _BLOCK_KEY.match(key)
  if not match:
    return key
  block, index, rest = int(match[1]), int(match[2]), match[3]
  if block < len(PYTORCH_FID_BLOCKS) and index < len(PYTORCH_FID_BLOCKS[block]):
    name = PYTORCH_FID_BLOCKS[block][index]
    if name is not None:
      return f'{name}.{rest}'
  return key


def _describe(keys: Sequence[str], limit: int = 8) -> str:
  keys = sorted(keys)
  shown = ', '.join(keys[:limit])
  return f'{shown}, ... ({len(keys)} in all)' if len(keys) > limit else shown


def _is_bn_counter(key: str, expected: Mapping[str, Any]) -> bool:
  """Whether `key` is the `num_batches_tracked` buffer of an expected BatchNorm."""
  return (key.endswith(_NUM_BATCHES_TRACKED) and
          key.removesuffix(_NUM_BATCHES_TRACKED) + '.bn.weight' in expected)


def variables_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """{'params', 'batch_stats'} of `FIDInceptionV3` from a PyTorch FID Inception state_dict.

  Takes every entry of the expected shape exactly once. Raises ValueError naming the missing,
  unexpected and misshapen entries; `num_batches_tracked` and `fc.*` entries are allowed.
  """
  canonical = {}
  for key, value in state_dict.items():
    name = canonical_key(key)
    if name in canonical:
      raise errors.InvalidValueError(
          f'FID Inception weights: {key!r} duplicates another entry ({name!r})')
    canonical[name] = np.asarray(value)
  expected = state_dict_shapes(include_classifier=False)
  missing = [key for key in expected if key not in canonical]
  unexpected = [
      key for key in canonical
      if key not in expected and key not in IGNORED_KEYS and not _is_bn_counter(key, expected)
  ]
  misshapen = [
      f'{key} {canonical[key].shape} (expected {shape})' for key, shape in expected.items()
      if key in canonical and canonical[key].shape != shape
  ]
  fc_weight = canonical.get('fc.weight')
  if fc_weight is not None and fc_weight.shape != (NUM_CLASSES, FEATURE_DIM):
    misshapen.append(f'fc.weight {fc_weight.shape} (expected {(NUM_CLASSES, FEATURE_DIM)}; '
                     'torchvision Inception-v3 weights are not the FID network)')
  problems = []
  if missing:
    problems.append(f'missing {_describe(missing)}')
  if unexpected:
    problems.append(f'unexpected {_describe(unexpected)}')
  if misshapen:
    problems.append(f'wrong shape {_describe(misshapen)}')
  if problems:
    raise errors.InvalidValueError(
        'Not a pytorch-fid Inception state_dict (pt_inception-2015-12-05): ' + '; '.join(problems))

  variables: dict = {'params': {}, 'batch_stats': {}}
  for path in _basic_conv_paths():
    prefix = '.'.join(path)
    for torch_name, (collection, leaf) in _ENTRIES.items():
      value = canonical[f'{prefix}.{torch_name}'].astype(np.float32)
      if leaf[-1] == 'kernel':  # OIHW -> HWIO
        value = value.transpose(2, 3, 1, 0)
      _set(variables[collection], path + leaf, jnp.asarray(value))
  return variables


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The state_dict in a `.pth` (read without PyTorch) or `.npz` file.

  Raises FileNotFoundError, naming where to download the weights, if `path` does not exist.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise errors.PathNotFoundError(
        f'FID Inception weights not found: {path}. Download pytorch-fid\'s '
        f'pt_inception-2015-12-05-6726825d.pth from {FID_WEIGHTS_URL} and pass its path.')
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as data:
      return {key: data[key] for key in data.files}
  from cyclegan_jax.torch_io import pth  # pylint: disable=g-import-not-at-top
  return pth.load_state_dict(path)


@jax.jit
def pool_features(variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
  """[N, 299, 299, 3] images in [-1, 1] -> [N, 2048] float32 features (one compile per N)."""
  return FIDInceptionV3().apply(variables, images)


_resize_to_input = jax.jit(resize_bilinear)


def feature_extractor(variables: Mapping[str, Any],
                      batch_size: int = DEFAULT_BATCH_SIZE) -> Callable[[np.ndarray], np.ndarray]:
  """`features(images) -> np.ndarray [N, 2048]` for NHWC images in [-1, 1] of any size.

  Images are run in chunks of `batch_size` (the last one padded), so the network compiles once;
  each distinct image size compiles only its resize. One-channel images are repeated to RGB.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}')

  def features(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f'Expected NHWC images with 1 or 3 channels, got shape {images.shape}')
    if images.shape[-1] == 1:
      images = np.repeat(images, 3, axis=-1)
    outputs = [np.zeros((0, FEATURE_DIM), np.float32)]
    for start in range(0, len(images), batch_size):
      chunk = images[start:start + batch_size]
      count = len(chunk)
      if count < batch_size:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - count, axis=0)])
      resized = _resize_to_input(chunk) if chunk.shape[1:3] != (INPUT_SIZE, INPUT_SIZE) else chunk
      outputs.append(np.asarray(pool_features(variables, resized))[:count])
    return np.concatenate(outputs)

  return features


def load_fid_inception(path: str | os.PathLike,
                       batch_size: int = DEFAULT_BATCH_SIZE) -> Callable[[np.ndarray], np.ndarray]:
  """The FID feature extractor (`feature_extractor`) with the weights in `path` (.pth or .npz).

  Raises FileNotFoundError (naming where to get the file) if `path` does not exist and
  ValueError if it is not the FID Inception state_dict.
  """
  return feature_extractor(variables_from_state_dict(load_state_dict(path)), batch_size)
