"""Where a CycleGAN dataset's splits are in a folder or a zip: the one finder that training's
folder source and `prepare_tfds` share.

The layout every CycleGAN codebase reads: folders trainA/ and trainB/ (testA/ and testB/
optional) of images, searched recursively in sorted path order. They may sit at the top of the
folder or zip, or in a folder at any depth below it (the official `horse2zebra.zip` holds
`horse2zebra/trainA/...`); exactly one folder may hold both trainA/ and trainB/ (the top wins
over folders below it). Hidden files and folders and `__MACOSX/` are ignored; other files that
are not images (`image_io.IMAGE_EXTENSIONS`) are listed, so that a user knows why they are left
out.
"""

from collections.abc import Sequence
import dataclasses
import os
import pathlib
import posixpath
from typing import Protocol
import zipfile
import zlib

from cyclegan_jax import errors
from cyclegan_jax.data import image_io

SPLITS = ('trainA', 'trainB', 'testA', 'testB')
REQUIRED_SPLITS = ('trainA', 'trainB')
# Aligned (pix2pix) datasets: each image holds A | B side by side; the official ones have train/
# and val/ (facades and night2day also test/).
ALIGNED_SPLITS = ('train', 'test', 'val')
ALIGNED_REQUIRED_SPLITS = ('train',)
# Damaged data (CRC, deflate stream, truncation) or a compression method zipfile lacks.
ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError,
                   KeyError, ValueError)


def _count(number: int, noun: str) -> str:
  return f'{number} {noun}' if number == 1 else f'{number} {noun}s'


def _parents(relative_path: str) -> list[str]:
  """'a/b/c.jpg' -> ['a/b', 'a']."""
  parents = []
  while '/' in relative_path:
    relative_path = relative_path.rsplit('/', 1)[0]
    parents.append(relative_path)
  return parents


class Tree(Protocol):
  """The files of a folder or a zip, as posix paths relative to its top (hidden ones left out)."""

  files: list[str]  # Sorted.
  folders: set[str]  # Every folder that holds a file or is listed itself.

  def location(self, relative_path: str) -> str:
    """Where `relative_path` is, for messages ('' is the tree itself)."""

  def read(self, relative_path: str) -> bytes:
    """The bytes of a file of the tree."""


class FolderTree:
  """An extracted dataset folder."""

  def __init__(self, folder: pathlib.Path):
    self.folder = folder
    self.files, self.folders = [], set()
    for directory, subdirectories, names in os.walk(folder):
      subdirectories[:] = sorted(d for d in subdirectories if not image_io.is_hidden(d))
      relative = pathlib.Path(directory).relative_to(folder).as_posix()
      if relative != '.':
        self.folders.add(relative)
      prefix = '' if relative == '.' else relative + '/'
      self.files += [prefix + name for name in names if not image_io.is_hidden(name)]
    self.files.sort()

  def location(self, relative_path: str) -> str:
    return str(self.folder / relative_path) if relative_path else str(self.folder)

  def read(self, relative_path: str) -> bytes:
    return (self.folder / relative_path).read_bytes()


class ZipTree:
  """A dataset zip, read in place from an open archive."""

  def __init__(self, archive: zipfile.ZipFile, zip_path: pathlib.Path):
    self.archive = archive
    self.zip_path = zip_path
    entries = [info for info in archive.infolist() if not image_io.is_hidden(info.filename)]
    self.files = sorted(info.filename for info in entries if not info.is_dir())
    self.folders = {info.filename.rstrip('/') for info in entries if info.is_dir()}
    self.folders.update(parent for name in self.files for parent in _parents(name))

  def location(self, relative_path: str) -> str:
    return f'{self.zip_path}:{relative_path}' if relative_path else str(self.zip_path)

  def read(self, relative_path: str) -> bytes:
    try:
      return self.archive.read(relative_path)
    except ZIP_READ_ERRORS as error:
      raise errors.InvalidValueError(
          f'{self.location(relative_path)} cannot be read from the zip, which is damaged or uses '
          f'an unsupported compression ({error})') from error


