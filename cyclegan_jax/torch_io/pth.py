"""Reads PyTorch `.pth` state_dicts into numpy arrays, without PyTorch.

Both formats that `torch.save` has written are read:
- the zip format (PyTorch >= 1.6): `<archive>/data.pkl` plus one raw little-endian file per
  storage under `<archive>/data/`;
- the legacy format (older releases, e.g. the official CycleGAN pretrained models): a sequence
  of pickles (magic number, protocol version, system info, the object, the storage keys)
  followed by each storage's element count (int64) and raw bytes.

The pickles are read by a restricted unpickler that builds only ordered dicts and tensors of the
plain numeric dtypes: a file that asks for any other Python object (code, modules, optimiser
classes) is refused instead of executed. A full training checkpoint holding a state_dict under a
key such as 'state_dict' or 'model' is accepted too (see `load_state_dict`).
"""

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Mapping

import numpy as np

from cyclegan_jax import errors

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# The storage classes that `torch.save` names in its pickles, and their element types.
STORAGE_DTYPES = {
    'DoubleStorage': np.float64,
    'FloatStorage': np.float32,
    'HalfStorage': np.float16,
    'LongStorage': np.int64,
    'IntStorage': np.int32,
    'ShortStorage': np.int16,
    'CharStorage': np.int8,
    'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
BFLOAT16_STORAGE = 'BFloat16Storage'  # Read as float32 (numpy has no bfloat16).
NESTED_STATE_DICT_KEYS = ('state_dict', 'model', 'model_state_dict', 'net', 'netG')


class TorchCheckpointError(errors.InvalidValueError):
  """A file that is not a readable PyTorch state_dict; the message names the file and why."""


class _StorageType:
  """Stands in for `torch.<Type>Storage` inside the pickle."""

  def __init__(self, name: str):
    self.name = name

  @property
  def dtype(self):
    return STORAGE_DTYPES.get(self.name, np.uint16 if self.name == BFLOAT16_STORAGE else None)


class _LazyStorage:
  """A storage whose bytes are attached once they have been read (legacy files store them last)."""

  def __init__(self, storage_type: _StorageType, numel: int):
    self.storage_type = storage_type
    self.numel = numel
    self.array: np.ndarray | None = None


class _LazyTensor:
  """`_rebuild_tensor_v2`'s arguments, materialised once every storage is loaded."""

  def __init__(self, storage: _LazyStorage, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def materialize(self) -> np.ndarray:
    flat = self.storage.array
    if flat is None:
      raise TorchCheckpointError('a tensor refers to a storage that the file does not contain')
    if not self.size:
      return np.array(flat[self.offset])
    extent = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if min(self.size) > 0 and extent > flat.size:
      raise TorchCheckpointError(
          f'a tensor of shape {self.size} reaches past the end of its storage '
          f'({flat.size} elements): the file is truncated or corrupt')
    view = np.lib.stride_tricks.as_strided(flat[self.offset:],
                                           shape=self.size,
                                           strides=tuple(s * flat.itemsize for s in self.stride),
                                           writeable=False)
    array = np.array(view)
    if self.storage.storage_type.name == BFLOAT16_STORAGE:
      array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
  del unused
  return data


_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
  """Builds only the objects of a state_dict; storages come from `load_storage(pid)`."""

  def __init__(self, file, path: str, load_storage):
    super().__init__(file, encoding='utf-8')
    self._path = path
    self._load_storage = load_storage

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    if module == 'torch' and (name in STORAGE_DTYPES or name == BFLOAT16_STORAGE):
      return _StorageType(name)
    raise TorchCheckpointError(
        f'{self._path}: the pickle asks for {module}.{name}, which a state_dict of tensors does '
        'not contain; only plain state_dicts (torch.save(model.state_dict(), path)) are read')

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] not in ('storage', b'storage'):
      raise TorchCheckpointError(f'{self._path}: unknown persistent id {pid!r}')
    return self._load_storage(pid[1:])


def _storage_type(value, path: str) -> _StorageType:
  if not isinstance(value, _StorageType) or value.dtype is None:
    raise TorchCheckpointError(f'{path}: unsupported storage type {value!r}')
  return value


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [name for name in names if name.endswith('data.pkl')]
    if len(pickles) != 1:
      raise TorchCheckpointError(f'{path}: a zip that holds no (or several) data.pkl: not a '
                                 'PyTorch checkpoint')
    prefix = pickles[0][:-len('data.pkl')]
    byteorder_name = prefix + 'byteorder'
    if byteorder_name in names and archive.read(byteorder_name).strip() != b'little':
      raise TorchCheckpointError(f'{path}: big-endian checkpoints are not supported')
    storages: dict[str, _LazyStorage] = {}

    def load_storage(args):
      storage_type, key, _, numel = args[:4]
      storage_type = _storage_type(storage_type, path)
      if key not in storages:
        member = f'{prefix}data/{key}'
        try:
          raw = archive.read(member)
        except KeyError:
          raise TorchCheckpointError(f'{path}: storage {member} is missing') from None
        storage = _LazyStorage(storage_type, numel)
        dtype = np.dtype(storage_type.dtype).newbyteorder('<')
        if len(raw) < numel * dtype.itemsize:
          raise TorchCheckpointError(f'{path}: storage {member} holds {len(raw)} bytes, fewer '
                                     f'than its {numel} elements need')
        storage.array = np.frombuffer(raw, dtype=dtype, count=numel)
        storages[key] = storage
      return storages[key]

    with archive.open(pickles[0]) as file:
      return _Unpickler(file, path, load_storage).load()


def _load_legacy(path: str) -> Any:
  with open(path, 'rb') as file:

    def header_pickle():
      return _Unpickler(file, path, lambda args: None).load()

    try:
      magic = header_pickle()
    except Exception as error:  # pylint: disable=broad-except  # Garbage fails in many ways.
      raise TorchCheckpointError(f'{path}: not a PyTorch checkpoint (neither a zip archive nor '
                                 f'a legacy torch.save file: {error})') from None
    if magic != LEGACY_MAGIC_NUMBER:
      raise TorchCheckpointError(f'{path}: not a PyTorch checkpoint (wrong magic number)')
    protocol = header_pickle()
    if protocol != LEGACY_PROTOCOL_VERSION:
      raise TorchCheckpointError(f'{path}: unsupported legacy protocol version {protocol}')
    system_info = header_pickle()
    if isinstance(system_info, dict) and not system_info.get('little_endian', True):
      raise TorchCheckpointError(f'{path}: big-endian checkpoints are not supported')

    storages: dict[str, _LazyStorage] = {}

    def load_storage(args):
      storage_type, root_key, _, numel, view_metadata = args[:5]
      if view_metadata is not None:
        raise TorchCheckpointError(f'{path}: storage views are not supported')
      if root_key not in storages:
        storages[root_key] = _LazyStorage(_storage_type(storage_type, path), numel)
      return storages[root_key]

    try:
      result = _Unpickler(file, path, load_storage).load()
      keys = header_pickle()
      for key in keys:
        storage = storages[key]
        (numel,) = struct.unpack('<q', _read_exactly(file, 8, path))
        dtype = np.dtype(storage.storage_type.dtype).newbyteorder('<')
        raw = _read_exactly(file, numel * dtype.itemsize, path)
        storage.array = np.frombuffer(raw, dtype=dtype, count=numel)
    except (pickle.UnpicklingError, EOFError, KeyError) as error:
      raise TorchCheckpointError(f'{path}: truncated or corrupt legacy checkpoint '
                                 f'({type(error).__name__}: {error})') from None
    return result


def _read_exactly(file: io.BufferedReader, count: int, path: str) -> bytes:
  data = file.read(count)
  if len(data) != count:
    raise TorchCheckpointError(f'{path}: truncated (ends inside a storage)')
  return data


def _materialize(value):
  if isinstance(value, _LazyTensor):
    return value.materialize()
  if isinstance(value, Mapping):
    return collections.OrderedDict((k, _materialize(v)) for k, v in value.items())
  if isinstance(value, (list, tuple)):
    return type(value)(_materialize(v) for v in value)
  return value


def load(path: str | os.PathLike) -> Any:
  """Whatever `torch.save` stored in `path` (dicts, lists, numbers and tensors as numpy)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise errors.PathNotFoundError(f'PyTorch checkpoint not found: {path}')
  loader = _load_zip if zipfile.is_zipfile(path) else _load_legacy
  return _materialize(loader(path))


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The state_dict in `path` as {key: numpy array}, keys verbatim, PyTorch layouts.

  A dict that nests the state_dict under one of NESTED_STATE_DICT_KEYS is unwrapped.
  """
  contents = load(path)
  if isinstance(contents, Mapping):
    for key in NESTED_STATE_DICT_KEYS:
      if isinstance(contents.get(key),
                    Mapping) and not any(isinstance(v, np.ndarray) for v in contents.values()):
        contents = contents[key]
        break
  if not isinstance(contents, Mapping):
    raise TorchCheckpointError(f'{path}: holds a {type(contents).__name__}, not a state_dict')
  state_dict = {k: v for k, v in contents.items() if isinstance(v, np.ndarray)}
  if not state_dict:
    raise TorchCheckpointError(f'{path}: holds no tensors')
  return state_dict
