"""Orbax checkpoints of the full train state under `<workdir>/checkpoints/`.

Each checkpoint holds the train state (params and Adam states of G, F, D_X, D_Y,
both image pools, step, RNG key), the config that produced it, and the input
iterator's state (`input_pipeline.Dataset.iterator_state`: the next example and
the identity of the dataset), so a resumed run continues the same data order.
"""

import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from cyclegan_jax import config_lib

CONFIG_FILE = 'config.json'
IMPORTED_FILE = 'imported.json'  # Written by convert: {network name: source file}.


def checkpoint_dir(workdir: str | Path) -> Path:
  return Path(workdir).absolute() / 'checkpoints'


def create_manager(workdir: str | Path, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def to_host(tree: Any) -> Any:
  """Arrays -> numpy; a replicated array that spans several processes gives its local copy."""

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.sharding.is_fully_replicated:
        raise ValueError(f'cannot read a sharded {x.shape} array spanning several processes')
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)

  return jax.tree.map(one, tree)


def save(manager: ocp.CheckpointManager,
         state: Any,
         config: ml_collections.ConfigDict,
         data_state: dict | None = None) -> None:
  step = int(to_host(state.step))
  items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_dict()))
  if data_state is not None:
    items['data'] = ocp.args.JsonSave(data_state)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None) -> Any:
  """Restores the state at `step` (default: latest) into the shapes/shardings given."""
  return restore_with_data_state(manager, abstract_state, step)[0]


def restore_with_data_state(manager: ocp.CheckpointManager,
                            abstract_state: Any,
                            step: int | None = None) -> tuple[Any, dict | None]:
  """(train state, input iterator state or None if the checkpoint has none) at `step`."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No checkpoint under {manager.directory}.')
  items = dict(state=ocp.args.StandardRestore(abstract_state))
  has_data_state = 'data' in (manager.item_metadata(step) or {})
  if has_data_state:
    items['data'] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored.state, (restored.data if has_data_state else None)


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """Shape/dtype skeleton of `tree` with every leaf placed by `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def load_saved_config(workdir: str | Path) -> dict | None:
  path = Path(workdir) / CONFIG_FILE
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f'{path} is not valid JSON ({error}); it records the config of the run in '
                     'this workdir. Restore it or use a new --workdir.') from error


def saved_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was trained with (its config.json)."""
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f'Workdir not found: {workdir}')
  saved = load_saved_config(workdir)
  if saved is None:
    raise FileNotFoundError(f'{workdir} has no {CONFIG_FILE}: not a training run '
                            'workdir (nor one written by cyclegan_jax.convert)')
  config = config_lib.base_config()
  config.update_from_flattened_dict(_known_fields(config, saved))
  return config


def _known_fields(config: ml_collections.ConfigDict, saved: dict, prefix: str = '') -> dict:
  """Flattened saved values for the fields `config` defines (older or newer runs may differ)."""
  flat = {}
  for key, value in saved.items():
    if key not in config:
      continue
    if isinstance(value, dict) and isinstance(config[key], ml_collections.ConfigDict):
      flat.update(_known_fields(config[key], value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def imported_networks(workdir: str | Path) -> dict[str, str] | None:
  """{network: source} for a converted workdir; None for a trained one (all networks valid)."""
  path = Path(workdir) / IMPORTED_FILE
  return json.loads(path.read_text()) if path.exists() else None


def check_and_save_config(workdir: str | Path,
                          config: ml_collections.ConfigDict,
                          write: bool = True) -> None:
  """Refuses a workdir trained with another architecture, then records `config` there.

  In a multi-process run every process checks and only process 0 writes (`write`).
  """
  workdir = Path(workdir)
  saved = load_saved_config(workdir)
  if saved is not None and checkpoint_dir(workdir).exists():
    mismatches = config_lib.architecture_mismatches(saved, config)
    if mismatches:
      raise ValueError(
          f'Cannot resume {workdir}: its checkpoints were trained with a different architecture (' +
          '; '.join(mismatches) + '). Use a new --workdir, or restore the original settings.')
  if not write:
    return
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = workdir / (CONFIG_FILE + '.tmp')
  tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  tmp.replace(workdir / CONFIG_FILE)
