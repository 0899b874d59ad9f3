"""CycleGAN networks: ResNet and U-Net generators, PatchGAN discriminators (Flax linen, NHWC).

All match the official PyTorch networks layer for layer (`torch_io` imports their checkpoints).
Modules: `layout` (the declarative description of a network's layers that the modules, the
checkpoint importer and the ONNX exporter walk), `layers` (conv-norm-activation blocks, norms,
inits, spectral norm), `fast_convs` (exact faster CPU formulations of slow convolutions), `resnet`
and `unet` (the generators), `patchgan` (the n-layer and pixel discriminators).
"""

import itertools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from cyclegan_jax import config_lib
from cyclegan_jax.models.layers import Dtype
from cyclegan_jax.models.layout import LayoutModule
from cyclegan_jax.models.patchgan import NLayerDiscriminator
from cyclegan_jax.models.patchgan import PatchGANDiscriminator
from cyclegan_jax.models.patchgan import PixelDiscriminator
from cyclegan_jax.models.resnet import generator_num_blocks
from cyclegan_jax.models.resnet import ResnetGenerator
from cyclegan_jax.models.resnet import ResnetGenerator6
from cyclegan_jax.models.resnet import ResnetGenerator9
from cyclegan_jax.models.unet import UnetGenerator


def build_generator(model_config, out_channels: int, dtype: Dtype = jnp.float32) -> LayoutModule:
  """Generator from the `model` config ('resnet_<n>blocks' or 'unet_<n>'), or from a ConfigDict of
  the `arch` of an imported state_dict (`torch_io.mapping`, the same field names); input channels
  are taken from the input. Training settings: batch statistics over the batch, dropout on."""
  kind, number = config_lib.parse_generator(model_config.generator)
  shared = dict(output_nc=out_channels,
                ngf=model_config.ngf,
                norm=model_config.norm,
                use_dropout=model_config.get('use_dropout', False),
                init_type=model_config.get('init_type', 'normal'),
                init_gain=model_config.get('init_gain', 0.02),
                dtype=dtype,
                fast_convs=model_config.get('fast_convs', True))
  if kind == 'unet':
    return UnetGenerator(num_downs=number, **shared)
  return ResnetGenerator(num_blocks=number, **shared)


def build_discriminator(model_config, dtype: Dtype = jnp.float32) -> LayoutModule:
  """'basic' is the 70x70 PatchGAN (3 layers), 'n_layers' uses `n_layers_D`, 'pixel' is the 1x1
  PatchGAN; any takes the channels it is given (6 for a conditional discriminator on
  concat(A, B)). Also from a ConfigDict of the `arch` of an imported state_dict."""
  kind = model_config.discriminator
  shared = dict(ndf=model_config.ndf,
                norm=model_config.norm,
                init_type=model_config.get('init_type', 'normal'),
                init_gain=model_config.get('init_gain', 0.02),
                dtype=dtype,
                spectral_norm=model_config.get('spectral_norm', False))
  if kind == 'pixel':
    return PixelDiscriminator(**shared)
  if kind not in config_lib.DISCRIMINATOR_TYPES:
    raise ValueError(f'Unknown discriminator {kind!r}: expected one of '
                     f'{", ".join(config_lib.DISCRIMINATOR_TYPES)}')
  return NLayerDiscriminator(n_layers=config_lib.discriminator_layers(model_config), **shared)


def for_test(module: nn.Module, eval_mode: bool = False) -> nn.Module:
  """The network as the official test.py runs it: batch norm normalises each image by its own
  statistics (test.py translates one image at a time), so an image's output does not depend on
  the batch it comes in, and dropout stays on. `eval_mode` (test.py --eval): dropout off, and
  batch norm uses the running statistics kept in training, which its params must then hold
  (`with_running_statistics`). A network in eval mode stays in it."""
  if not isinstance(module, LayoutModule):
    return module
  if eval_mode or module.norm_running_average:
    return module.clone(deterministic=True, norm_running_average=True, norm_per_image=False)
  return module.clone(norm_per_image=True)


def with_running_statistics(params: Any, batch_stats: Any) -> Any:
  """`params` with each batch norm's running `mean` and `var` (a network's 'batch_stats'
  collection) beside its `scale` and `bias`: the params of an eval-mode network (`for_test`)."""
  if not batch_stats:
    return params
  merged = dict(params)
  for key, value in batch_stats.items():
    merged[key] = (with_running_statistics(params[key], value)
                   if isinstance(value, Mapping) else value)
  return merged


def split_running_statistics(params: Any) -> tuple[Any, Any]:
  """(params, 'batch_stats' collection) from eval-mode `params`, the inverse of
  `with_running_statistics`: each norm's `mean` and `var` apart, nested as the params."""
  rest, stats = {}, {}
  for key, value in params.items():
    if isinstance(value, Mapping):
      rest[key], inner = split_running_statistics(value)
      if inner:
        stats[key] = inner
    elif key in ('mean', 'var'):
      stats[key] = value
    else:
      rest[key] = value
  return rest, stats


def has_batch_norm(params: Any) -> bool:
  """Whether a network's params hold a batch norm (a `norm` with a `scale`)."""
  return any('scale' in value if key == 'norm' else has_batch_norm(value)
             for key, value in params.items()
             if isinstance(value, Mapping))


def network_fn(module: nn.Module,
               params: Any,
               dropout_key: jax.Array | None = None,
               batch_stats: dict[str, Any] | None = None,
               name: str | None = None) -> Callable[[jax.Array], jax.Array]:
  """x -> module(x) with `params`. Every call draws its own dropout masks from `dropout_key` (as
  each forward pass of the official networks does); networks without active dropout ignore it.

  With `batch_stats` (networks' running statistics by name) holding an entry for `name`, every
  call also moves that network's batch-norm running statistics towards its batch's, in place, as
  each forward pass of an official network in train mode does: after the calls of a step, the
  dict holds the statistics of all its calls in their order."""
  calls = itertools.count()
  tracked = batch_stats is not None and name in batch_stats

  def apply(x: jax.Array) -> jax.Array:
    rngs = {}
    if dropout_key is not None:
      rngs['dropout'] = jax.random.fold_in(dropout_key, next(calls))
    if not tracked:
      return module.apply({'params': params}, x, rngs=rngs)
    y, updated = module.apply({
        'params': params,
        'batch_stats': batch_stats[name]
    },
                              x,
                              rngs=rngs,
                              mutable=['batch_stats'])
    batch_stats[name] = updated['batch_stats']
    return y

  return apply


def count_params(params) -> int:
  """Number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
  return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))
