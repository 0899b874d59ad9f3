"""CycleGAN networks: the ResNet generator and the PatchGAN discriminator (Flax linen, NHWC).

Both match the official PyTorch networks layer for layer (`torch_io` imports their checkpoints).
Modules: `layers` (conv-norm-activation blocks, norms, inits), `fast_convs` (exact faster CPU
formulations of slow convolutions), `resnet` (the generator), `patchgan` (the discriminator).
"""

import jax
import jax.numpy as jnp

from cyclegan_jax.models.layers import Dtype
from cyclegan_jax.models.patchgan import NLayerDiscriminator
from cyclegan_jax.models.patchgan import PatchGANDiscriminator
from cyclegan_jax.models.resnet import generator_num_blocks
from cyclegan_jax.models.resnet import ResnetGenerator
from cyclegan_jax.models.resnet import ResnetGenerator6
from cyclegan_jax.models.resnet import ResnetGenerator9

def build_generator(model_config, out_channels: int, dtype: Dtype = jnp.float32) -> ResnetGenerator:
  """Generator from the `model` config; input channels are taken from the input."""
  return ResnetGenerator(
      output_nc=out_channels,
      ngf=model_config.ngf,
      num_blocks=generator_num_blocks(model_config.generator),
      norm=model_config.norm,
      init_type=model_config.init_type,
      init_gain=model_config.init_gain,
      dtype=dtype,
      fast_convs=model_config.get('fast_convs', True),
  )


def build_discriminator(model_config, dtype: Dtype = jnp.float32) -> NLayerDiscriminator:
  """'basic' is the 70x70 PatchGAN (3 layers); 'n_layers' uses `n_layers_D`."""
  if model_config.discriminator == 'basic':
    n_layers = 3
  elif model_config.discriminator == 'n_layers':
    n_layers = model_config.n_layers_D
  else:
    raise ValueError(f"Unknown discriminator {model_config.discriminator!r}: expected 'basic' "
                     "or 'n_layers'")
  return NLayerDiscriminator(
      ndf=model_config.ndf,
      n_layers=n_layers,
      norm=model_config.norm,
      init_type=model_config.init_type,
      init_gain=model_config.init_gain,
      dtype=dtype,
  )


def count_params(params) -> int:
  """Number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
  return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))
