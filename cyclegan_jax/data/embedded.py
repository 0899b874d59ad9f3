"""The offline dataset: photos embedded in the package, cut into cells of three roles.

The seven scikit-image photos in `assets/embedded_photos.npz` are cut into square cells of side
`crop_size + crop_size // 2`. Each photo's grid of whole cells is centred in it; cell (row, col)
of a photo whose cells are preceded by `offset` cells of the earlier photos (sorted by name) gets
role ROLE_PATTERN[(col + 2 * row + offset) % 5] = train-A, train-B, train-A, train-B, held-out:
40/40/20 %, no two horizontal neighbours alike. A crop never leaves its cell, so domains A and B
and the held-out set never share a pixel. Domain A = crops of train-A cells; domain B =
hue_rotate_120 of crops of train-B cells. One training example is one cell (num_A = number of
train-A cells), cropped at a random position inside it (preprocess and load_size do not apply).
Held-out pairs are the 3 x 3 grid of crops at offsets 0, (cell - crop) / 2 and cell - crop in
every held-out cell, a, with ground truth T(a) = hue_rotate_120(a); they are ordered centre crops
first, interleaving the photos, so any prefix is spread over all photos. They are the test split.
In paired form (config.data.dataset_mode 'aligned', pix2pix's demo), training example i is cell i
of train-A and its hue rotation, cropped alike; the train-B cells are left unused.
"""

import dataclasses
import functools
import importlib.resources

import numpy as np

from cyclegan_jax import errors

EMBEDDED_PHOTOS_FILE = 'embedded_photos.npz'
TRAIN_A, TRAIN_B, HELDOUT = 'train_A', 'train_B', 'heldout'
ROLE_PATTERN = (TRAIN_A, TRAIN_B, TRAIN_A, TRAIN_B, HELDOUT)


def hue_rotate_120(image):
  """RGB -> (B, R, G): a 120 degree hue rotation (pure red becomes pure green). NumPy or JAX."""
  return image[..., (2, 0, 1)]


def inverse_hue_rotate_120(image):
  """(R, G, B) -> (G, B, R): undoes `hue_rotate_120` (pure green becomes pure red)."""
  return image[..., (1, 2, 0)]


def load_embedded_photos() -> dict[str, np.ndarray]:
  """The photos shipped in the package: name -> read-only uint8 [H, W, 3] RGB."""
  return dict(_embedded_photos())


@functools.cache
def _embedded_photos() -> dict[str, np.ndarray]:
  assets = importlib.resources.files('cyclegan_jax').joinpath('assets')
  resource = assets.joinpath(EMBEDDED_PHOTOS_FILE)
  with resource.open('rb') as file, np.load(file, allow_pickle=False) as archive:
    photos = {name: archive[name] for name in sorted(archive.files)}
  for photo in photos.values():
    photo.flags.writeable = False
  return photos


def embedded_cell_size(crop_size: int) -> int:
  """Side of an embedded cell: room for random crops to move by half a crop."""
  return crop_size + crop_size // 2


@dataclasses.dataclass(frozen=True)
class Cell:
  """One square cell of an embedded photo and the role it plays."""

  photo: str
  top: int
  left: int
  size: int
  role: str
  rank_in_photo: int  # Position among this photo's cells of the same role.

  def pixels(self, photos: dict[str, np.ndarray]) -> np.ndarray:
    rows = slice(self.top, self.top + self.size)
    return photos[self.photo][rows, self.left:self.left + self.size]


def embedded_cells(photo_shapes: dict[str, tuple[int, ...]], cell_size: int) -> list[Cell]:
  """Every cell of every photo (sorted by name), with its role; see the module docstring."""
  cells = []
  offset = 0
  for photo in sorted(photo_shapes):
    height, width = photo_shapes[photo][:2]
    rows, cols = height // cell_size, width // cell_size
    top, left = (height - rows * cell_size) // 2, (width - cols * cell_size) // 2
    role_counts = dict.fromkeys(ROLE_PATTERN, 0)
    for row in range(rows):
      for col in range(cols):
        role = ROLE_PATTERN[(col + 2 * row + offset) % len(ROLE_PATTERN)]
        cells.append(
            Cell(
                photo,
                top + row * cell_size,
                left + col * cell_size,
                cell_size,
                role,
                role_counts[role],
            ))
        role_counts[role] += 1
    offset += rows * cols
  return cells


def heldout_crop_offsets(cell_size: int, crop_size: int) -> list[tuple[int, int]]:
  """The 3 x 3 grid of crop positions in a held-out cell, centre first."""
  steps = (0, (cell_size - crop_size) // 2, cell_size - crop_size)
  centre = (steps[1], steps[1])
  return [centre] + [(y, x) for y in steps for x in steps if (y, x) != centre]


def heldout_crops(photos: dict[str, np.ndarray], cells: list[Cell], crop_size: int) -> np.ndarray:
  """uint8 [n, crop, crop, 3] crops of the held-out cells, ordered to spread over all photos."""
  photo_order = {photo: index for index, photo in enumerate(sorted(photos))}
  keyed = []
  for cell in cells:
    if cell.role != HELDOUT:
      continue
    pixels = cell.pixels(photos)
    for position, (y, x) in enumerate(heldout_crop_offsets(cell.size, crop_size)):
      key = (position, cell.rank_in_photo, photo_order[cell.photo])
      keyed.append((key, pixels[y:y + crop_size, x:x + crop_size]))
  keyed.sort(key=lambda item: item[0])
  return np.stack([crop for _, crop in keyed])


def embedded_images(crop_size: int,
                    num_heldout: int = 0,
                    aligned: bool = False) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """({'A': train-A cells, 'B': hue-rotated train-B cells}, {'A': held-out crops a, 'B': T(a)}):
  uint8 [n, H, W, 3] arrays; the first `num_heldout` held-out pairs (0: all). `aligned`: the
  training data in paired form (pix2pix's), {'A': train-A cells, 'B': the same cells hue-rotated}:
  domain A as unpaired, and cell i of B its ground truth."""
  photos = _embedded_photos()
  cell_size = embedded_cell_size(crop_size)
  cells = embedded_cells({name: photo.shape for name, photo in photos.items()}, cell_size)
  by_role = {role: [c.pixels(photos) for c in cells if c.role == role] for role in ROLE_PATTERN}
  if not all(by_role.values()):
    counts = {role: len(found) for role, found in by_role.items()}
    raise errors.InvalidValueError(
        f'config.data.crop_size={crop_size} is too large for the embedded photos (long side '
        f'{max(max(p.shape[:2]) for p in photos.values())} px): cells of {cell_size} px give '
        f'{counts}; use a smaller crop_size (64 works)')
  all_heldout_A = heldout_crops(photos, cells, crop_size)
  all_heldout_B = hue_rotate_120(all_heldout_A)
  count = min(num_heldout or len(all_heldout_A), len(all_heldout_A))
  train_A = np.stack(by_role[TRAIN_A])
  train = {'A': train_A, 'B': hue_rotate_120(train_A if aligned else np.stack(by_role[TRAIN_B]))}
  return train, {'A': all_heldout_A[:count], 'B': all_heldout_B[:count]}
