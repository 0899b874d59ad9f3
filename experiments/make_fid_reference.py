"""Writes tests/data/fid_inception_reference.npz: pytorch-fid's outputs on seeded random weights.

    python3.11 -m venv /tmp/fidref
    /tmp/fidref/bin/pip install torch==2.14.1 torchvision==0.29.1 pytorch-fid==0.3.0 scipy pillow \
        jax==0.10.2 jaxlib==0.10.2 flax==0.12.8
    /tmp/fidref/bin/python -m experiments.make_fid_reference   # From the repository root.

The FID Inception weights cannot be shipped with the tests, so the parity test runs both networks
on random weights instead: `random_state_dict(shapes, seed)` builds them with numpy from
the key names and shapes, pytorch-fid's `InceptionV3([0, 1, 2, 3])` loads them (strict) in place
of the downloaded file, and this script stores its outputs. The test regenerates the same weights
and compares `cyclegan_jax.inception` with these outputs. Stored (no weights):
- `seed`; `keys`, `shapes`, `ndims`: the weight file's state_dict layout as torchvision builds it
  (shapes padded with -1); `module_keys`: the keys of pytorch-fid's `InceptionV3` module;
- `small` [2, 64, 64, 3] float32 in [-1, 1] and `large` [1, 299, 299, 3] uint8 (as
  `large / 127.5 - 1`), NHWC; pytorch-fid gets (x + 1) / 2 in NCHW and resizes `small` itself;
- `features` [3, 2048] (small then large); `block0_mean` [3, 64], `block1_mean` [3, 192],
  `block2_mean` [3, 768]: the other blocks' outputs averaged over space; `block_std` [3, 4];
- `resize_input` [1, 13, 17, 2] and `resize_<h>x<w>` its `F.interpolate(mode='bilinear',
  align_corners=False)` to h x w (NHWC);
- `fid_a`..`fid_d` (float64 features) and `fid_values`: pytorch-fid's
  `calculate_frechet_distance` of (a, b) and of the singular-covariance pair (c, d).

Needs torch, torchvision and pytorch-fid next to this project's requirements (jax, flax); no
network access (the weight download is replaced by the random weights).
"""

from pathlib import Path
from typing import Mapping, Sequence
import zlib

import numpy as np

from cyclegan_jax.evaluation import inception

OUTPUT = Path(__file__).resolve().parents[1] / 'tests' / 'data' / 'fid_inception_reference.npz'
SEED = 0
INPUT_SEED = 1234
RESIZE_SIZES = ((7, 29), (31, 5), (40, 40))


def random_state_dict(shapes: Mapping[str, Sequence[int]], seed: int = 0) -> dict[str, np.ndarray]:
  """Seeded random weights for the FID Inception keys in `shapes` (tests; numpy only).

  Each entry depends only on `seed`, its key and its shape. Conv weights are He-normal
  (std sqrt(2 / fan_in)), BatchNorm scales ~U(0.8, 1.2), shifts and running means ~N(0, 0.1^2)
  and running variances ~U(0.5, 1.5), so that activations keep their scale through the network;
  `num_batches_tracked` is 0 (int64), the classifier small normal.
  """
  state_dict = {}
  for key, shape in shapes.items():
    shape = tuple(int(n) for n in shape)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    if key.endswith('num_batches_tracked'):
      value = np.zeros(shape, np.int64)
    elif key.endswith('conv.weight'):
      fan_in = int(np.prod(shape[1:]))
      value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    elif key.endswith('bn.weight'):
      value = rng.uniform(0.8, 1.2, shape)
    elif key.endswith('bn.running_var'):
      value = rng.uniform(0.5, 1.5, shape)
    elif key.endswith(('bn.bias', 'bn.running_mean')):
      value = rng.normal(0.0, 0.1, shape)
    elif key.startswith('fc.'):
      value = rng.normal(0.0, 0.01, shape)
    else:
      raise ValueError(f'No random initialisation for {key!r}')
    state_dict[key] = value.astype(np.float32) if value.dtype != np.int64 else value
  return state_dict


