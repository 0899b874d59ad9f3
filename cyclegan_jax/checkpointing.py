"""Orbax checkpoints of the full train state under `<workdir>/checkpoints/`.

Each checkpoint holds the train state (params and Adam states of G, F, D_X, D_Y,
both image pools, step, RNG key), the config that produced it, and the input
iterator's state (`data.Dataset.iterator_state`: the next example and
the identity of the dataset), so a resumed run continues the same data order.
"""

import json
import math
import logging as logging_std
from pathlib import Path
import sys
import traceback
from typing import Any, NamedTuple, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from cyclegan_jax import config_lib
from cyclegan_jax import errors
from cyclegan_jax import state as state_lib
from cyclegan_jax import workdir as workdir_lib


def _write_replicated_arrays_whole() -> None:
  """In a single process, each replicated array is written once, whole, from one device.

  Orbax's default on CPU and TPU splits the writing of a replicated array among its replicas: one
  slice per array and replica, each an eager program compiled on first use. That spreads the
  writes over the hosts of a multi-process run; in one process all replicas are in one host's
  memory and the slicing is pure cost (8 CPU devices, the tiny state: 7.4 s for the first save,
  0.76 s for later ones, against 0.40 s each written whole). Orbax already writes whole on GPU."""
  if jax.process_count() > 1:
    return
  # The new handler keeps the default one's array metadata store, which orbax exposes only as an
  # attribute of the handler (without it, None: the handler's own default).
  current = ocp.type_handlers.get_type_handler(jax.Array)
  handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False,
                                           array_metadata_store=getattr(
                                               current, '_array_metadata_store', None))
  # Orbax warns of every override; this one is intended, and the warning would open every command.
  # A filter for the call, not a level: the absl logger's own level stays as the user set it.
  absl_logger = logging.get_absl_logger()
  absl_logger.addFilter(_registry_override_filter)
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_logger.removeFilter(_registry_override_filter)


def _registry_override_filter(record: logging_std.LogRecord) -> bool:
  return 'Type handler registry' not in record.getMessage()


def create_manager(workdir: str | Path, keep: int) -> ocp.CheckpointManager:
  _write_replicated_arrays_whole()
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(workdir_lib.checkpoint_dir(workdir), options=options)


def _without_empty(tree: Any) -> Any:
  """`tree` with its zero-size arrays (the images of a disabled pool, pool_size 0) as None:
  Orbax cannot save an array without elements."""
  return jax.tree.map(lambda x: None if math.prod(x.shape) == 0 else x, tree)


def _refilled(restored: Any, abstract: Any) -> Any:
  """`restored` (saved by way of `_without_empty`) with the zero-size arrays of `abstract` back."""
  abstract_leaves, treedef = jax.tree.flatten(abstract)
  restored_leaves = iter(jax.tree.leaves(restored))
  leaves = []
  for leaf in abstract_leaves:
    if math.prod(leaf.shape):
      leaves.append(next(restored_leaves))
    else:
      empty = np.zeros(leaf.shape, leaf.dtype)
      sharding = getattr(leaf, 'sharding', None)
      leaves.append(jax.device_put(empty, sharding) if sharding is not None else empty)
  return treedef.unflatten(leaves)


def save(manager: ocp.CheckpointManager,
         state: Any,
         config: ml_collections.ConfigDict,
         data_state: dict | None = None) -> None:
  step = int(state_lib.to_host(state.step))
  items = dict(state=ocp.args.StandardSave(_without_empty(state)),
               config=ocp.args.JsonSave(config.to_dict()))
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
    raise errors.PathNotFoundError(f'No checkpoint under {manager.directory}.')
  items = dict(state=ocp.args.StandardRestore(_without_empty(abstract_state)))
  # Read from disk: asking Orbax (`item_metadata`) warns about every item it is not restoring.
  has_data_state = (Path(manager.directory) / str(step) / 'data').is_dir()
  if has_data_state:
    items['data'] = ocp.args.JsonRestore()
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except Exception:  # pylint: disable=broad-except  # Retried as an older checkpoint below.
    if not getattr(abstract_state, 'batch_stats', None):
      raise
    restored = _restore_without_running_statistics(manager, abstract_state, step, items)
  state = _refilled(restored.state, abstract_state)
  return state, (restored.data if has_data_state else None)


