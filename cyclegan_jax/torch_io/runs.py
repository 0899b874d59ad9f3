"""Converts official PyTorch CycleGAN checkpoints into a workdir (no PyTorch needed).

The workdir holds a step-0 checkpoint of a full train state in which the converted networks
carry the PyTorch weights and the rest are freshly initialised, its config.json (architecture
inferred from the state_dicts), and `imported.json` naming the converted networks. Official names
map to ours as G_A -> G, G_B -> F, D_A -> D_Y (it judges domain B), D_B -> D_X; a pix2pix run's
G and D (the conditional discriminator) become a pix2pix workdir's.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cyclegan_jax import state as state_lib
from cyclegan_jax import checkpointing
from cyclegan_jax import config_lib
from cyclegan_jax import errors
from cyclegan_jax import models
from cyclegan_jax import workdir as workdir_lib
from cyclegan_jax.torch_io import mapping
from cyclegan_jax.torch_io import pth

OFFICIAL_NAMES = {'G_A': 'G', 'G_B': 'F', 'D_A': 'D_Y', 'D_B': 'D_X'}
# An official pix2pix run (Pix2PixModel) saves G (A -> B) and the conditional D on concat(A, B).
PIX2PIX_NAMES = {'G': 'G', 'D': 'D'}


def official_run_files(torch_dir: str | Path, epoch: str) -> dict[str, Path]:
  """{our network name: file} for the `<epoch>_net_<name>.pth` files in an official folder: a
  CycleGAN run's (G_A, G_B, D_A, D_B), or else a pix2pix run's (G, D)."""
  torch_dir = Path(torch_dir)
  if not torch_dir.is_dir():
    raise errors.PathNotFoundError(f'Folder not found: {torch_dir}')
  for names in (OFFICIAL_NAMES, PIX2PIX_NAMES):
    files = {ours: torch_dir / f'{epoch}_net_{official}.pth' for official, ours in names.items()}
    files = {name: path for name, path in files.items() if path.is_file()}
    if files:
      return files
  raise errors.PathNotFoundError(
      f'{torch_dir} holds no {epoch}_net_G_A.pth (nor G_B, D_A, D_B) of a CycleGAN run, nor '
      f'{epoch}_net_G.pth (nor D) of a pix2pix run')


def _shared(arches: dict[str, dict], names: tuple[str, ...], fields: tuple[str, ...]) -> tuple:
  """The values of `fields` that the converted networks among `names` share; () for none."""
  values = {tuple(arches[name][field] for field in fields) for name in names if name in arches}
  if len(values) > 1:
    raise errors.InvalidValueError(f'{" and ".join(names)} differ in ({", ".join(fields)}): '
                                   f'{sorted(values)}; one run has one architecture for both')
  return values.pop() if values else ()


def convert_state_dicts(
    state_dicts: dict[str, dict]) -> tuple[dict, dict, ml_collections.ConfigDict]:
  """{network: PyTorch state_dict} -> ({network: Flax params}, {network: its batch norms'
  running statistics, for those that keep them}, the config they fit). A 'D' makes it a pix2pix
  run (config_lib.pix2pix_config), whose D judges A and B images stacked on channels."""
  paired = 'D' in state_dicts
  config = config_lib.pix2pix_config() if paired else config_lib.base_config()
  if paired:  # The files do not say which pairs trained them: the offline ones, which read alike.
    config.data.source = 'embedded'
  params, batch_stats, arches = {}, {}, {}
  for name, state_dict in state_dicts.items():
    convert = (mapping.generator_params_from_state_dict
               if name in ('G', 'F') else mapping.discriminator_params_from_state_dict)
    try:
      eval_params, arches[name] = convert(state_dict, running_statistics=True)
      params[name], stats = models.split_running_statistics(eval_params)
      if stats:
        batch_stats[name] = stats
    except ValueError as error:
      kind = ('a ResnetGenerator or UnetGenerator'
              if name in ('G', 'F') else 'an NLayerDiscriminator or PixelDiscriminator')
      raise errors.InvalidValueError(f'the {name} state_dict is not {kind}: {error}') from None
  norms = {arch['norm'] for arch in arches.values()}
  if len(norms) > 1:
    raise errors.InvalidValueError(
        f'the networks use different norms ({sorted(norms)}); one run has one')
  config.model.norm = norms.pop()

  channels = {}  # domain -> channels, from every network that sees or makes that domain
  generators = {'G': ('A', 'B'), 'F': ('B', 'A')}
  for name, (source, target) in generators.items():
    if name in arches:
      channels.setdefault(source, set()).add(arches[name]['input_nc'])
      channels.setdefault(target, set()).add(arches[name]['output_nc'])
  for name, domain in (('D_X', 'A'), ('D_Y', 'B')):
    if name in arches:
      channels.setdefault(domain, set()).add(arches[name]['input_nc'])
  for domain, values in channels.items():
    if len(values) > 1:
      raise errors.InvalidValueError(
          f'the networks disagree on the channels of domain {domain}: {values}')
  config.model.channels_A = channels.get('A', {3}).pop()
  config.model.channels_B = channels.get('B', {3}).pop()
  pair_channels = config.model.channels_A + config.model.channels_B
  if paired and arches['D']['input_nc'] != pair_channels:
    raise errors.InvalidValueError(
        f"the D state_dict takes {arches['D']['input_nc']} channels; pix2pix's D judges A and B "
        f'images stacked on channels: {pair_channels}')

  # The arch fields are config.model fields of the same names.
  discriminator_names = ('D',) if paired else state_lib.DISCRIMINATOR_NAMES
  for names, fields in ((state_lib.GENERATOR_NAMES, ('generator', 'ngf', 'use_dropout')),
                        (discriminator_names, ('discriminator', 'ndf', 'n_layers_D'))):
    for field, value in zip(fields, _shared(arches, names, fields)):
      config.model[field] = value
  if config.model.discriminator == 'pixel':
    config.model.n_layers_D = config_lib.base_config().model.n_layers_D
  if config.lambda_identity > 0 and config.model.channels_A != config.model.channels_B:
    config.lambda_identity = 0.0
  return params, batch_stats, config


def write_workdir(output: str | Path,
                  params: dict,
                  config: ml_collections.ConfigDict,
                  sources: dict[str, str],
                  batch_stats: dict | None = None) -> Path:
  """A step-0 train state with `params` (and the running statistics in `batch_stats`) in place
  of the fresh networks' ones, saved in `output`."""
  output = Path(output)
  workdir_lib.check_folder(output, '--output')
  if workdir_lib.checkpoint_dir(output).exists():
    raise errors.PathExistsError(f'{output} already holds checkpoints; choose a new --output.')
  if workdir_lib.runs_in_subfolders(output):
    raise errors.PathExistsError(
        f'{output} holds the runs of an ensemble or a sweep in its subfolders; choose a new '
        '--output.')
  config_lib.validate(config)
  state = jax.jit(state_lib.train_state_initializer(config))()
  merged = dict(state.params)
  for name, imported in params.items():
    expected = jax.tree.map(np.shape, merged[name])
    actual = jax.tree.map(np.shape, imported)
    if expected != actual:
      raise errors.InvalidValueError(
          f'{name}: converted parameter shapes {actual} do not fit the config\'s '
          f'{expected}')
    merged[name] = jax.tree.map(jnp.asarray, imported)
  merged_stats = dict(state.batch_stats)
  for name, stats in (batch_stats or {}).items():
    if jax.tree.map(np.shape, stats) != jax.tree.map(np.shape, merged_stats.get(name)):
      raise errors.InvalidValueError(
          f'{name}: converted running statistics do not fit the config\'s batch norms')
    merged_stats[name] = jax.tree.map(jnp.asarray, stats)
  # Adam's fresh state is zeros of these same shapes.
  state = state.replace(params=merged, batch_stats=merged_stats)
  checkpointing.check_and_save_config(output, config)
  manager = checkpointing.create_manager(output, config.keep_checkpoints)
  try:
    checkpointing.save(manager, state, config)
    manager.wait_until_finished()
  finally:
    manager.close()
  workdir_lib.write_json(output / workdir_lib.IMPORTED_FILE, sources)
  return output


def convert(files: dict[str, Path], output: str | Path,
            crop_size: int) -> ml_collections.ConfigDict:
  """Converts {network name: official .pth file} into the workdir `output`; its config."""
  state_dicts = {name: pth.load_state_dict(path) for name, path in files.items()}
  params, batch_stats, config = convert_state_dicts(state_dicts)
  config.data.crop_size = crop_size
  write_workdir(output, params, config, {
      name: str(path) for name, path in files.items()
  }, batch_stats)
  return config