@dataclasses.dataclass(frozen=True)
class SplitFiles:
  """The files of one split folder."""
  split: str
  folder: str  # Relative to the tree's top.
  location: str
  images: tuple[str, ...]  # Paths below the split folder, sorted.
  ignored: tuple[str, ...]  # The other files below it (not images of a known type), sorted.


@dataclasses.dataclass(frozen=True)
class Layout:
  root: str  # The folder holding the splits, relative to the tree's top ('' for the top).
  splits: dict[str, SplitFiles]  # The splits with images: trainA and trainB, and test ones.
  left_out: dict[str, str]  # Test splits without a folder or without images, and why.


def _dataset_root(tree: Tree, context: str, all_splits: Sequence[str],
                  required: Sequence[str]) -> str:
  """The folder that holds the `required` splits; a user error ending in `context` if none does."""
  found: dict[str, list[str]] = {}
  for folder in sorted(tree.folders, key=lambda f: (f.count('/'), f)):
    parent, name = posixpath.split(folder)
    if name in all_splits:
      found.setdefault(parent, []).append(name)
  complete = [root for root, splits in found.items() if set(required) <= set(splits)]
  if '' in complete:
    return ''
  if len(complete) == 1:
    return complete[0]
  if complete:
    raise errors.InvalidValueError(f'{tree.location("")} holds several datasets, in '
                                   f'{", ".join(sorted(complete))}: pass one of them{context}')
  for root, splits in found.items():  # Shallowest first.
    present = [split for split in all_splits if split in splits]
    missing = [split for split in required if split not in splits]
    raise errors.PathNotFoundError(
        f'{tree.location(root)} has {"/, ".join(present)}/ but no {"/ and ".join(missing)}/ '
        f'folder{context}')
  wanted = ' and '.join(f'{split}/' for split in required)
  raise errors.PathNotFoundError(
      f'{tree.location("")} holds no {wanted} folder{"s" if len(required) > 1 else ""}, '
      f'neither at its top nor in a folder below it{context}')


def find_layout(tree: Tree,
                context: str = '',
                all_splits: Sequence[str] = SPLITS,
                required: Sequence[str] = REQUIRED_SPLITS) -> Layout:
  """The splits of the dataset in `tree`; user errors end in `context` (what to do). CycleGAN's
  splits by default; `ALIGNED_SPLITS` and `ALIGNED_REQUIRED_SPLITS` for pix2pix's.

  Raises PathNotFoundError or InvalidValueError naming the folder when there is no dataset,
  several, or a required split without images.
  """
  root = _dataset_root(tree, context, all_splits, required)
  splits, left_out = {}, {}
  for split in all_splits:
    folder = posixpath.join(root, split)
    if folder not in tree.folders:
      left_out[split] = f'no {split}/ folder in {tree.location(root)}'
      continue
    below = [name[len(folder) + 1:] for name in tree.files if name.startswith(folder + '/')]
    images = tuple(name for name in below if image_io.is_image_name(name))
    ignored = tuple(name for name in below if not image_io.is_image_name(name))
    split_files = SplitFiles(split, folder, tree.location(folder), images, ignored)
    image_io.report_ignored(list(ignored), split_files.location)
    if images:
      splits[split] = split_files
      continue
    extensions = '/'.join(extension[1:] for extension in image_io.IMAGE_EXTENSIONS)
    problem = f'{split_files.location} holds no {extensions} images'
    if ignored:
      problem += f' (only {_count(len(ignored), "other file")}, e.g. {ignored[0]})'
    if split in required:
      raise errors.InvalidValueError(problem + context)
    left_out[split] = problem
  return Layout(root, splits, left_out)


def split_paths(layout: Layout, split: str) -> Sequence[str]:
  """The images of `split` as paths relative to the tree's top (none for a left-out split)."""
  if split not in layout.splits:
    return ()
  split_files = layout.splits[split]
  return tuple(f'{split_files.folder}/{name}' for name in split_files.images)