def _restore_without_running_statistics(manager: ocp.CheckpointManager, abstract_state: Any,
                                        step: int, items: dict) -> Any:
  """A checkpoint written before train states kept batch-norm running statistics: restored
  without them, which start afresh (mean 0, variance 1), as PyTorch's do. The error of the
  first attempt stands if this fails too."""
  items = dict(items,
               state=ocp.args.StandardRestore(_without_empty(
                   abstract_state.replace(batch_stats={}))))
  restored = manager.restore(step, args=ocp.args.Composite(**items))

  def fresh(path, leaf):
    value = np.full(leaf.shape, 1.0 if path[-1].key == 'var' else 0.0, leaf.dtype)
    sharding = getattr(leaf, 'sharding', None)
    return jax.device_put(value, sharding) if sharding is not None else value

  logging.warning(
      'Checkpoint step %d in %s predates batch-norm running statistics: they start afresh '
      '(only eval mode, test.py --eval, uses them).', step, manager.directory)
  state = restored.state.replace(
      batch_stats=jax.tree_util.tree_map_with_path(fresh, abstract_state.batch_stats))
  return type(restored)(**{**restored, 'state': state})


class Restored(NamedTuple):
  state: Any
  data_state: dict | None  # The input iterator's state; None in checkpoints that have none.
  step: int
  damaged: list[int]  # Newer steps that could not be restored (newest first).


def _one_line(error: BaseException, limit: int = 300) -> str:
  """The root cause of a failed restore (e.g. TensorStore's OUT_OF_RANGE on a short file)."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = ' '.join(f'{type(error).__name__}: {error}'.split())
  return text if len(text) <= limit else text[:limit] + '...'


def _is_aborted_read(text: str) -> bool:
  return '/orbax/checkpoint/' in text.replace('\\', '/')


class _AbortedReadFilter(logging_std.Filter):
  """Drops asyncio's '... exception was never retrieved' reports of Orbax's abandoned reads."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    message = str(record.msg)
    if 'exception was never retrieved' not in message:
      return True
    frames = traceback.extract_tb(record.exc_info[2]) if record.exc_info else []
    return not (_is_aborted_read(message) or
                any(_is_aborted_read(frame.filename) for frame in frames))


def drop_aborted_read_noise() -> None:
  """Silences the reads still in flight when a restore fails.

  Orbax closes its event loop as soon as one read fails. Every other read of the checkpoint then
  reports itself as it finishes or is collected: TensorStore's callback as an unraisable
  `RuntimeError('Event loop is closed')`, the abandoned coroutines and tasks with their own
  errors: one traceback per array, summarised already by restore_intact's warning. Only those
  are dropped; any other unraisable error or asyncio report still shows.
  """
  previous = sys.unraisablehook
  if getattr(previous, 'drops_aborted_reads', False):
    return

  def hook(unraisable):
    error, source = unraisable.exc_value, unraisable.object
    if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
      return
    code = getattr(source, 'cr_code', None)
    if code is not None and _is_aborted_read(code.co_filename):
      return
    previous(unraisable)

  hook.drops_aborted_reads = True
  sys.unraisablehook = hook
  logging_std.getLogger('asyncio').addFilter(_AbortedReadFilter())


RESUME_REMEDY = 'Restore the folder from a copy, or start the run afresh in a new --workdir.'
READER_REMEDY = 'Restore the folder from a copy, or give another run.'


