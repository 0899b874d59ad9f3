"""Official PyTorch CycleGAN checkpoints without PyTorch.

Modules: `pth` (reads `.pth` files, zip and legacy formats, safely), `mapping` (official
state_dicts <-> the Flax parameters of `models`), `runs` (converts official checkpoints into a
workdir that every tool reads).
"""
