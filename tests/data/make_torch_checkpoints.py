"""Writes the small .pth files that tests/test_torch_io.py reads (needs PyTorch).

    python tests/data/make_torch_checkpoints.py

Each file holds tensors of every dtype the reader supports, a transposed (non-contiguous)
tensor, two tensors sharing one storage, a 0-d tensor, and the state_dict nested as a training
checkpoint would nest it; `torch_checkpoint_expected.npz` holds the same tensors as numpy.
"""

from pathlib import Path

import numpy as np
import torch


def tensors() -> dict:
  generator = torch.Generator().manual_seed(0)
  base = torch.randn(4, 6, generator=generator)
  shared = torch.arange(12, dtype=torch.float32)
  return {
      'float32': torch.randn(2, 3, 5, generator=generator),
      'float64': torch.randn(3, generator=generator, dtype=torch.float64),
      'float16': torch.randn(7, generator=generator).half(),
      'bfloat16': torch.randn(5, generator=generator).bfloat16(),
      'int64': torch.tensor([-3, 0, 2**40], dtype=torch.int64),
      'int32': torch.tensor([1, -2], dtype=torch.int32),
      'uint8': torch.tensor([0, 255], dtype=torch.uint8),
      'bool': torch.tensor([True, False]),
      'transposed': base.t(),
      'shared_head': shared[:5],
      'shared_tail': shared[6:].view(2, 3),
      'scalar': torch.tensor(3, dtype=torch.int64),
  }


def main():
  out = Path(__file__).parent
  state_dict = tensors()
  checkpoint = {'epoch': 7, 'state_dict': state_dict}
  torch.save(checkpoint, out / 'torch_checkpoint_zip.pth')
  torch.save(checkpoint, out / 'torch_checkpoint_legacy.pth', _use_new_zipfile_serialization=False)
  expected = {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy()
              for k, v in state_dict.items()}
  np.savez(out / 'torch_checkpoint_expected.npz', **expected)


if __name__ == '__main__':
  main()