def restore_intact(manager: ocp.CheckpointManager,
                   abstract_state: Any,
                   step: int | None = None,
                   remedy: str = RESUME_REMEDY) -> Restored:
  """The checkpoint at `step`, or by default the newest one that restores.

  A checkpoint that fails to restore (a truncated or missing array file after a partial copy, a
  full disk or a broken network file system) is damaged: without `step`, each damaged one is
  named in a warning and the next older one is tried; the damaged files are left as they are.
  Raises a user error naming the damaged steps if none restores, or if `step` is damaged or
  absent (with the steps there are); `remedy` ends the message where none restores.
  """
  directory = Path(manager.directory)
  drop_aborted_read_noise()  # Before any read: the noise starts before the failure surfaces.
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise errors.PathNotFoundError(f'No checkpoint under {directory}.')
  if step is not None:
    if step not in steps:
      raise errors.PathNotFoundError(
          f'No checkpoint for step {step} under {directory}; it has steps '
          f'{", ".join(map(str, sorted(steps)))}.')
    try:
      return Restored(*restore_with_data_state(manager, abstract_state, step), step, [])
    except Exception as error:  # pylint: disable=broad-except  # Whatever the damage raises.
      raise errors.CheckpointError(
          f'Checkpoint step {step} in {directory} is damaged and cannot be restored '
          f'({_one_line(error)}). Steps there: {", ".join(map(str, sorted(steps)))}.') from None
  damaged, reasons = [], []
  for candidate in steps:
    try:
      state, data_state = restore_with_data_state(manager, abstract_state, candidate)
    except Exception as error:  # pylint: disable=broad-except  # Whatever the damage raises.
      damaged.append(candidate)
      reasons.append(f'step {candidate}: {_one_line(error)}')
      logging.warning(
          'Checkpoint step %d in %s is damaged and cannot be restored (%s); trying '
          'the one before.', candidate, directory, _one_line(error))
      continue
    return Restored(state, data_state, candidate, damaged)
  raise errors.CheckpointError(
      f'No checkpoint in {directory} can be restored; each is damaged ({"; ".join(reasons)}). ' +
      remedy)


def set_aside(workdir: str | Path, steps: Sequence[int]) -> list[Path]:
  """Moves damaged checkpoint folders out of the way of new saves, into workdir_lib.DAMAGED_DIR
  (kept there)."""
  moved = []
  for step in steps:
    source = workdir_lib.checkpoint_dir(workdir) / str(step)
    target = Path(workdir).absolute() / workdir_lib.DAMAGED_DIR / str(step)
    suffix = 1
    while target.exists():
      target = target.with_name(f'{step}.{suffix}')
      suffix += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)
    moved.append(target)
  return moved


def load_saved_config(workdir: str | Path) -> dict | None:
  """The workdir's config.json as a dict (renamed fields under their new names), or None."""
  path = Path(workdir) / workdir_lib.CONFIG_FILE
  if not path.exists():
    return None
  try:
    return config_lib.upgrade_saved_config(json.loads(path.read_text()))
  except json.JSONDecodeError as error:
    raise errors.InvalidValueError(
        f'{path} is not valid JSON ({error}); it records the config of the run in '
        'this workdir. Restore it or use a new --workdir.') from error