def main():
  # pylint: disable=g-import-not-at-top
  import torch
  import torch.nn.functional as F
  from pytorch_fid import fid_score
  from pytorch_fid import inception as fid_inception
  # pylint: enable=g-import-not-at-top
  torch.set_num_threads(2)

  shapes = dict(inception.state_dict_shapes())
  for key in list(shapes):
    if key.endswith('.bn.weight'):
      shapes[key.removesuffix('weight') + 'num_batches_tracked'] = ()
  weights = random_state_dict(shapes, SEED)
  torch_weights = {key: torch.from_numpy(value) for key, value in weights.items()}

  def fake_download(url, *unused_args, **unused_kwargs):
    assert url == inception.FID_WEIGHTS_URL, url
    return dict(torch_weights)

  # fid_inception_v3() loads the "downloaded" state_dict with load_state_dict(strict=True).
  fid_inception.load_state_dict_from_url = fake_download
  model = fid_inception.InceptionV3([0, 1, 2, 3]).eval()
  layout = fid_inception.fid_inception_v3().state_dict()
  module_state = model.state_dict()
  model.load_state_dict(module_state, strict=True)
  assert sorted(layout) == sorted(weights), set(layout) ^ set(weights)

  rng = np.random.default_rng(INPUT_SEED)
  small = rng.uniform(-1.0, 1.0, (2, 64, 64, 3)).astype(np.float32)
  large = rng.integers(0, 256, (1, 299, 299, 3), dtype=np.uint8)
  large_float = large.astype(np.float32) / np.float32(127.5) - np.float32(1.0)

  outputs = []
  with torch.no_grad():
    for images in (small, large_float):
      x = torch.from_numpy((images.transpose(0, 3, 1, 2) + 1.0) / 2.0)
      outputs.append([block.numpy().astype(np.float64) for block in model(x)])
  blocks = [np.concatenate([out[i] for out in outputs]) for i in range(4)]

  resize_input = rng.uniform(-1.0, 1.0, (1, 13, 17, 2)).astype(np.float32)
  resized = {}
  with torch.no_grad():
    for height, width in RESIZE_SIZES:
      out = F.interpolate(torch.from_numpy(resize_input.transpose(0, 3, 1, 2)),
                          size=(height, width),
                          mode='bilinear',
                          align_corners=False)
      resized[f'resize_{height}x{width}'] = out.numpy().transpose(0, 2, 3, 1)

  fid_sets = {
      'fid_a': rng.normal(0.0, 1.0, (50, 8)),
      'fid_b': rng.normal(0.5, 1.5, (60, 8)),
      'fid_c': rng.normal(0.0, 1.0, (5, 8)),  # Fewer samples than dimensions: singular.
      'fid_d': rng.normal(0.2, 1.0, (6, 8)),
  }
  fid_values = [
      fid_score.calculate_frechet_distance(fid_sets[a].mean(axis=0),
                                           np.cov(fid_sets[a], rowvar=False),
                                           fid_sets[b].mean(axis=0),
                                           np.cov(fid_sets[b], rowvar=False))
      for a, b in (('fid_a', 'fid_b'), ('fid_c', 'fid_d'))
  ]

  keys = sorted(layout)
  ndims = np.array([len(layout[key].shape) for key in keys], np.int64)
  padded = np.full((len(keys), 4), -1, np.int64)
  for row, key in enumerate(keys):
    padded[row, :ndims[row]] = tuple(layout[key].shape)
  np.savez_compressed(OUTPUT,
                      seed=np.int64(SEED),
                      keys=np.array(keys),
                      shapes=padded,
                      ndims=ndims,
                      module_keys=np.array(sorted(module_state)),
                      small=small,
                      large=large,
                      features=blocks[3].reshape(len(blocks[3]), -1).astype(np.float32),
                      block0_mean=blocks[0].mean(axis=(2, 3)).astype(np.float32),
                      block1_mean=blocks[1].mean(axis=(2, 3)).astype(np.float32),
                      block2_mean=blocks[2].mean(axis=(2, 3)).astype(np.float32),
                      block_std=np.stack([block.std(axis=(1, 2, 3)) for block in blocks],
                                         axis=1).astype(np.float32),
                      resize_input=resize_input,
                      fid_values=np.array(fid_values, np.float64),
                      **fid_sets,
                      **resized)
  print(f'Wrote {OUTPUT} ({OUTPUT.stat().st_size / 1e3:.0f} kB); torch {torch.__version__}.')
  print('Per-image std of the block outputs:\n',
        np.stack([b.std(axis=(1, 2, 3)) for b in blocks], axis=1))


if __name__ == '__main__':
  main()