def saved_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was trained with (its config.json)."""
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise errors.PathNotFoundError(f'Workdir not found: {workdir}')
  saved = load_saved_config(workdir)
  if saved is None:
    raise errors.PathNotFoundError(
        f'{workdir} has no {workdir_lib.CONFIG_FILE}: not a training run '
        'workdir (nor one written by cyclegan_jax.convert).' + workdir_lib.runs_below_hint(workdir))
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
  path = Path(workdir) / workdir_lib.IMPORTED_FILE
  return json.loads(path.read_text()) if path.exists() else None


def check_and_save_config(workdir: str | Path,
                          config: ml_collections.ConfigDict,
                          write: bool = True) -> None:
  """Refuses a workdir trained with another architecture, then records `config` there.

  In a multi-process run every process checks and only process 0 writes (`write`).
  """
  workdir = Path(workdir)
  saved = load_saved_config(workdir)
  if saved is not None and workdir_lib.checkpoint_dir(workdir).exists():
    mismatches = config_lib.architecture_mismatches(saved, config)
    if mismatches:
      raise errors.InvalidValueError(
          f'Cannot resume {workdir}: its checkpoints were trained with a different architecture (' +
          '; '.join(mismatches) + '). Use a new --workdir, or restore the original settings.')
  if not write:
    return
  workdir.mkdir(parents=True, exist_ok=True)
  workdir_lib.write_atomic(workdir / workdir_lib.CONFIG_FILE,
                           config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


def restore_train_state(workdir: str | Path,
                        step: int | None = None,
                        remedy: str = READER_REMEDY) -> tuple[Any, int]:
  """(train state as numpy, its step) from the latest checkpoint, or the one at `step`
  (`restore_intact`)."""
  workdir = Path(workdir)
  config = saved_config(workdir)
  directory = workdir_lib.checkpoint_dir(workdir)
  if not directory.is_dir():
    raise errors.PathNotFoundError(f'{workdir} has no checkpoints/ folder')
  manager = create_manager(workdir, config.keep_checkpoints)
  try:
    restored = restore_intact(manager, state_lib.abstract_train_state(config), step, remedy)
  finally:
    manager.close()
  return jax.device_get(restored.state), restored.step


def saved_steps(workdir: str | Path) -> list[int]:
  """The steps of the checkpoints in `workdir` (their folders; not read), ascending."""
  directory = workdir_lib.checkpoint_dir(workdir)
  if not directory.is_dir():
    return []
  return sorted(int(path.name) for path in directory.iterdir()
                if path.name.isdigit() and path.is_dir())


def check_warm_start(config: ml_collections.ConfigDict) -> None:
  """What `warm_started` needs of config.init_from, checked from its files and shapes alone (no
  array is read), so that a new run can refuse it before writing anything: a run folder with
  checkpoints (the named step among them) that holds the parts, shaped as this run's."""
  parts = config_lib.parse_init_parts(config.init_parts, config.model_type)
  source_workdir, step = locate(config.init_from)
  check_imported(source_workdir, parts, config.init_from)
  try:
    source_config = saved_config(source_workdir)
  except errors.PathNotFoundError as error:
    raise errors.PathNotFoundError(f'config.init_from: {error}') from None
  steps = saved_steps(source_workdir)
  if not steps:
    raise errors.PathNotFoundError(
        f'config.init_from = {config.init_from!r} has no checkpoints yet '
        f'({workdir_lib.checkpoint_dir(source_workdir)}).')
  merge(state_lib.abstract_train_state(config), state_lib.abstract_train_state(source_config),
        parts)


class WarmStartSource(NamedTuple):
  """What config.init_from gives a new run: `parts` of the train state (numpy) of `workdir`'s
  checkpoint at `step`."""
  workdir: Path
  step: int
  parts: list[str]
  state: Any


def read_warm_start_source(config: ml_collections.ConfigDict) -> WarmStartSource:
  """The source of a warm start, checked (`check_warm_start`) and read: a run reads it before it
  writes anything, so that a source without an intact checkpoint leaves no trace."""
  check_warm_start(config)
  parts = config_lib.parse_init_parts(config.init_parts, config.model_type)
  source_workdir, step = locate(config.init_from)
  state, source_step = restore_train_state(
      source_workdir, step, 'Restore that folder from a copy, or warm-start from another run.')
  return WarmStartSource(source_workdir, source_step, parts, state)


def warm_started(state: state_lib.TrainState, source: WarmStartSource,
                 sharding: jax.sharding.Sharding | None) -> state_lib.TrainState:
  """A fresh `state` with the parts `source` names taken from its run (`read_warm_start_source`)."""
  merged = merge(jax.device_get(state), source.state, source.parts)
  logging.info('Warm start: %s from %s at step %d.', ', '.join(source.parts), source.workdir,
               source.step)
  return jax.device_put(merged, sharding)


# Warm starts: a new run takes selected parts of another run's state.

NETWORK_PARTS = ('G', 'F', 'D_X', 'D_Y', 'D')


def locate(init_from: str | Path) -> tuple[Path, int | None]:
  """(workdir, step or None for the latest) of a workdir or `<workdir>/checkpoints/<step>`."""
  path = Path(init_from)
  names_step = path.name.isdigit() and path.parent.name == workdir_lib.CHECKPOINTS_DIR
  if not path.exists():
    steps = saved_steps(path.parent.parent) if names_step else []
    raise errors.PathNotFoundError(
        f'config.init_from = {str(init_from)!r} does not exist' +
        (f': that run has checkpoints for steps {", ".join(map(str, steps))}.' if steps else '.'))
  if names_step:
    return path.parent.parent, int(path.name)
  return path, None


def _shape_mismatches(current: Any, source: Any, name: str) -> list[str]:
  current_shapes = {
      jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(current)
  }
  source_shapes = {
      jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(source)
  }
  problems = [
      f'{name}{path}: missing in the source' for path in current_shapes if path not in source_shapes
  ]
  problems += [
      f'{name}{path}: not in this run' for path in source_shapes if path not in current_shapes
  ]
  problems += [
      f'{name}{path}: shape {source_shapes[path]} in the source, {shape} here'
      for path, shape in current_shapes.items()
      if path in source_shapes and source_shapes[path] != shape
  ]
  return problems


def merge(state: Any, source: Any, parts: list[str]) -> Any:
  """`state` with the named parts taken from `source` (shapes must match exactly). A generator
  taken into a run that keeps moving averages (config.ema_decay > 0) brings its average, or starts
  one at its weights if the source kept none; a network brings its batch-norm running statistics
  where both runs keep them."""
  selected = {}
  absent = [part for part in parts if part in NETWORK_PARTS and part not in source.params]
  if absent:
    raise errors.InvalidValueError(
        f'config.init_from holds no {", ".join(absent)} (its networks: '
        f'{", ".join(k for k in source.params if k in NETWORK_PARTS)}): drop '
        f'{"it" if len(absent) == 1 else "them"} from config.init_parts.')
  if any(part in NETWORK_PARTS for part in parts):
    params, batch_stats = dict(state.params), dict(state.batch_stats)
    for name in NETWORK_PARTS:
      if name in parts:
        params[name] = source.params[name]
        average = name + state_lib.EMA_SUFFIX
        if average in params:
          params[average] = source.params.get(average, source.params[name])
        if name in batch_stats and name in source.batch_stats:  # Its running statistics.
          batch_stats[name] = source.batch_stats[name]
    selected['params'] = params
    selected['batch_stats'] = batch_stats
  if 'optimizer' in parts:
    selected['opt_state_generators'] = source.opt_state_generators
    selected['opt_state_discriminators'] = source.opt_state_discriminators
  if 'pools' in parts:
    selected['pool_A'], selected['pool_B'] = source.pool_A, source.pool_B
  problems = []
  for field, value in selected.items():
    problems += _shape_mismatches(getattr(state, field), value, field)
  if problems:
    raise errors.InvalidValueError(
        'config.init_from does not fit this run: ' + '; '.join(problems[:8]) +
        (f'; and {len(problems) - 8} more' if len(problems) > 8 else '') +
        '. The model and pool_size fields must match the source run for the parts '
        'in config.init_parts.')
  return state.replace(**selected)


def check_imported(workdir: Path, parts: list[str], init_from: str) -> None:
  """A workdir written by `convert` holds trained values only for the networks it imported."""
  imported = imported_networks(workdir)
  if imported is None:
    return
  missing = [part for part in parts if part not in imported]
  if missing:
    raise errors.InvalidValueError(
        f'config.init_from = {init_from!r} was converted from '
        f'{", ".join(sorted(set(imported.values())))} and holds only {", ".join(imported)}; it '
        f'has no trained {", ".join(missing)} to take (drop them from config.init_parts).')
